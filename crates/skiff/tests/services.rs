//! End-to-end: Services on a real `skiff up` cluster, as a user observes them with kubectl and curl from the
//! host, from node namespaces and from pod namespaces (issue 5): scaling the seed-004 demo, pod source IPs,
//! `externalTrafficPolicy: Local`, UDP and multi-port services, session affinity, rejection without endpoints
//! or on unused ports, and hairpin.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `kubectl apply -f -` with `manifest` on stdin.
fn apply(c: &TestCluster, manifest: &str) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl apply");
    child
        .stdin
        .take()
        .expect("kubectl stdin")
        .write_all(manifest.as_bytes())
        .expect("writing the manifest");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(out.status.success(), "kubectl apply: {}", text(&out));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `kubectl get <what> -o jsonpath=<path>`, trimmed.
fn jsonpath(c: &TestCluster, args: &[&str], path: &str) -> String {
    let mut all: Vec<&str> = vec!["get"];
    all.extend_from_slice(args);
    let p = format!("jsonpath={path}");
    all.extend_from_slice(&["-o", &p]);
    stdout(&c.kubectl(&all)).trim().to_string()
}

/// Ready endpoint addresses of a service, from its Endpoints object.
fn endpoint_ips(c: &TestCluster, svc: &str) -> BTreeSet<String> {
    jsonpath(c, &["endpoints", svc], "{.subsets[*].addresses[*].ip}")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wait_endpoints(c: &TestCluster, svc: &str, n: usize, timeout: Duration) {
    let ok = wait_until(timeout, || endpoint_ips(c, svc).len() == n);
    assert!(
        ok,
        "{svc}: wanted {n} ready endpoints, have {:?}\n{}",
        endpoint_ips(c, svc),
        text(&c.kubectl(&["get", "pods", "-o", "wide"]))
    );
}

fn cluster_ip(c: &TestCluster, svc: &str) -> String {
    let ip = jsonpath(c, &["svc", svc], "{.spec.clusterIP}");
    assert!(!ip.is_empty(), "{svc} has no clusterIP");
    ip
}

fn pod_ip(c: &TestCluster, pod: &str) -> String {
    jsonpath(c, &["pod", pod], "{.status.podIP}")
}

/// Names of the pods with `label`.
fn pods(c: &TestCluster, label: &str) -> BTreeSet<String> {
    jsonpath(c, &["pods", "-l", label], "{.items[*].metadata.name}")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `curl -sS --max-time <secs> <url>` on the host (netns None) or inside a namespace.
fn curl_in(netns: Option<&str>, secs: u32, url: &str) -> Output {
    let m = secs.to_string();
    let args = ["curl", "-sS", "--max-time", &m, url];
    match netns {
        Some(ns) => in_netns(ns, &args),
        None => Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("curl"),
    }
}

/// `(ClientIP, ServerName)` of a demoapp answer.
fn demo_fields(answer: &str) -> Option<(String, String)> {
    let rest = answer.strip_prefix("iKubernetes demoapp v1.0 !! ClientIP: ")?;
    let (client, rest) = rest.split_once(", ServerName: ")?;
    let (server, _) = rest.split_once(", ServerIP: ")?;
    Some((client.to_string(), server.to_string()))
}

/// Curls `url` until it answers (rules reach every node asynchronously), then returns the answer.
fn first_answer(netns: Option<&str>, url: &str) -> String {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let out = curl_in(netns, 2, url);
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let last = last.expect("curl ran");
    assert!(ok, "{url} from {netns:?}: {}", text(&last));
    stdout(&last)
}

/// ServerNames answering `url` in up to `tries` requests, stopping once `want` distinct ones were seen.
fn servers_seen(netns: Option<&str>, url: &str, tries: usize, want: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let out = curl_in(netns, 3, url);
        let answer = stdout(&out);
        let (_, server) =
            demo_fields(&answer).unwrap_or_else(|| panic!("{url} from {netns:?}: {}", text(&out)));
        seen.insert(server);
        if seen.len() >= want {
            break;
        }
    }
    seen
}

fn up(c: &TestCluster, extra: &[&str]) {
    let out = c.up(extra);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
}

fn finish(c: TestCluster) {
    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

/// Seed 004 after the first curls: scale the demo to 4 (kubectl shows 4 endpoints), the ClusterIP answers from
/// every pod from a node and from a pod, a pod calling the service keeps its own source IP, and
/// `externalTrafficPolicy: Local` with one replica answers (with the client's address) only on the pod's node.
#[test]
fn seed_004_scale_source_ip_and_external_traffic_policy_local() {
    let _fixed = fixed_addresses_lock();
    let mut c = TestCluster::new(3);
    c.service_cidr = Some("10.97.0.0/16".to_string());
    up(&c, &["--demo", "--dns-replicas", "0"]);
    wait_endpoints(&c, "demoapp-svc", 2, Duration::from_secs(20));

    // kubectl scale deployment demoapp --replicas=4; kubectl get ep shows the 4th as "+ 1 more...".
    let out = c.kubectl(&["scale", "deployment", "demoapp", "--replicas=4"]);
    assert!(out.status.success(), "{}", text(&out));
    let started = Instant::now();
    let mut listing = String::new();
    let shown = wait_until(Duration::from_secs(15), || {
        listing = stdout(&c.kubectl(&["get", "ep", "demoapp-svc"]));
        listing.contains(" + 1 more...")
    });
    assert!(
        shown,
        "kubectl get ep demoapp-svc after scaling:\n{listing}"
    );
    let line = listing
        .lines()
        .find(|l| l.starts_with("demoapp-svc "))
        .unwrap_or_default();
    assert_eq!(line.matches(":80").count(), 3, "{listing}");
    eprintln!("4 endpoints listed {:?} after scaling", started.elapsed());
    let demo_pods = pods(&c, "app=demoapp");
    assert_eq!(demo_pods.len(), 4, "{demo_pods:?}");

    // From node-2's namespace: every one of the 4 pods answers on the ClusterIP.
    let node2 = c.node_netns(2);
    first_answer(Some(&node2), "http://10.97.72.1/");
    let seen = servers_seen(Some(&node2), "http://10.97.72.1/", 80, 4);
    assert_eq!(seen, demo_pods, "answers from node-2");

    // From a pod: a client pod sees several pods answer, and each answer shows the client pod's own IP.
    apply(
        &c,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  containers:\n  - name: pause\n    image: registry.k8s.io/pause:3.10\n",
    );
    assert!(
        wait_until(Duration::from_secs(20), || c
            .pod_netns("default", "client")
            .is_some()
            && !pod_ip(&c, "client").is_empty()),
        "client pod: {}",
        text(&c.kubectl(&["get", "pod", "client", "-o", "wide"]))
    );
    let client_ip = pod_ip(&c, "client");
    let client_ns = c.pod_netns("default", "client").unwrap_or_default();
    first_answer(Some(&client_ns), "http://10.97.72.1/");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let out = curl_in(Some(&client_ns), 3, "http://10.97.72.1/");
        let (client, server) = demo_fields(&stdout(&out))
            .unwrap_or_else(|| panic!("from the client pod: {}", text(&out)));
        assert_eq!(client, client_ip, "pod -> service must keep the pod's IP");
        seen.insert(server);
        if seen.len() == 4 {
            break;
        }
    }
    assert!(seen.len() >= 3, "answers from the client pod: {seen:?}");

    // The other service types from the client pod and from node-3: NodePort on another node's IP, the
    // LoadBalancer address and the external IP.
    let lb_ip = jsonpath(
        &c,
        &["svc", "demoapp-loadbalancer-svc"],
        "{.status.loadBalancer.ingress[0].ip}",
    );
    assert!(!lb_ip.is_empty(), "no LoadBalancer ingress");
    let node3 = c.node_netns(3);
    for netns in [client_ns.as_str(), node3.as_str()] {
        for url in [
            format!("http://{}:31399/", c.node_ip(1)),
            format!("http://{lb_ip}/"),
            "http://172.30.0.100/".to_string(),
        ] {
            let answer = first_answer(Some(netns), &url);
            let (_, server) =
                demo_fields(&answer).unwrap_or_else(|| panic!("{url} from {netns}: {answer:?}"));
            assert!(
                demo_pods.contains(&server),
                "{url} from {netns}: {answer:?}"
            );
        }
    }

    // externalTrafficPolicy: Local with one replica.
    let out = c.kubectl(&[
        "patch",
        "svc",
        "demoapp-nodeport-svc",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.kubectl(&["scale", "deployment", "demoapp", "--replicas=1"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_endpoints(&c, "demoapp-nodeport-svc", 1, Duration::from_secs(20));
    let pod = {
        let mut p = BTreeSet::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                p = pods(&c, "app=demoapp");
                p.len() == 1
            }),
            "{p:?}"
        );
        p.into_iter().next().unwrap_or_default()
    };
    let node = jsonpath(&c, &["pod", &pod], "{.spec.nodeName}");
    let index: u32 = node
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("pod {pod} on node {node:?}"));
    let bridge_ip = format!("172.31.{}.1", c.octet);
    let local = format!("http://{}:31399/", c.node_ip(index));
    let answer = first_answer(None, &local);
    let (client, server) = demo_fields(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(server, pod);
    assert_eq!(
        client, bridge_ip,
        "Local policy keeps the client's (host bridge) address"
    );
    let other = if index == 1 { 2 } else { 1 };
    let remote = format!("http://{}:31399/", c.node_ip(other));
    // The node without a local endpoint drops: curl times out rather than getting any answer.
    let started = Instant::now();
    let out = curl_in(None, 2, &remote);
    assert!(
        !out.status.success() && started.elapsed() >= Duration::from_millis(1900),
        "node-{other} without a local endpoint must drop: {} after {:?}",
        text(&out),
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(28), "curl timeout: {}", text(&out));

    // A LoadBalancer service with Local policy gets a healthCheckNodePort: 200 with the local endpoint count on
    // the pod's node, 503 with 0 elsewhere (what cloud load balancers probe).
    let out = c.kubectl(&[
        "patch",
        "svc",
        "demoapp-loadbalancer-svc",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let hc = jsonpath(
        &c,
        &["svc", "demoapp-loadbalancer-svc"],
        "{.spec.healthCheckNodePort}",
    );
    assert!(hc.parse::<u16>().is_ok(), "healthCheckNodePort {hc:?}");
    for (i, code, count) in [(index, "200", 1), (other, "503", 0)] {
        let url = format!("http://{}:{hc}/", c.node_ip(i));
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "2", "-w", "\n%{http_code}", &url])
                .output()
                .expect("curl");
            last = stdout(&out);
            last.ends_with(&format!("\n{code}"))
                && last.contains(&format!("\"localEndpoints\": {count}"))
        });
        assert!(ok, "health check on node-{i}: {last:?}");
    }

    finish(c);
}

