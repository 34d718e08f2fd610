//! Kernel tests: a "node" network namespace with three "pod" namespaces behind veths (routed /32s, as the
//! skiff CNI plugin builds them) and an off-cluster client namespace, a server on TCP and UDP 80/81 in
//! every pod, and the real enforcer (`nft -f -` inside the node namespace). Every probe's outcome is compared
//! with the pure model's verdict. Everything is uniquely named and removed on drop, also when a test fails.
//! Needs root; skipped otherwise.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use skiff_netpol::agent::{Enforcer, Synced};
use skiff_netpol::apply::Runner;
use skiff_netpol::model::{Local, Model, PodView, Protocol};
use skiff_netpol::nft::{self, RenderConfig};

const PODS: [(&str, &str, &str); 3] = [
    ("a", "10.250.1.2", "web"),
    ("b", "10.250.1.3", "db"),
    ("c", "10.250.1.4", "web"),
];
const NODE_IP: &str = "172.31.99.1";
const OUTSIDE_IP: &str = "172.31.99.2";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Topology {
    node: String,
    pods: Vec<String>,
    outside: String,
    servers: Vec<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.pods.iter().chain([&self.node, &self.outside]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Topology {
    fn new() -> Topology {
        let id = format!(
            "{}{:04x}",
            std::process::id() % 100000,
            rand::random::<u16>()
        );
        let mut t = Topology {
            node: format!("sknp-{id}-node"),
            pods: PODS
                .iter()
                .map(|(n, _, _)| format!("sknp-{id}-{n}"))
                .collect(),
            outside: format!("sknp-{id}-out"),
            servers: Vec::new(),
        };
        for ns in t.pods.iter().chain([&t.node, &t.outside]) {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &t.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (i, (_, ip, _)) in PODS.iter().enumerate() {
            let (pod, dev) = (&t.pods[i], format!("v{i}"));
            sh(&[
                "ip", "-n", &t.node, "link", "add", &dev, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            sh(&[
                "ip",
                "-n",
                &t.node,
                "addr",
                "add",
                "10.250.1.1/32",
                "dev",
                &dev,
            ]);
            sh(&["ip", "-n", &t.node, "link", "set", &dev, "up"]);
            sh(&[
                "ip",
                "-n",
                &t.node,
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                &dev,
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
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "10.250.1.1/32",
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                "10.250.1.1",
                "dev",
                "eth0",
            ]);
        }
        sh(&[
            "ip", "-n", &t.node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &t.outside,
        ]);
        sh(&[
            "ip",
            "-n",
            &t.node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "up0",
        ]);
        sh(&["ip", "-n", &t.node, "link", "set", "up0", "up"]);
        sh(&[
            "ip",
            "-n",
            &t.outside,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &t.outside, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &t.outside,
            "route",
            "add",
            "10.250.1.0/24",
            "via",
            NODE_IP,
        ]);
        for pod in t.pods.clone() {
            let child = Command::new("ip")
                .args(["netns", "exec", &pod, "python3", "-c", SERVER])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 server");
            t.servers.push(child);
        }
        // Wait until every server answers (no policy yet).
        for (name, ip, _) in PODS {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let ok = (0..100).any(|_| {
                    let ok = t.probe(&t.node, ip, proto, 80);
                    if !ok {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    ok
                });
                assert!(ok, "server in pod {name} not answering {proto}");
            }
        }
        t
    }

    /// One new connection (TCP) or datagram exchange (UDP) from namespace `from` to `ip:port`.
    fn probe(&self, from: &str, ip: &str, proto: Protocol, port: u16) -> bool {
        let (from, addr) = (
            from.to_string(),
            SocketAddr::from((ip.parse::<Ipv4Addr>().unwrap(), port)),
        );
        std::thread::spawn(move || probe_from(&from, addr, proto))
            .join()
            .unwrap_or(false)
    }
}

/// Every pod: one process answering "ok" on TCP and UDP 80 and 81.
const SERVER: &str = "import socket, threading\n\
def tcp(p):\n    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', p)); s.listen(512)\n    while True:\n        c, _ = s.accept(); c.sendall(b'ok\\n'); c.close()\n\
def udp(p):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', p))\n    while True:\n        d, a = s.recvfrom(2048); s.sendto(b'ok\\n', a)\n\
for p in (80, 81):\n    threading.Thread(target=tcp, args=(p,)).start(); threading.Thread(target=udp, args=(p,)).start()\n";

/// On the calling thread (which must be used for nothing else): enter `netns`, then probe.
fn probe_from(netns: &str, addr: SocketAddr, proto: Protocol) -> bool {
    let timeout = Duration::from_millis(1500);
    let Ok(f) = std::fs::File::open(format!("/run/netns/{netns}")) else {
        return false;
    };
    // The thread is our own: entering the namespace changes nothing else.
    if nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match proto {
        Protocol::Udp => {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout / 3));
            (0..3).any(|_| {
                s.send_to(b"hi", addr).is_ok()
                    && matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n].starts_with(b"ok"))
            })
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

fn views(labels: &[(&str, &str)]) -> Vec<PodView> {
    PODS.iter()
        .map(|(name, ip, app)| {
            let extra = labels.iter().find(|(p, _)| p == name).map(|(_, v)| *v);
            let mut l = json!({"app": app});
            if let Some(v) = extra {
                l["role"] = json!(v);
            }
            view(&pod(
                "shop",
                name,
                ip,
                l,
                &[("http", "TCP", 80), ("alt", "UDP", 81)],
            ))
        })
        .collect()
}

fn model(policies: &[NetworkPolicy], pods: &[PodView]) -> Model {
    let local: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    Model::build(
        policies,
        pods,
        &[namespace("shop", json!({}))],
        Local::Ips(&local),
    )
}

/// Probe every pod pair and the outside client on TCP/UDP 80/81 (in parallel) and compare with the model.
fn check_against_model(t: &Topology, m: &Model) -> usize {
    let mut cases = Vec::new();
    let sources: Vec<(&str, &str)> = PODS
        .iter()
        .enumerate()
        .map(|(i, (_, ip, _))| (t.pods[i].as_str(), *ip))
        .chain([(t.outside.as_str(), OUTSIDE_IP)])
        .collect();
    for (ns, src) in &sources {
        for (_, dst, _) in PODS {
            if *src == dst {
                continue;
            }
            for proto in [Protocol::Tcp, Protocol::Udp] {
                for port in [80u16, 81] {
                    cases.push((*ns, *src, dst, proto, port));
                }
            }
        }
    }
    let results: Vec<(String, bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(ns, src, dst, proto, port)| {
                s.spawn(move || {
                    let want = m
                        .evaluate(src.parse().unwrap(), dst.parse().unwrap(), *proto, *port)
                        .allowed();
                    (
                        format!("{src} → {dst} {proto}/{port}"),
                        want,
                        t.probe(ns, dst, *proto, *port),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| format!("{what}: model {want}, kernel {got}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "kernel differs from the model:\n{}",
        wrong.join("\n")
    );
    results.iter().filter(|(_, want, _)| !want).count()
}

fn policies() -> Vec<NetworkPolicy> {
    vec![
        policy(
            "shop",
            "db-from-web",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}]}),
        ),
        policy(
            "shop",
            "c-egress",
            json!({"podSelector": {"matchLabels": {"app": "web", "role": "locked"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.250.0.0/16", "except": ["10.250.1.3/32"]}}], "ports": [{"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
        ),
        policy(
            "shop",
            "a-from-outside",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "172.31.99.0/24"}}, {"podSelector": {}}], "ports": [{"port": 81, "protocol": "TCP"}, {"port": "alt", "protocol": "UDP"}]}]}),
        ),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn kernel_verdicts_equal_the_model_through_full_and_incremental_syncs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = Topology::new();
    let runner = Runner::in_netns(&t.node);
    let mut enforcer = Enforcer::new(RenderConfig::default(), runner.clone());
    let rt = rt();

    // No policy: everything open (and the table exists, empty of pods).
    let open = model(&[], &views(&[]));
    assert_eq!(rt.block_on(enforcer.sync(&open)).unwrap(), Synced::Full);
    assert_eq!(check_against_model(&t, &open), 0);

    // Policies: isolation, named ports, ipBlock with except, endPort, egress.
    let pods = views(&[("c", "locked")]);
    let m1 = model(&policies(), &pods);
    assert_eq!(rt.block_on(enforcer.sync(&m1)).unwrap(), Synced::Diff);
    let denied = check_against_model(&t, &m1);
    assert!(denied >= 10, "the policies deny something: {denied}");

    // A relabelled pod (c unlocked) and a removed policy, as one incremental transaction.
    let m2 = model(&policies()[..2], &views(&[]));
    assert_eq!(rt.block_on(enforcer.sync(&m2)).unwrap(), Synced::Diff);
    check_against_model(&t, &m2);

    // The incrementally built table equals a fresh full sync of the same model.
    let listed = |r: &Runner| {
        rt.block_on(r.nft(&["list", "table", "inet", nft::TABLE], None))
            .unwrap()
    };
    let incremental = listed(&runner);
    let mut fresh = Enforcer::new(RenderConfig::default(), runner.clone());
    assert_eq!(rt.block_on(fresh.sync(&m2)).unwrap(), Synced::Full);
    // Same objects with the same content (the listing orders chains by creation; counters' values differ).
    let blocks = |s: &str| -> BTreeSet<String> {
        s.split("\n\n")
            .map(|b| {
                b.lines()
                    .filter(|l| !l.contains("packets") && *l != "}")
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect()
    };
    assert_eq!(blocks(&incremental), blocks(&listed(&runner)));
}

#[test]
fn node_local_traffic_and_replies_pass_and_denials_are_counted() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = Topology::new();
    let runner = Runner::in_netns(&t.node);
    let mut enforcer = Enforcer::new(RenderConfig::default(), runner.clone());
    let rt = rt();
    let deny_all = [policy(
        "shop",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )];
    let m = model(&deny_all, &views(&[]));
    rt.block_on(enforcer.sync(&m)).unwrap();
    // Pods reach nothing and nothing reaches them, except the node itself (kubelet's probes).
    assert!(!t.probe(&t.pods[0], PODS[1].1, Protocol::Tcp, 80));
    assert!(!t.probe(&t.outside, PODS[1].1, Protocol::Tcp, 80));
    assert!(
        t.probe(&t.node, PODS[1].1, Protocol::Tcp, 80),
        "node-local traffic to a pod is allowed"
    );
    assert!(t.probe(&t.node, PODS[1].1, Protocol::Udp, 81));
    let counters = rt.block_on(runner.counters(nft::TABLE)).unwrap();
    assert!(
        counters["denied-ingress-shop/deny-all"].0 >= 1,
        "{counters:?}"
    );
    assert!(
        counters["denied-egress-shop/deny-all"].0 >= 1,
        "{counters:?}"
    );
    // Deleting the policy stops enforcing at once.
    rt.block_on(enforcer.sync(&model(&[], &views(&[]))))
        .unwrap();
    assert!(t.probe(&t.pods[0], PODS[1].1, Protocol::Tcp, 80));
}
