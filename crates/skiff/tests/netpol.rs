//! End-to-end: NetworkPolicy on a real `skiff up` cluster (issue 11), as upstream's e2e suite
//! (test/e2e/network/netpol) tests it: namespaces x, y, z; pods a, b, c in each (spread over two nodes),
//! serving TCP and UDP 80 and 81 with named ports; a Service per pod. Every case of upstream's suite (the
//! cases are data in `skiff_netpol::testing`) is applied with kubectl and the whole 9×9 table is probed from
//! inside the pods' network namespaces, to pod IPs and to the pods' ClusterIPs, until it equals the expected
//! one (loopback not judged, as upstream). A probe is one new connection (TCP) or datagram (UDP) answered
//! by the server; all probes of a table run in parallel.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use skiff_netpol::model::Protocol;
use skiff_netpol::testing::{self, pod_name, Action, Case, Env, Reachability, NAMESPACES, PODS};

/// Every pod: one process serving TCP and UDP on 80 and 81, answering "ok".
const SERVER: &str = "import socket, threading\n\
def tcp(p):\n    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', p)); s.listen(512)\n    while True:\n        c, _ = s.accept(); c.sendall(b'ok\\n'); c.close()\n\
def udp(p):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', p))\n    while True:\n        d, a = s.recvfrom(2048); s.sendto(b'ok\\n', a)\n\
for p in (80, 81):\n    threading.Thread(target=tcp, args=(p,)).start(); threading.Thread(target=udp, args=(p,)).start()\n";

fn kubectl_stdin(c: &TestCluster, args: &[&str], input: &str) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
}

fn kubectl_ok(c: &TestCluster, args: &[&str]) -> String {
    let out = c.kubectl(args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fixture_manifest() -> String {
    let mut docs = Vec::new();
    for ns in NAMESPACES {
        docs.push(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
        for pod in PODS {
            let ports: Vec<serde_json::Value> = testing::SERVED
                .iter()
                .map(|(name, proto, port)| serde_json::json!({"name": name, "containerPort": port, "protocol": proto}))
                .collect();
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"containers": [{
                    "name": "server", "image": "busybox",
                    // Through the image's shell, as upstream's agnhost runs: busybox runs bare names itself.
                    "command": ["sh", "-c", "exec /usr/bin/python3 -c \"$SERVER\""],
                    "env": [{"name": "SERVER", "value": SERVER}],
                    "ports": ports,
                }]},
            }));
            let svc_ports: Vec<serde_json::Value> = testing::SERVED
                .iter()
                .map(|(name, proto, port)| serde_json::json!({"name": name, "port": port, "protocol": proto, "targetPort": port}))
                .collect();
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s-{ns}-{pod}"), "namespace": ns},
                "spec": {"selector": {"pod": pod}, "ports": svc_ports},
            }));
        }
    }
    serde_json::to_string(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}))
        .unwrap()
}

struct Fixture {
    env: Env,
    netns: Vec<String>,
    cluster_ips: Vec<Ipv4Addr>,
}

/// One probe from inside `netns` (this thread enters it; the thread is the probe's own).
fn probe(netns: &str, addr: SocketAddr, proto: Protocol, timeout: Duration) -> bool {
    let Ok(f) = std::fs::File::open(format!("/run/netns/{netns}")) else {
        return false;
    };
    // This thread is the probe's own: entering the namespace changes nothing else.
    if nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match proto {
        Protocol::Udp => {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            // A lost datagram is not a denial: send a few within the timeout.
            for _ in 0..3 {
                if s.send_to(b"hi", addr).is_err() {
                    return false;
                }
                let _ = s.set_read_timeout(Some(timeout / 3));
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    return buf[..n].starts_with(b"ok");
                }
            }
            false
        }
        _ => match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout));
                matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"ok"))
            }
            Err(_) => false,
        },
    }
}