/// Two echo pods whose named ports (`udp-echo`, `tcp-echo`) have different numbers in each pod: the service's
/// named targetPorts resolve per endpoint. Each answers `udp-<pod>` / `tcp-<pod>`.
const ECHO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: echo-a
  labels: {app: echo}
spec:
  containers:
  - name: echo
    image: busybox
    command: ["sh", "-c", "/usr/bin/python3 -c \"$UDP_ECHO\" 9000 & exec /usr/bin/socat TCP-LISTEN:9001,fork,reuseaddr SYSTEM:'echo tcp-$HOSTNAME'"]
    env:
    - name: UDP_ECHO
      # One socket answering every datagram (socat's UDP fork mode loses datagrams to its dying children).
      value: "import os, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', int(sys.argv[1]))); a = ('udp-' + os.environ['HOSTNAME'] + chr(10)).encode(); [s.sendto(a, s.recvfrom(2048)[1]) for _ in iter(int, 1)]"
    ports:
    - {name: udp-echo, containerPort: 9000, protocol: UDP}
    - {name: tcp-echo, containerPort: 9001}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-b
  labels: {app: echo}
spec:
  containers:
  - name: echo
    image: busybox
    command: ["sh", "-c", "/usr/bin/python3 -c \"$UDP_ECHO\" 9100 & exec /usr/bin/socat TCP-LISTEN:9101,fork,reuseaddr SYSTEM:'echo tcp-$HOSTNAME'"]
    env:
    - name: UDP_ECHO
      value: "import os, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', int(sys.argv[1]))); a = ('udp-' + os.environ['HOSTNAME'] + chr(10)).encode(); [s.sendto(a, s.recvfrom(2048)[1]) for _ in iter(int, 1)]"
    ports:
    - {name: udp-echo, containerPort: 9100, protocol: UDP}
    - {name: tcp-echo, containerPort: 9101}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: udp-echo}
  - {name: text, protocol: TCP, port: 7, targetPort: tcp-echo}
