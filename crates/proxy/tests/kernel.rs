//! Kernel tests: a "node" network namespace with two "pod" namespaces behind veths and an off-cluster client
//! namespace, socat echo servers answering with their own IP and the peer address, and the real proxier
//! (State + Proxier → `nft -f -` and `conntrack` inside the node namespace). Everything is uniquely named and
//! removed on drop, also when a test fails. Needs root; skipped otherwise.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use skiff_proxy::apply::Runner;
use skiff_proxy::model::NodeContext;
use skiff_proxy::nft::RenderConfig;
use skiff_proxy::proxier::{Proxier, State};

const POD_A: &str = "10.244.1.2";
const POD_B: &str = "10.244.1.3";
const NODE_IP: &str = "172.30.99.1";
const CLIENT_IP: &str = "172.30.99.2";

use skiff_testkit::{is_root, Netns};

fn sh(args: &[&str]) {
    skiff_testkit::sh(args);
}

struct Topology {
    node: String,
    pod_a: String,
    pod_b: String,
    client: String,
    servers: Vec<Child>,
    /// Dropped after the servers are killed: removes the namespaces.
    _namespaces: Vec<Netns>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Topology {
    fn new() -> Topology {
        let namespaces: Vec<Netns> = ["skp-n", "skp-a", "skp-b", "skp-x"]
            .into_iter()
            .map(Netns::new)
            .collect();
        let t = Topology {
            node: namespaces[0].name.clone(),
            pod_a: namespaces[1].name.clone(),
            pod_b: namespaces[2].name.clone(),
            client: namespaces[3].name.clone(),
            servers: Vec::new(),
            _namespaces: namespaces,
        };
        sh(&[
            "ip",
            "netns",
            "exec",
            &t.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        // Pods: /32 addresses, the node side holds the gateway address 10.244.1.1 on each veth (routed, no bridge).
        for (pod, ip, dev) in [(&t.pod_a, POD_A, "va"), (&t.pod_b, POD_B, "vb")] {
            sh(&[
                "ip", "-n", &t.node, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            sh(&[
                "ip",
                "-n",
                &t.node,
                "addr",
                "add",
                "10.244.1.1/32",
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", &t.node, "link", "set", dev, "up"]);
            sh(&[
                "ip",
                "-n",
                &t.node,
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", pod, "route", "add", "10.244.1.1", "dev", "eth0"]);
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                "10.244.1.1",
            ]);
        }
        // Off-cluster client on the node network.
        sh(&[
            "ip", "-n", &t.node, "link", "add", "vx", "type", "veth", "peer", "name", "eth0",
            "netns", &t.client,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "vx",
        ]);
        sh(&["ip", "-n", &t.node, "link", "set", "vx", "up"]);
        sh(&[
            "ip",
            "-n",
            &t.client,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &t.client, "link", "set", "eth0", "up"]);
        sh(&[
            "ip", "-n", &t.client, "route", "add", "default", "via", NODE_IP,
        ]);
        // The node's default route leads to the node network (the host), as in `skiff up`.
        sh(&[
            "ip", "-n", &t.node, "route", "add", "default", "via", CLIENT_IP,
        ]);
        t
    }

    /// socat echo servers (TCP and UDP on 8080) in both pods, answering `server=<own ip> peer=<client ip>`.
    fn start_servers(&mut self) {
        for (pod, ip) in [(self.pod_a.clone(), POD_A), (self.pod_b.clone(), POD_B)] {
            for (listen, port) in [
                ("TCP-LISTEN", 8080),
                ("UDP-RECVFROM", 8080),
                ("TCP-LISTEN", 9090),
            ] {
                let extra = if listen == "TCP-LISTEN" {
                    ",reuseaddr"
                } else {
                    ""
                };
                let child = Command::new("ip")
                    .args(["netns", "exec", &pod, "socat"])
                    .arg(format!("{listen}:{port},fork{extra}"))
                    .arg(format!("SYSTEM:echo server={ip} peer=$SOCAT_PEERADDR"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("socat");
                self.servers.push(child);
            }
        }
        for pod in [self.pod_a.clone(), self.pod_b.clone()] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while tcp(&pod, "127.0.0.1:8080").is_err()
                || udp(&pod, "127.0.0.1:8080", None).is_none()
            {
                assert!(Instant::now() < deadline, "echo server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Connect over TCP from namespace `ns`; Ok(answer) or Err(socat's error).
fn tcp(ns: &str, addr: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "socat", "-T2", "-"])
        .arg(format!("TCP:{addr},connect-timeout=2"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A UDP request from namespace `ns` (optionally from a fixed source port); the answer or None. UDP is lossy
/// and socat's `UDP-RECVFROM,fork` drops a datagram now and then, so like a DNS client this tries three
/// times (each from the same source port, so a stale conntrack entry still fails every try).
fn udp(ns: &str, addr: &str, source_port: Option<u16>) -> Option<String> {
    (0..3).find_map(|_| udp_once(ns, addr, source_port))
}

/// One UDP datagram and at most one second for its answer.
fn udp_once(ns: &str, addr: &str, source_port: Option<u16>) -> Option<String> {
    let sp = source_port
        .map(|p| format!(",sourceport={p}"))
        .unwrap_or_default();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "socat", "-T1", "-"])
        .arg(format!("UDP:{addr}{sp}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    use std::io::Write;
    let _ = child.stdin.take()?.write_all(b"ping\n");
    let out = child.wait_with_output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn server_of(answer: &str) -> &str {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("server="))
        .unwrap_or("")
}

fn peer_of(answer: &str) -> &str {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))
        .unwrap_or("")
}

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
    .unwrap()
}

/// A slice with (ip, node) endpoints, all ready, port "http" → 8080 (TCP) and "dns" → 8080 (UDP).
fn slice(service: &str, eps: &[(&str, &str)]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps.iter().map(|(ip, node)| json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
    }))
    .unwrap()
}

struct Harness {
    topo: Topology,
    state: parking_lot::Mutex<State>,
    proxier: Proxier,
    table: String,
}

impl Harness {
    fn new() -> Option<Harness> {
        if !is_root() {
            eprintln!("skipping kernel test: needs root");
            return None;
        }
        let mut topo = Topology::new();
        topo.start_servers();
        let table = "skiff-proxy".to_string();
        let cfg = RenderConfig {
            table: table.clone(),
            ..RenderConfig::default()
        };
        let node = NodeContext {
            name: "node-1".into(),
            ips: vec![NODE_IP.parse().unwrap()],
        };
        let proxier = Proxier::new(cfg, Runner::in_netns(topo.node.clone()));
        Some(Harness {
            state: parking_lot::Mutex::new(State::new(node)),
            proxier,
            topo,
            table,
        })
    }

    async fn sync(&mut self) -> skiff_proxy::proxier::SyncReport {
        self.proxier.sync(&self.state).await.expect("sync")
    }

    fn ruleset(&self) -> String {
        self.ruleset_of(&self.table)
    }

    fn ruleset_of(&self, table: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.topo.node,
                "nft",
                "list",
                "table",
                "ip",
                table,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

fn web_spec(ip: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 8080}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_from_node_pod_and_outside_with_source_ips() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
        st.apply_slice(slice("web", &[(POD_A, "node-1"), (POD_B, "node-2")]));
    }
    let r = h.sync().await;
    assert!(r.full, "first sync is a full one");
    let rules = h.ruleset();
    assert!(rules.contains("chain svc-default/web/tcp/80"), "{rules}");

    // From the node itself: both endpoints answer over time.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let a = tcp(&h.topo.node, "10.96.0.10:80").expect("node → ClusterIP");
        seen.insert(server_of(&a).to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![POD_A.to_string(), POD_B.to_string()]
    );

    // From pod A: when pod B answers it sees pod A's own address (no NAT); when pod A reaches itself
    // (hairpin) the connection still works, masqueraded.
    let mut saw_b = false;
    let mut saw_hairpin = false;
    for _ in 0..40 {
        let a = tcp(&h.topo.pod_a, "10.96.0.10:80").expect("pod → ClusterIP");
        match server_of(&a) {
            s if s == POD_B => {
                assert_eq!(
                    peer_of(&a).split(':').next(),
                    Some(POD_A),
                    "pod source IP kept: {a}"
                );
                saw_b = true;
            }
            s if s == POD_A => {
                assert_ne!(
                    peer_of(&a).split(':').next(),
                    Some(POD_A),
                    "hairpin is masqueraded: {a}"
                );
                saw_hairpin = true;
            }
            other => panic!("unexpected answer {other:?}"),
        }
        if saw_b && saw_hairpin {
            break;
        }
    }
    assert!(
        saw_b && saw_hairpin,
        "pod B answered: {saw_b}, hairpin answered: {saw_hairpin}"
    );

    // From off the cluster (the node network): answered, masqueraded so the reply comes back.
    let a = tcp(&h.topo.client, "10.96.0.10:80").expect("outside → ClusterIP");
    assert_ne!(
        peer_of(&a).split(':').next(),
        Some(CLIENT_IP),
        "off-cluster source masqueraded: {a}"
    );

    // UDP through the same service.
    let a = udp(&h.topo.pod_a, "10.96.0.10:53", None).expect("UDP answer");
    assert!(a.contains("server=10.244.1."), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_and_unused_port_are_refused_at_once() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service("empty", web_spec("10.96.0.11", json!({}))));
        st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
        st.apply_slice(slice("web", &[(POD_A, "node-1")]));
    }
    h.sync().await;
    for (ns, addr) in [
        (&h.topo.node, "10.96.0.11:80"),
        (&h.topo.pod_a, "10.96.0.11:80"),
        (&h.topo.client, "10.96.0.11:80"),
        (&h.topo.pod_b, "10.96.0.10:81"),
    ] {
        let start = Instant::now();
        let err = tcp(ns, addr).expect_err("must be refused");
        assert!(
            err.contains("Connection refused"),
            "{addr} from {ns}: {err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "refused at once, not a timeout"
        );
    }
    // Endpoints appear: the incremental sync makes the service work.
    h.state
        .lock()
        .apply_slice(slice("empty", &[(POD_B, "node-1")]));
    let r = h.sync().await;
    assert!(!r.full);
    let a = tcp(&h.topo.client, "10.96.0.11:80").expect("now served");
    assert_eq!(server_of(&a), POD_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_and_external_traffic_policy_local() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service(
            "np",
            web_spec("10.96.0.20", json!({"type": "NodePort", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31399}]})),
        ));
        st.apply_slice(slice("np", &[(POD_B, "node-2")]));
        st.apply_service(service(
            "local",
            web_spec("10.96.0.21", json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31400}]})),
        ));
        st.apply_slice(slice("local", &[(POD_A, "node-1"), (POD_B, "node-2")]));
        st.apply_service(service(
            "remote",
            web_spec("10.96.0.22", json!({"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31401}]})),
        ));
        st.apply_slice(slice("remote", &[(POD_B, "node-2")]));
    }
    h.sync().await;
    // NodePort on the node IP, Cluster policy: answered, masqueraded.
    let a = tcp(&h.topo.client, &format!("{NODE_IP}:31399")).expect("NodePort");
    assert_eq!(server_of(&a), POD_B);
    assert_ne!(peer_of(&a).split(':').next(), Some(CLIENT_IP));
    // Not on localhost.
    assert!(tcp(&h.topo.node, "127.0.0.1:31399").is_err());
    // Local policy: only the local endpoint, and the client's address is preserved.
    for _ in 0..10 {
        let a = tcp(&h.topo.client, &format!("{NODE_IP}:31400")).expect("ETP Local");
        assert_eq!(server_of(&a), POD_A);
        assert_eq!(
            peer_of(&a).split(':').next(),
            Some(CLIENT_IP),
            "source IP preserved: {a}"
        );
    }
    // Local policy without a local endpoint: dropped (no answer), as upstream.
    let start = Instant::now();
    assert!(tcp(&h.topo.client, &format!("{NODE_IP}:31401")).is_err());
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "dropped, not refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_udp_conntrack_entries_are_deleted_when_endpoint_goes() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service("dns", web_spec("10.96.0.30", json!({}))));
        st.apply_slice(slice("dns", &[(POD_A, "node-1")]));
    }
    h.sync().await;
    let a = udp(&h.topo.client, "10.96.0.30:53", Some(5353)).expect("UDP via A");
    assert_eq!(server_of(&a), POD_A);
    // The endpoint moves to pod B (pod A keeps running: without the conntrack cleanup the client's flow
    // would stay pinned to A).
    h.state
        .lock()
        .apply_slice(slice("dns", &[(POD_B, "node-1")]));
    let r = h.sync().await;
    assert!(!r.full && r.changed == 1);
    let a = udp(&h.topo.client, "10.96.0.30:53", Some(5353)).expect("UDP via B");
    assert_eq!(server_of(&a), POD_B, "stale flow to A deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resyncs_fully_and_removes_stale_rules() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
        st.apply_service(service("old", web_spec("10.96.0.40", json!({}))));
        st.apply_slice(slice("web", &[(POD_A, "node-1")]));
        st.apply_slice(slice("old", &[(POD_B, "node-1")]));
    }
    h.sync().await;
    assert!(h.ruleset().contains("svc-default/old/tcp/80"));
    // A new agent (fresh proxier) that no longer sees "old": its first sync replaces the table.
    let node = h.state.lock().node().clone();
    let state = parking_lot::Mutex::new(State::new(node));
    {
        let mut st = state.lock();
        st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
        st.apply_slice(slice("web", &[(POD_A, "node-1")]));
    }
    let mut fresh = Proxier::new(h.proxier.config().clone(), h.proxier.runner().clone());
    let r = fresh.sync(&state).await.expect("sync");
    assert!(r.full);
    let rules = h.ruleset();
    assert!(!rules.contains("old"), "{rules}");
    assert_eq!(
        server_of(&tcp(&h.topo.node, "10.96.0.10:80").expect("still served")),
        POD_A
    );
}

/// GET http://addr/path → (status, body).
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Poll the blocking probe `f` (it runs socat) off the runtime's workers, so the agent under test keeps both
/// of them, until it holds or 30 s have passed (a liveness bound for a loaded CI machine, not a latency goal).
async fn eventually<F: FnMut() -> bool + Send + 'static>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (done, probe) = tokio::task::spawn_blocking(move || (f(), f))
            .await
            .expect("probe task");
        if done {
            return;
        }
        f = probe;
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole agent (`run_in`) against a real API server: objects written through the API become rules,
/// metrics and health check node ports are served, and a removed endpoint is unprogrammed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_programs_services_from_the_api() {
    use kube::api::{Api, DeleteParams, PostParams};
    if !is_root() {
        return;
    }
    let mut topo = Topology::new();
    topo.start_servers();
    let api = skiff_api::testing::TestServer::start()
        .await
        .expect("api server");
    let client = api.client().await.expect("client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &service("web", web_spec("10.96.0.60", json!({}))),
        )
        .await
        .expect("create service");
    slices
        .create(
            &PostParams::default(),
            &slice("web", &[(POD_A, "node-1"), (POD_B, "node-2")]),
        )
        .await
        .expect("create slice");
    let lb = services
        .create(
            &PostParams::default(),
            &service(
                "lb",
                web_spec("10.96.0.61", json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]})),
            ),
        )
        .await
        .expect("create LB service");
    slices
        .create(&PostParams::default(), &slice("lb", &[(POD_A, "node-1")]))
        .await
        .expect("create slice");
    let hc_port = lb.spec.as_ref().and_then(|s| s.health_check_node_port);

    let base = 20000 + (rand::random::<u16>() % 20000);
    let options = skiff_proxy::Options {
        proxy_metrics_addr: format!("127.0.0.1:{base}").parse().unwrap(),
        proxy_healthz_addr: format!("127.0.0.1:{}", base + 1).parse().unwrap(),
        ..Default::default()
    };
    let node = skiff_runtime::NodeIdentity {
        name: "node-1".into(),
        ip: NODE_IP.parse().unwrap(),
    };
    let agent = tokio::spawn(skiff_proxy::run_in(
        client.clone(),
        node,
        options,
        Runner::in_netns(topo.node.clone()),
        "127.0.0.1".parse().unwrap(),
    ));
    let client_ns = topo.client.clone();
    let probe_ns = client_ns.clone();
    eventually("ClusterIP served", move || {
        tcp(&probe_ns, "10.96.0.60:80").is_ok()
    })
    .await;

    let (status, metrics) = http_get(&format!("127.0.0.1:{base}"), "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        "{metrics}"
    );
    // Healthy once the first sync is recorded (just after the rules reach the kernel).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(&format!("127.0.0.1:{}", base + 1), "/healthz")
            .await
            .expect("healthz");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "healthz stays {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The API server allocates a health check node port for ETP=Local LoadBalancers; it answers with the
    // local endpoint count.
    if let Some(port) = hc_port {
        let (status, body) = http_get(&format!("127.0.0.1:{port}"), "/")
            .await
            .expect("health check");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"localEndpoints\": 1"), "{body}");
        assert!(body.contains("\"name\": \"lb\""), "{body}");
    } else {
        eprintln!("API server allocated no healthCheckNodePort; health check server not exercised");
    }

    // Endpoints gone: the service rejects at once.
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("delete slice");
    let probe_ns = client_ns.clone();
    eventually("no-endpoint rejection", move || {
        tcp(&probe_ns, "10.96.0.60:80").is_err_and(|e| e.contains("Connection refused"))
    })
    .await;
    agent.abort();
}

