//! Kernel tests of the BGP backend: two node namespaces on one link run `bgp::run_in` against a real API
//! server; BIRD (Debian's bird2) peers them, installs each other's pod CIDR (`proto bird`), pods reach each
//! other with their own source address, a Node leaving removes its route, and a BIRD that cannot start is
//! reported on the Node's conditions and as an event.

mod common;

use std::time::Duration;

use common::nodes::{two_nodes, Node};
use common::{iperf, tcp_probe};
use k8s_openapi::api::core::v1::{Event, Node as KubeNode};
use skiff_cni::bgp::{self, BgpOptions, Encapsulation};

fn options(bird: &str) -> BgpOptions {
    BgpOptions {
        asn: Default::default(),
        peers: Vec::new(),
        node_mesh: true,
        encapsulation: Encapsulation::None,
        hold_time: 3,
        keepalive_time: None,
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        bird: bird.into(),
        birdc: "/usr/sbin/birdc".into(),
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

struct Harness {
    rt: tokio::runtime::Runtime,
    _server: skiff_api::testing::TestServer,
    client: kube::Client,
    dirs: Vec<tempfile::TempDir>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), bgp::Error>>>,
}

impl Harness {
    fn new(nodes: &[&Node]) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(skiff_api::testing::TestServer::start())
            .unwrap();
        let client = rt.block_on(server.client()).unwrap();
        let api: kube::Api<KubeNode> = kube::Api::all(client.clone());
        for n in nodes {
            let node: KubeNode = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.local.name, "annotations": {"skiff.dev/node-ip": n.local.node_ip.to_string()}},
                "spec": {"podCIDR": n.local.pod_cidr.to_string(), "podCIDRs": [n.local.pod_cidr.to_string()]},
            }))
            .unwrap();
            rt.block_on(api.create(&Default::default(), &node)).unwrap();
        }
        Harness {
            rt,
            _server: server,
            client,
            dirs: Vec::new(),
            tasks: Vec::new(),
        }
    }

    fn run(&mut self, n: &Node, options: BgpOptions) {
        let dir = tempfile::tempdir().unwrap();
        let identity = skiff_runtime::NodeIdentity {
            name: n.local.name.clone(),
            ip: n.local.node_ip.into(),
        };
        let (client, path, data) = (self.client.clone(), n.ns.path(), dir.path().to_path_buf());
        self.tasks.push(self.rt.spawn(async move {
            bgp::run_in(
                client,
                identity,
                options,
                "10.200.0.0/16".parse().unwrap(),
                data,
                Some(path),
            )
            .await
        }));
        self.dirs.push(dir);
    }

    fn run_overlay(&mut self, n: &Node, mode: skiff_cni::overlay::Mode) {
        let identity = skiff_runtime::NodeIdentity {
            name: n.local.name.clone(),
            ip: n.local.node_ip.into(),
        };
        let options = skiff_cni::overlay::OverlayOptions {
            mode,
            cluster_cidr: "10.200.0.0/16".parse().unwrap(),
        };
        let (client, path) = (self.client.clone(), n.ns.path());
        self.tasks.push(self.rt.spawn(async move {
            skiff_cni::overlay::run_in(client, identity, options, Some(path))
                .await
                .map_err(|e| bgp::Error::Node {
                    name: "overlay".into(),
                    msg: e.to_string(),
                })
        }));
    }

    fn condition(&self, node: &str) -> Option<(String, String, String)> {
        let api: kube::Api<KubeNode> = kube::Api::all(self.client.clone());
        let n = self.rt.block_on(api.get(node)).ok()?;
        n.status?.conditions?.into_iter().find_map(|c| {
            (c.type_ == bgp::CONDITION).then(|| {
                (
                    c.status,
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default(),
                )
            })
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Aborted tasks drop their BIRD handles, which end BIRD; give it a moment before namespaces go.
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    }
}

#[test]
fn bird_peers_two_nodes_and_installs_their_pod_routes() {
    let (a, b) = two_nodes();
    let mut h = Harness::new(&[&a, &b]);
    h.run(&a, options("/usr/sbin/bird"));
    h.run(&b, options("/usr/sbin/bird"));
    eventually("node-a's route to node-b's pods from BIRD", || {
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"])
            .contains("via 192.168.77.2 dev eth0 proto bird")
    });
    eventually("node-b's route to node-a's pods from BIRD", || {
        b.ns.ip(&["-4", "route", "show", "10.200.1.0/24"])
            .contains("via 192.168.77.1 dev eth0 proto bird")
    });
    // The aggregated block stays in BIRD: the node's own pod CIDR is no kernel route.
    assert!(a
        .ns
        .ip(&["-4", "route", "show", "10.200.1.0/24"])
        .trim()
        .is_empty());
    let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
    assert_eq!(peer.ip(), a.pod_ip, "node-b's pod saw another source");
    eventually("BIRDIsUp on node-a", || {
        h.condition("node-a")
            .is_some_and(|c| c.0 == "False" && c.1 == "BIRDIsUp")
    });

    // node-b leaves: node-a's BIRD is reconfigured without the session and withdraws the route.
    let api: kube::Api<KubeNode> = kube::Api::all(h.client.clone());
    h.rt.block_on(api.delete("node-b", &Default::default()))
        .unwrap();
    eventually("node-a dropping node-b's route", || {
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"])
            .trim()
            .is_empty()
    });
    let conf = std::fs::read_to_string(h.dirs[0].path().join("bird/bird.conf")).unwrap();
    assert!(!conf.contains("192.168.77.2"), "{conf}");
}

#[test]
fn bird_failing_to_start_is_a_node_condition_and_an_event() {
    let (a, b) = two_nodes();
    let mut h = Harness::new(&[&a, &b]);
    h.run(&a, options("/nonexistent/bird"));
    let mut seen = None;
    eventually("NetworkUnavailable=True on node-a", || {
        seen = h.condition("node-a");
        seen.as_ref()
            .is_some_and(|c| c.0 == "True" && c.1 == "BIRDFailed")
    });
    let message = seen.map(|c| c.2).unwrap_or_default();
    assert!(message.contains("starting /nonexistent/bird"), "{message}");
    let events: kube::Api<Event> = kube::Api::namespaced(h.client.clone(), "default");
    let list = h.rt.block_on(events.list(&Default::default())).unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BIRDFailed")
                && e.involved_object.kind.as_deref() == Some("Node")
                && e.involved_object.name.as_deref() == Some("node-a")
                && e.type_.as_deref() == Some("Warning")),
        "{:?}",
        list.items
    );
    // Nothing is routed while BIRD is down: no silent half-state in the kernel.
    assert!(!a.ns.ip(&["-4", "route"]).contains("proto bird"));
}