---
apiVersion: v1
kind: Service
metadata:
  name: nothing
spec:
  selector: {app: nothing-matches-this}
  ports:
  - {name: http, port: 80, targetPort: 80}
"#;

/// One request through socat (`UDP:` or `TCP:` address) with an empty body for TCP and one datagram for UDP;
/// the answer's first line.
fn socat_in(netns: Option<&str>, address: &str) -> Output {
    // TCP sends nothing: a server closing with unread data would answer RST and the client could lose the answer.
    let input = if address.starts_with("UDP") {
        "echo ping"
    } else {
        "true"
    };
    // UDP has no end of stream: socat waits -t after its input ends, which bounds the wait for the answer.
    let wait = if address.starts_with("UDP") {
        "0.5"
    } else {
        "2"
    };
    let script = format!("{input} | socat -t {wait} -T 3 - {address}");
    match netns {
        Some(ns) => in_netns(ns, &["sh", "-c", &script]),
        None => Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("socat"),
    }
}

/// Answers seen for `address` over up to `tries` requests, stopping once both echo pods answered.
fn echo_answers(netns: Option<&str>, address: &str, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        let out = socat_in(netns, address);
        let answer = stdout(&out).trim().to_string();
        assert!(
            !answer.is_empty(),
            "{address} from {netns:?}: {}",
            text(&out)
        );
        seen.insert(answer);
        if seen.len() == 2 {
            break;
        }
    }
    seen
}