/// A LoadBalancer address assigned to this node is added to the uplink (so the node answers ARP for it on
/// the node network) and served; when the service is gone the address is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_address_announced_and_served() {
    let Some(mut h) = Harness::new() else { return };
    let mut lb: Service = service(
        "lb",
        web_spec(
            "10.96.0.70",
            json!({"type": "LoadBalancer", "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31500}]}),
        ),
    );
    lb.metadata.annotations = Some(
        [(
            "skiff.dev/loadbalancer-node".to_string(),
            "node-1".to_string(),
        )]
        .into(),
    );
    lb.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "172.30.99.200"}]}}))
            .unwrap(),
    );
    {
        let mut st = h.state.lock();
        st.apply_service(lb);
        st.apply_slice(slice("lb", &[(POD_B, "node-2")]));
    }
    h.sync().await;
    assert_eq!(
        h.proxier.announced_ips(),
        vec!["172.30.99.200".parse::<std::net::IpAddr>().unwrap()]
    );
    let mut announcer = skiff_proxy::announce::Announcer::new(
        Runner::in_netns(h.topo.node.clone()),
        NODE_IP.parse().unwrap(),
    );
    announcer.reconcile(&h.proxier.announced_ips()).await;
    let addrs = |ns: &str| {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-n", ns, "-o", "addr", "show", "dev", "vx"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    assert!(
        addrs(&h.topo.node).contains("172.30.99.200/32"),
        "{}",
        addrs(&h.topo.node)
    );
    // The off-cluster client reaches the LB address on its own subnet: ARP answered by the node, then DNAT.
    let a = tcp(&h.topo.client, "172.30.99.200:80").expect("LB address served");
    assert_eq!(server_of(&a), POD_B);
    h.state.lock().delete_service("default", "lb");
    h.sync().await;
    assert!(h.proxier.announced_ips().is_empty());
    announcer.reconcile(&h.proxier.announced_ips()).await;
    assert!(!addrs(&h.topo.node).contains("172.30.99.200"), "withdrawn");
}

