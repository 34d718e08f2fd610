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

    finish(c);
}