/// A TCP connect to `addr` fails within a second with ECONNREFUSED (socat names the errno; curl only says
/// "Couldn't connect"), and curl gives up at once too (exit 7) rather than timing out.
fn assert_refused_at_once(netns: Option<&str>, addr: &str) {
    let started = Instant::now();
    let out = socat_in(netns, &format!("TCP:{addr},connect-timeout=5"));
    let took = started.elapsed();
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{addr} from {netns:?}: {}",
        text(&out)
    );
    assert!(
        took < Duration::from_secs(1),
        "{addr} refused after {took:?}"
    );
    let out = curl_in(netns, 5, &format!("http://{addr}/"));
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl {addr} from {netns:?}: {}",
        text(&out)
    );
}

/// UDP and TCP ports of one service with named targetPorts that differ per pod, from the host and from a node;
/// a service without endpoints and an unused port of a ClusterIP are refused at once, never a silent timeout.
#[test]
fn udp_and_multi_port_service_and_rejections() {
    let c = TestCluster::new(2);
    up(&c, &["--dns-replicas", "0"]);
    apply(&c, ECHO);
    wait_endpoints(&c, "echo", 2, Duration::from_secs(20));
    let ip = cluster_ip(&c, "echo");
    let node1 = c.node_netns(1);

    // The rules reach the nodes asynchronously: wait for the first TCP answer.
    let tcp = format!("TCP:{ip}:7");
    assert!(
        wait_until(Duration::from_secs(10), || socat_in(None, &tcp)
            .status
            .success()),
        "{}",
        text(&socat_in(None, &tcp))
    );
    let both = |proto: &str| -> BTreeSet<String> {
        ["echo-a", "echo-b"]
            .iter()
            .map(|p| format!("{proto}-{p}"))
            .collect()
    };
    for netns in [None, Some(node1.as_str())] {
        assert_eq!(
            echo_answers(netns, &tcp, 30),
            both("tcp"),
            "TCP from {netns:?}"
        );
        let udp = format!("UDP:{ip}:53");
        assert_eq!(
            echo_answers(netns, &udp, 30),
            both("udp"),
            "UDP from {netns:?}"
        );
    }

    // A UDP client that keeps its source port stays on one pod (one conntrack entry); when that pod goes away
    // the stale entry is deleted and the same client's next datagrams reach the other pod, not a dead address.
    let pinned = format!("UDP:{ip}:53,sourceport=40053,reuseaddr");
    let out = socat_in(Some(&node1), &pinned);
    let first = stdout(&out).trim().to_string();
    let gone = first
        .strip_prefix("udp-")
        .unwrap_or_else(|| panic!("{}", text(&out)))
        .to_string();
    let other = if gone == "echo-a" { "echo-b" } else { "echo-a" };
    for _ in 0..3 {
        assert_eq!(stdout(&socat_in(Some(&node1), &pinned)).trim(), first);
    }
    let out = c.kubectl(&["delete", "pod", &gone, "--grace-period=1"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_endpoints(&c, "echo", 1, Duration::from_secs(15));
    let mut last = String::new();
    let moved = wait_until(Duration::from_secs(5), || {
        last = stdout(&socat_in(Some(&node1), &pinned)).trim().to_string();
        last == format!("udp-{other}")
    });
    assert!(
        moved,
        "same UDP client after {gone} was deleted: {last:?}\n{}",
        text(&c.in_node(1, &["conntrack", "-L", "-p", "udp", "--dport", "53"]))
    );

    // No endpoints: "Connection refused" at once, from the host and from a node.
    let nothing = cluster_ip(&c, "nothing");
    for netns in [None, Some(node1.as_str())] {
        assert_refused_at_once(netns, &format!("{nothing}:80"));
    }

    // An unused port of a ClusterIP with endpoints: refused too.
    for netns in [None, Some(node1.as_str())] {
        assert_refused_at_once(netns, &format!("{ip}:8080"));
    }

    finish(c);
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: demoapp
        image: ikubernetes/demoapp:v1.0
        ports:
        - {name: http, containerPort: 80}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-sticky
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata:
  name: solo
  labels: {app: solo}
spec:
  containers:
  - name: demoapp
    image: ikubernetes/demoapp:v1.0
---
apiVersion: v1
kind: Service
metadata:
  name: solo
spec:
  selector: {app: solo}
  ports:
  - {name: http, port: 8080, targetPort: 80}
---
apiVersion: v1
kind: Service
metadata:
  name: solo-local
spec:
  selector: {app: solo}
  internalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: 80}
"#;

/// `sessionAffinity: ClientIP` keeps a client on one pod while the same pods without affinity answer in turn;
/// a pod reaches itself through its own service (hairpin); `internalTrafficPolicy: Local` answers only on the
/// endpoint's node.
#[test]
fn session_affinity_and_hairpin() {
    let c = TestCluster::new(2);
    up(&c, &["--dns-replicas", "0"]);
    apply(&c, WEB);
    wait_endpoints(&c, "web", 3, Duration::from_secs(20));
    wait_endpoints(&c, "web-sticky", 3, Duration::from_secs(5));
    wait_endpoints(&c, "solo", 1, Duration::from_secs(20));
    wait_endpoints(&c, "solo-local", 1, Duration::from_secs(5));
    let web = cluster_ip(&c, "web");
    let sticky = cluster_ip(&c, "web-sticky");
    let node2 = c.node_netns(2);

    for netns in [None, Some(node2.as_str())] {
        // Without affinity the pods answer in turn: the comparison that makes the affinity check meaningful.
        first_answer(netns, &format!("http://{web}/"));
        let free = servers_seen(netns, &format!("http://{web}/"), 40, 2);
        assert!(free.len() >= 2, "no affinity, from {netns:?}: {free:?}");

        first_answer(netns, &format!("http://{sticky}/"));
        let pinned = servers_seen(netns, &format!("http://{sticky}/"), 10, 2);
        assert_eq!(
            pinned.len(),
            1,
            "ClientIP affinity from {netns:?}: {pinned:?}"
        );
    }

    // From a pod (`solo` as the client): affinity holds too, and the answers show the pod's own IP.
    let solo_ns = c.pod_netns("default", "solo").unwrap_or_default();
    let solo_ip = pod_ip(&c, "solo");
    let url = format!("http://{sticky}/");
    first_answer(Some(&solo_ns), &url);
    let mut pinned = BTreeSet::new();
    for _ in 0..10 {
        let out = curl_in(Some(&solo_ns), 3, &url);
        let (client, server) =
            demo_fields(&stdout(&out)).unwrap_or_else(|| panic!("from solo: {}", text(&out)));
        assert_eq!(client, solo_ip, "pod -> service keeps the pod's IP");
        pinned.insert(server);
    }
    assert_eq!(pinned.len(), 1, "ClientIP affinity from a pod: {pinned:?}");

    // Hairpin: the only endpoint of `solo` calls its own service and is answered by itself.
    let solo = cluster_ip(&c, "solo");
    let answer = first_answer(Some(&solo_ns), &format!("http://{solo}:8080/"));
    let (_, server) = demo_fields(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(server, "solo");

    // internalTrafficPolicy: Local: from the node hosting `solo` the ClusterIP answers; from the other node,
    // which has no local endpoint, the traffic is dropped (curl times out) as upstream.
    let local_ip = cluster_ip(&c, "solo-local");
    let node = jsonpath(&c, &["pod", "solo"], "{.spec.nodeName}");
    let (here, there) = if node == "node-1" { (1, 2) } else { (2, 1) };
    let answer = first_answer(Some(&c.node_netns(here)), &format!("http://{local_ip}/"));
    assert_eq!(demo_fields(&answer).map(|f| f.1).as_deref(), Some("solo"));
    let started = Instant::now();
    let out = curl_in(
        Some(&c.node_netns(there)),
        2,
        &format!("http://{local_ip}/"),
    );
    assert_eq!(
        out.status.code(),
        Some(28),
        "node-{there} has no local endpoint of solo-local: {} after {:?}",
        text(&out),
        started.elapsed()
    );

    finish(c);
}

const CAT: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: cat
  labels: {app: cat}
spec:
  containers:
  - name: cat
    image: busybox
    command: ["sh", "-c", "exec /usr/bin/socat TCP-LISTEN:7007,fork,reuseaddr EXEC:/bin/cat"]
---
apiVersion: v1
kind: Service
metadata:
  name: cat
spec:
  selector: {app: cat}
  ports:
  - {name: echo, port: 7, targetPort: 7007}
---
apiVersion: v1
kind: Service
metadata:
  name: doomed
spec:
  selector: {app: cat}
  ports:
  - {name: echo, port: 7, targetPort: 7007}
"#;

/// The service rules of node `i` (`nft list table ip skiff-proxy` in its namespace).
fn node_rules(c: &TestCluster, i: u32) -> String {
    stdout(&c.in_node(i, &["nft", "list", "table", "ip", "skiff-proxy"]))
}

/// A proxy restart: node-1's agent is killed (SIGKILL) and started again with the same command line in the
/// node's namespace. A TCP connection established through a ClusterIP before keeps working, and a service
/// deleted while the agent was down leaves no rule behind after the restart's full resync.
#[test]
fn agent_restart_keeps_connections_and_removes_stale_rules() {
    let c = TestCluster::new(2);
    up(&c, &["--dns-replicas", "0"]);
    apply(&c, CAT);
    wait_endpoints(&c, "cat", 1, Duration::from_secs(20));
    wait_endpoints(&c, "doomed", 1, Duration::from_secs(5));
    let ip = cluster_ip(&c, "cat");
    let doomed = cluster_ip(&c, "doomed");
    let node1 = c.node_netns(1);
    let probe = format!("echo hi | socat -t 1 -T 3 - TCP:{ip}:7");
    assert!(
        wait_until(Duration::from_secs(10), || stdout(&in_netns(
            &node1,
            &["sh", "-c", &probe]
        ))
        .trim()
            == "hi"),
        "echo through {ip}:7 from node-1"
    );
    assert!(
        wait_until(Duration::from_secs(5), || node_rules(&c, 1)
            .contains(&doomed)),
        "{}",
        node_rules(&c, 1)
    );

    // A long-lived connection from node-1 through the ClusterIP.
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node1,
            "socat",
            "-",
            &format!("TCP:{ip}:7"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat client");
    let mut to_server = client.stdin.take().expect("client stdin");
    let from_server = client.stdout.take().expect("client stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from_server).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut echo = |word: &str| -> Option<String> {
        writeln!(to_server, "{word}").ok()?;
        to_server.flush().ok()?;
        rx.recv_timeout(Duration::from_secs(3)).ok()
    };
    assert_eq!(echo("before").as_deref(), Some("before"));

    // Kill node-1's agent, delete a service while it is down, start it again as `skiff up` did.
    let pid_path = c.data_dir.join("run/node-1.pid");
    let pid = pid_file(&c.data_dir, "node-1");
    assert!(pid > 1, "node-1 pid file");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("agent command line");
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(wait_until(
        Duration::from_secs(5),
        || !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .is_empty()
    ));
    let out = c.kubectl(&["delete", "svc", "doomed"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(echo("agent down").as_deref(), Some("agent down"));
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(c.data_dir.join("logs/node-1.log"))
        .expect("agent log");
    let log2 = log.try_clone().expect("agent log");
    // setsid execs in place (the spawned child is no group leader), so its pid is the agent's.
    let mut agent = Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{node1}"))
        .arg("--")
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("restarting the agent");
    std::fs::write(&pid_path, format!("{}\n", agent.id())).expect("pid file");

    let mut rules = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            rules = node_rules(&c, 1);
            rules.contains(&ip) && !rules.contains(&doomed)
        }),
        "after the restart node-1 still has {doomed} (or lost {ip}):\n{rules}"
    );
    assert_eq!(echo("after").as_deref(), Some("after"));
    assert_eq!(
        stdout(&in_netns(&node1, &["sh", "-c", &probe])).trim(),
        "hi",
        "a new connection after the restart"
    );
    drop(to_server);
    let _ = client.kill();
    let _ = client.wait();

    finish(c);
    // `skiff down` stopped the restarted agent through its pid file; reap it.
    let _ = agent.wait();
}

const ROLLING: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      # The demo server drains on SIGTERM: it keeps serving while the proxies drop the terminating
      # endpoint, then finishes the requests in flight and exits.
      containers:
      - name: demoapp
        image: ikubernetes/demoapp:v1.0
        ports:
        - {name: http, containerPort: 80}
        readinessProbe:
          httpGet: {path: /healthz, port: 80}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

/// `kubectl rollout restart` replaces every pod while a client on node-1 keeps calling the ClusterIP: every
/// request is answered: a terminating pod leaves the rules while it still serves, new ones join once ready.
#[test]
fn rolling_update_drops_no_request() {
    let c = TestCluster::new(2);
    up(&c, &["--dns-replicas", "0"]);
    apply(&c, ROLLING);
    wait_endpoints(&c, "web", 3, Duration::from_secs(20));
    let old_pods = pods(&c, "app=web");
    let url = format!("http://{}/", cluster_ip(&c, "web"));
    let node1 = c.node_netns(1);
    first_answer(Some(&node1), &url);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let (stop, url, node1) = (stop.clone(), url.clone(), node1.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut servers = BTreeSet::new();
            let mut count = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = curl_in(Some(&node1), 3, &url);
                count += 1;
                match demo_fields(&stdout(&out)) {
                    Some((_, server)) => {
                        servers.insert(server);
                    }
                    None => failures.push(text(&out)),
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            (count, failures, servers)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = c.kubectl(&["rollout", "restart", "deployment", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut now = BTreeSet::new();
    let rolled = wait_until(Duration::from_secs(40), || {
        now = pods(&c, "app=web");
        now.len() == 3 && now.is_disjoint(&old_pods) && endpoint_ips(&c, "web").len() == 3
    });
    // A little more traffic on the new pods only.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (count, failures, servers) = caller.join().expect("caller thread");
    assert!(rolled, "rollout did not finish: {old_pods:?} -> {now:?}");
    assert!(
        failures.is_empty(),
        "{} of {count} requests failed during the rollout:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        !servers.is_disjoint(&old_pods) && !servers.is_disjoint(&now),
        "answers must come from old and new pods: {servers:?}, old {old_pods:?}, new {now:?}"
    );

    finish(c);
}