/// `nft list table` output with each `numgen … map @endpoints-S` dispatch replaced by the endpoints it picks
/// from (in order), and the endpoint maps themselves left out.
fn resolve_endpoint_maps(table: &str) -> String {
    let mut elements = std::collections::HashMap::new();
    let mut in_endpoint_map = None;
    for line in table.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("map endpoints-") {
            in_endpoint_map = Some(format!("endpoints-{}", name.trim_end_matches(" {")));
        } else if l == "}" {
            in_endpoint_map = None;
        } else if let Some(map) = in_endpoint_map
            .as_ref()
            .filter(|_| !l.starts_with("typeof") && !l.starts_with("comment"))
        {
            let items = l.trim_start_matches("elements = {").trim_end_matches('}');
            for item in items.split(',').filter(|i| i.contains(':')) {
                let (k, v) = item.split_once(':').unwrap();
                let key: u32 = k.trim().parse().unwrap();
                elements.insert((map.clone(), key), v.trim().to_string());
            }
        }
    }
    let mut out = Vec::new();
    let mut skipping = false;
    for line in table.lines() {
        let l = line.trim();
        if l.starts_with("map endpoints-") {
            skipping = true;
            continue;
        }
        if skipping {
            skipping = l != "}";
            continue;
        }
        match l.split_once("numgen random mod ") {
            Some((head, rest)) => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let n: u32 = words[0].parse().unwrap();
                let (offset, map) = match words[1] {
                    "offset" => (words[2].parse::<u32>().unwrap(), words[4]),
                    _ => (0, words[2]),
                };
                let map = map.trim_start_matches('@').to_string();
                let eps: Vec<String> = (offset..offset + n)
                    .map(|k| {
                        elements
                            .get(&(map.clone(), k))
                            .cloned()
                            .unwrap_or("MISSING".into())
                    })
                    .collect();
                out.push(format!("{head}one of [{}]", eps.join(", ")));
            }
            None => out.push(l.to_string()),
        }
    }
    out.join("\n")
}