impl Fixture {
    /// The observed tables (to pod IPs, to ClusterIPs) for `proto/port`, every probe in parallel.
    fn observe(&self, proto: Protocol, port: u16) -> (Reachability, Reachability) {
        let timeout = Duration::from_secs(1);
        let mut pods = Reachability::new(false);
        let mut services = Reachability::new(false);
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for f in 0..9 {
                for t in 0..9 {
                    let netns = self.netns[f].clone();
                    let pod_addr = SocketAddr::from((self.env.ip(&pod_name(t)), port));
                    let svc_addr = SocketAddr::from((self.cluster_ips[t], port));
                    let n2 = netns.clone();
                    handles.push((
                        f,
                        t,
                        false,
                        s.spawn(move || probe(&netns, pod_addr, proto, timeout)),
                    ));
                    handles.push((
                        f,
                        t,
                        true,
                        s.spawn(move || probe(&n2, svc_addr, proto, timeout)),
                    ));
                }
            }
            for (f, t, svc, h) in handles {
                let ok = h.join().unwrap_or(false);
                if svc {
                    services.0[f][t] = ok;
                } else {
                    pods.0[f][t] = ok;
                }
            }
        });
        (pods, services)
    }

    /// Probe until both tables equal `expect` (policy reaches the nodes asynchronously); Err shows the
    /// last tables.
    fn expect(
        &self,
        what: &str,
        proto: Protocol,
        port: u16,
        expect: &Reachability,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (pods, services) = self.observe(proto, port);
            let (wp, ws) = (expect.mismatches(&pods), expect.mismatches(&services));
            if wp.is_empty() && ws.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what} {proto}/{port}: expected\n{}to pod IPs\n{}to ClusterIPs\n{}",
                    expect.render(),
                    pods.render(),
                    services.render()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn act(c: &TestCluster, env: &Env, action: &Action) {
    match action {
        Action::Apply(ns, build) => {
            let mut v = build(env);
            v["metadata"]["namespace"] = serde_json::json!(env.ns(ns));
            kubectl_stdin(c, &["apply", "--validate=false", "-f", "-"], &v.to_string());
        }
        Action::DeleteAllPolicies => {
            for ns in NAMESPACES {
                kubectl_ok(c, &["delete", "networkpolicy", "--all", "-n", ns]);
            }
        }
        Action::LabelNamespace(ns, k, v) => {
            let l = match v {
                Some(v) => format!("{k}={v}"),
                None => format!("{k}-"),
            };
            kubectl_ok(c, &["label", "namespace", env.ns(ns), &l, "--overwrite"]);
        }
        Action::LabelPod(pod, k, v) => {
            let (ns, name) = pod.split_once('/').unwrap_or(("x", "a"));
            kubectl_ok(
                c,
                &[
                    "label",
                    "pod",
                    "-n",
                    env.ns(ns),
                    name,
                    &format!("{k}={v}"),
                    "--overwrite",
                ],
            );
        }
    }
}

/// Undo what a case did: its policies and the labels it set.
fn clean_up(c: &TestCluster, env: &Env, case: &Case) {
    act(c, env, &Action::DeleteAllPolicies);
    for a in case.steps.iter().flat_map(|s| &s.actions) {
        match a {
            Action::LabelNamespace(ns, k, _) => {
                let _ = c.kubectl(&["label", "namespace", env.ns(ns), &format!("{k}-")]);
            }
            Action::LabelPod(pod, k, _) => {
                let (ns, name) = pod.split_once('/').unwrap_or(("x", "a"));
                let _ = c.kubectl(&["label", "pod", "-n", env.ns(ns), name, &format!("{k}-")]);
            }
            _ => {}
        }
    }
}

fn run_case(c: &TestCluster, fx: &Fixture, case: &Case) -> Result<(), String> {
    fx.expect(
        &format!("{} (before)", case.name),
        Protocol::Tcp,
        80,
        &Reachability::new(true),
    )?;
    let result = (|| {
        for (i, step) in case.steps.iter().enumerate() {
            for a in &step.actions {
                act(c, &fx.env, a);
            }
            for check in &step.checks {
                fx.expect(
                    &format!("{} step {i}", case.name),
                    check.protocol,
                    check.port,
                    &check.expect,
                )?;
            }
        }
        Ok(())
    })();
    clean_up(c, &fx.env, case);
    result
}