/// Benchmark (run by bench/bgp.sh): pod-to-pod TCP throughput across two nodes, in one run: BGP (BIRD's
/// plain routes) vs host-gw vs VXLAN vs BGP with VXLAN encapsulation; IP-in-IP where the kernel has it.
#[test]
#[ignore]
fn bench_pod_to_pod_throughput_bgp_vs_host_gw_vs_vxlan_vs_ipip() {
    use skiff_cni::overlay::Mode;
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let variants = ["bgp", "host-gw", "vxlan", "bgp+vxlan", "bgp+ipip"];
    let mut results = Vec::new();
    for variant in variants {
        let (a, b) = two_nodes();
        if variant == "bgp+ipip" && !a.ns.exec_ok(&["ip", "link", "show", "tunl0"]) {
            println!("BENCH variant={variant} unavailable: this kernel has no IP-in-IP (CONFIG_NET_IPIP)");
            continue;
        }
        let mut h = Harness::new(&[&a, &b]);
        for n in [&a, &b] {
            match variant {
                "host-gw" => h.run_overlay(n, Mode::HostGw),
                "vxlan" => h.run_overlay(n, Mode::Vxlan),
                _ => {
                    let mut o = options("/usr/sbin/bird");
                    o.encapsulation = match variant {
                        "bgp+vxlan" => Encapsulation::Vxlan,
                        "bgp+ipip" => Encapsulation::Ipip,
                        _ => Encapsulation::None,
                    };
                    h.run(n, o);
                }
            }
        }
        eventually(&format!("{variant}: route to node-b's pods"), || {
            !a.ns
                .ip(&["-4", "route", "show", "10.200.2.0/24"])
                .trim()
                .is_empty()
        });
        let route = a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"]);
        let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
        assert_eq!(peer.ip(), a.pod_ip);
        let gbps = iperf(&b.pod, b.pod_ip, &a.pod, seconds);
        println!(
            "BENCH variant={variant} pod-to-pod={gbps:.2} Gbit/s route: {}",
            route.trim()
        );
        results.push((variant, gbps));
    }
    let base = results
        .iter()
        .find(|r| r.0 == "host-gw")
        .map(|r| r.1)
        .unwrap_or(1.0);
    for (v, g) in &results {
        println!("BENCH ratio {v}/host-gw={:.2}", g / base);
    }
}