/// Endpoint moves skip `nft`: the netlink batch must leave exactly the table a full `nft -f` sync of the same
/// state builds, and traffic must follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_moves_over_netlink_match_a_full_nft_sync() {
    let Some(mut h) = Harness::new() else { return };
    {
        let mut st = h.state.lock();
        st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
        st.apply_service(service("other", web_spec("10.96.0.11", json!({}))));
        st.apply_slice(slice("web", &[(POD_A, "node-1")]));
        st.apply_slice(slice("other", &[(POD_B, "node-1")]));
    }
    assert!(h.sync().await.full);
    let steps: [&[(&str, &str)]; 3] = [
        // One endpoint more: the dispatch rule changes (mod 2) and one element is added.
        &[(POD_A, "node-1"), (POD_B, "node-1")],
        // Back to one, a different pod: rule and elements.
        &[(POD_B, "node-1")],
        // Same count, other pod: elements only.
        &[(POD_A, "node-1")],
    ];
    for eps in steps {
        h.state.lock().apply_slice(slice("web", eps));
        let r = h.sync().await;
        assert!(
            r.netlink && !r.full,
            "endpoint move went over netlink: {r:?}"
        );
        let after_netlink = h.ruleset();
        // Traffic follows: every endpoint of the step answers, nothing else does.
        let want: std::collections::BTreeSet<String> =
            eps.iter().map(|(ip, _)| ip.to_string()).collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let a = tcp(&h.topo.node, "10.96.0.10:80").expect("ClusterIP answers");
            seen.insert(server_of(&a).to_string());
            if seen == want {
                break;
            }
        }
        assert_eq!(seen, want);
        // The same state synced from scratch by a fresh proxier through `nft -f`.
        let state = parking_lot::Mutex::new(State::new(h.state.lock().node().clone()));
        {
            let mut st = state.lock();
            st.apply_service(service("web", web_spec("10.96.0.10", json!({}))));
            st.apply_service(service("other", web_spec("10.96.0.11", json!({}))));
            st.apply_slice(slice("web", eps));
            st.apply_slice(slice("other", &[(POD_B, "node-1")]));
        }
        // Into a table of its own (removed again), so that the proxier under test keeps its table.
        let cfg = RenderConfig {
            table: "skiff-proxy-check".into(),
            ..h.proxier.config().clone()
        };
        let runner = h.proxier.runner().clone();
        let mut fresh = Proxier::new(cfg, runner.clone());
        assert!(fresh.sync(&state).await.expect("full sync").full);
        let from_scratch = h
            .ruleset_of("skiff-proxy-check")
            .replace("skiff-proxy-check", "skiff-proxy");
        runner
            .nft("delete table ip skiff-proxy-check")
            .await
            .expect("remove the check table");
        // Key blocks depend on the order services were first seen, so compare what each chain dispatches to.
        assert_eq!(
            resolve_endpoint_maps(&after_netlink),
            resolve_endpoint_maps(&from_scratch),
            "netlink result == nft full sync"
        );
    }
}

/// A streamed script that nft rejects fails the apply with nft's message, and the table stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_script_errors_come_back_from_nft() {
    let Some(mut h) = Harness::new() else { return };
    h.state
        .lock()
        .apply_service(service("web", web_spec("10.96.0.10", json!({}))));
    h.sync().await;
    let before = h.ruleset();
    let runner = h.proxier.runner().clone();
    let err = runner
        .nft_streamed(|out| {
            let _ = writeln!(out, "delete table ip {}", h.table);
            let _ = writeln!(out, "add chain ip {} broken {{ type nonsense ; }}", h.table);
        })
        .await
        .expect_err("nft rejects the script");
    assert!(err.to_string().contains("nft failed"), "{err}");
    assert_eq!(h.ruleset(), before, "the transaction was not applied");
}