fn setup(c: &TestCluster) -> Fixture {
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    kubectl_stdin(
        c,
        &["apply", "--validate=false", "-f", "-"],
        &fixture_manifest(),
    );
    let mut ips = BTreeMap::new();
    let mut netns = Vec::new();
    let mut cluster_ips = Vec::new();
    for i in 0..9 {
        let name = pod_name(i);
        let (ns, pod) = name.split_once('/').unwrap_or(("x", "a"));
        let mut ip = String::new();
        assert!(
            wait_until(Duration::from_secs(60), || {
                ip = kubectl_ok(
                    c,
                    &[
                        "get",
                        "pod",
                        "-n",
                        ns,
                        pod,
                        "-o",
                        "jsonpath={.status.podIP}",
                    ],
                );
                !ip.is_empty()
            }),
            "pod {name} got no IP"
        );
        ips.insert(name.clone(), ip.parse::<Ipv4Addr>().expect("pod IP"));
        let mut n = None;
        assert!(wait_until(Duration::from_secs(30), || {
            n = c.pod_netns(ns, pod);
            n.is_some()
        }));
        netns.push(n.unwrap_or_default());
        let svc = kubectl_ok(
            c,
            &[
                "get",
                "svc",
                "-n",
                ns,
                &format!("s-{ns}-{pod}"),
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        );
        cluster_ips.push(svc.parse::<Ipv4Addr>().expect("ClusterIP"));
    }
    let fx = Fixture {
        env: Env {
            namespaces: NAMESPACES.map(String::from),
            ips,
        },
        netns,
        cluster_ips,
    };
    for (proto, port) in [
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 81),
        (Protocol::Udp, 80),
        (Protocol::Udp, 81),
    ] {
        if let Err(e) = fx.expect("without policies", proto, port, &Reachability::new(true)) {
            panic!("{e}");
        }
    }
    fx
}

fn finish(c: TestCluster) {
    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

/// Upstream's 42 TCP cases (plus endPort) and its UDP cases, each step's whole table checked.
#[test]
fn upstream_netpol_suite_tcp_and_udp() {
    let c = TestCluster::new(2);
    let fx = setup(&c);
    let started = Instant::now();
    let cases: Vec<Case> = testing::tcp_cases()
        .into_iter()
        .chain(testing::udp_cases())
        .collect();
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        match run_case(&c, &fx, case) {
            Ok(()) => eprintln!("ok ({:.1}s): {}", t.elapsed().as_secs_f64(), case.name),
            Err(e) => {
                eprintln!(
                    "FAILED ({:.1}s): {}\n{e}",
                    t.elapsed().as_secs_f64(),
                    case.name
                );
                failures.push(e);
            }
        }
    }
    eprintln!(
        "{} cases in {:.0}s, {} failed",
        cases.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );

    // `skiff netpol why` explains from the same model: a deny-all in x isolates x/a.
    act(
        &c,
        &fx.env,
        &Action::Apply("x", |_| {
            testing::policy("deny-all", serde_json::json!({}), Some(vec![]), None)
        }),
    );
    let out = Command::new(SKIFF)
        .args(["netpol", "why", "y/b", "x/a", "80/tcp"])
        .env("KUBECONFIG", c.kubeconfig())
        .output()
        .expect("skiff netpol why");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        said.contains("DENIED") && said.contains("isolated by x/deny-all"),
        "{said}"
    );

    // The nodes' tables name chains after namespace/policy.
    let listed: String = (1..=2)
        .map(|i| {
            String::from_utf8_lossy(
                &c.in_node(i, &["nft", "list", "table", "inet", "skiff-netpol"])
                    .stdout,
            )
            .to_string()
        })
        .collect();
    assert!(listed.contains("chain ingress-x/deny-all"), "{listed}");
    finish(c);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
