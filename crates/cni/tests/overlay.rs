//! Kernel tests for inter-node routing: two "node" namespaces on one link, each with a "pod" wired by
//! skiff-cni; in VXLAN and host-gw mode the pods reach each other with their source address preserved, nodes
//! leaving removes the routes, and pod traffic to outside the cluster is masqueraded to the node address.

mod common;

use std::net::Ipv4Addr;

use common::nodes::{two_nodes, Node};
use common::{iperf, tcp_probe, Netns};
use skiff_cni::overlay::{self, Mode, Peer};

/// Create the VXLAN device in `n` (VXLAN mode) and return the peer record other nodes would see.
fn publish(n: &Node, mode: Mode) -> Peer {
    let local = n.local.clone();
    let mac = n.ns.block_on(move || async move {
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        match mode {
            Mode::Vxlan => Some(overlay::ensure_vxlan_device(&handle, &local).await.unwrap()),
            Mode::HostGw => None,
        }
    });
    Peer {
        name: n.local.name.clone(),
        node_ip: n.local.node_ip,
        pod_cidr: n.local.pod_cidr,
        vtep_mac: mac,
    }
}

fn sync(n: &Node, peers: Vec<Peer>, mode: Mode) {
    let state = overlay::desired(&n.local, &peers, mode);
    n.ns.block_on(move || async move {
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        overlay::sync(&handle, &state).await.unwrap();
    });
}

fn reachable(from: &Netns, ip: Ipv4Addr) -> bool {
    from.exec_ok(&["busybox", "ping", "-c1", "-W1", &ip.to_string()])
}

#[test]
fn vxlan_overlay_connects_pods_on_two_nodes_with_source_ip_preserved() {
    let (a, b) = two_nodes();
    // Before any overlay state the pods cannot reach each other.
    assert!(!reachable(&a.pod, b.pod_ip));
    let (pa, pb) = (publish(&a, Mode::Vxlan), publish(&b, Mode::Vxlan));
    let peers = vec![pa.clone(), pb.clone()];
    sync(&a, peers.clone(), Mode::Vxlan);
    sync(&b, peers.clone(), Mode::Vxlan);
    // Twice: idempotent, and nothing on the device is touched (no delete + re-add blips).
    let monitor = |ns: &Netns, f: &dyn Fn()| -> String {
        let mut ip = std::process::Command::new("ip")
            .args(["-n", &ns.name, "monitor", "route", "neigh"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut bridge = std::process::Command::new("bridge")
            .args(["-n", &ns.name, "monitor", "fdb"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        f();
        std::thread::sleep(std::time::Duration::from_millis(200));
        ip.kill().unwrap();
        bridge.kill().unwrap();
        let mut out = String::from_utf8_lossy(&ip.wait_with_output().unwrap().stdout).into_owned();
        out += &String::from_utf8_lossy(&bridge.wait_with_output().unwrap().stdout);
        out.lines()
            .filter(|l| l.contains(overlay::VXLAN_DEVICE))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(monitor(&a.ns, &|| sync(&a, peers.clone(), Mode::Vxlan)), "");

    let dev = a.ns.ip(&["-d", "link", "show", overlay::VXLAN_DEVICE]);
    assert!(dev.contains("vxlan id 1 local 192.168.77.1"), "{dev}");
    assert!(dev.contains("dstport 8472 nolearning"), "{dev}");
    assert!(dev.contains("mtu 1450"), "{dev}");
    assert_eq!(
        common::addrs(&a.ns, overlay::VXLAN_DEVICE),
        vec!["10.200.1.0/32"]
    );
    let mac_b = skiff_cni::nl::format_mac(&pb.vtep_mac.unwrap());
    let routes = a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"]);
    assert_eq!(
        routes.trim(),
        "10.200.2.0/24 via 10.200.2.0 dev skiff.vxlan proto 95 onlink"
    );
    let neigh = a.ns.ip(&["neigh", "show", "dev", overlay::VXLAN_DEVICE]);
    assert_eq!(neigh.trim(), format!("10.200.2.0 lladdr {mac_b} PERMANENT"));
    let fdb = common::sh(&[
        "bridge",
        "-n",
        &a.ns.name,
        "fdb",
        "show",
        "dev",
        overlay::VXLAN_DEVICE,
    ]);
    assert!(
        fdb.contains(&format!("{mac_b} dst 192.168.77.2 self permanent")),
        "{fdb}"
    );

    // Pod to pod across nodes: the server sees the client pod's own address, both ways.
    let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
    assert_eq!(peer.ip(), a.pod_ip);
    let (peer, _) = tcp_probe(&a.pod, a.pod_ip, &b.pod);
    assert_eq!(peer.ip(), b.pod_ip);
    // The other node reaches pods, pods reach the other node's overlay address.
    assert!(reachable(&b.ns, a.pod_ip));

    // Pod traffic to outside the cluster CIDR is masqueraded to the node address; pod-to-pod is not.
    let script = overlay::masquerade_script("10.200.0.0/16".parse().unwrap());
    a.ns.block_on(move || async move { overlay::nft_apply(&script).await.unwrap() });
    let script = overlay::masquerade_script("10.200.0.0/16".parse().unwrap());
    a.ns.block_on(move || async move { overlay::nft_apply(&script).await.unwrap() }); // re-apply: idempotent
    let (peer, _) = tcp_probe(&b.ns, Ipv4Addr::new(192, 168, 77, 2), &a.pod);
    assert_eq!(peer.ip(), Ipv4Addr::new(192, 168, 77, 1));
    let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
    assert_eq!(peer.ip(), a.pod_ip);
    assert_eq!(a.ns.ip(&["-o", "link"]).matches("skiff.vxlan").count(), 1);

    // Node b leaves: a's route, neighbour and FDB entry for it go away.
    let events = monitor(&a.ns, &|| sync(&a, vec![pa.clone()], Mode::Vxlan));
    for deleted in [
        "Deleted 10.200.2.0/24 via 10.200.2.0 dev skiff.vxlan",
        "Deleted 10.200.2.0 dev skiff.vxlan",
        "Deleted 192.168.77.2 dev skiff.vxlan",
    ] {
        assert!(events.contains(deleted), "{deleted} missing in {events}");
    }
    assert_eq!(
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"]).trim(),
        ""
    );
    assert_eq!(
        a.ns.ip(&["neigh", "show", "dev", overlay::VXLAN_DEVICE])
            .trim(),
        ""
    );
    let fdb = common::sh(&[
        "bridge",
        "-n",
        &a.ns.name,
        "fdb",
        "show",
        "dev",
        overlay::VXLAN_DEVICE,
    ]);
    assert!(!fdb.contains("dst 192.168.77.2"), "{fdb}");
    assert!(!reachable(&a.pod, b.pod_ip));
    // ... and comes back.
    sync(&a, peers, Mode::Vxlan);
    assert!(reachable(&a.pod, b.pod_ip));
}

#[test]
fn host_gw_routes_connect_pods_and_replace_vxlan_routes() {
    let (a, b) = two_nodes();
    // Start in VXLAN mode on a, then switch both to host-gw: the routes are replaced, not duplicated.
    let (pa, pb) = (publish(&a, Mode::Vxlan), publish(&b, Mode::Vxlan));
    sync(&a, vec![pa.clone(), pb.clone()], Mode::Vxlan);
    let peers = vec![publish(&a, Mode::HostGw), publish(&b, Mode::HostGw)];
    sync(&a, peers.clone(), Mode::HostGw);
    sync(&b, peers.clone(), Mode::HostGw);
    assert_eq!(
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"]).trim(),
        "10.200.2.0/24 via 192.168.77.2 dev eth0 proto 95"
    );
    assert_eq!(
        b.ns.ip(&["-4", "route", "show", "10.200.1.0/24"]).trim(),
        "10.200.1.0/24 via 192.168.77.1 dev eth0 proto 95"
    );
    let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
    assert_eq!(peer.ip(), a.pod_ip);
    let (peer, _) = tcp_probe(&a.pod, a.pod_ip, &b.pod);
    assert_eq!(peer.ip(), b.pod_ip);
    // A sync with nothing changed touches no route (no delete + re-add blips).
    let mut monitor = std::process::Command::new("ip")
        .args(["-n", &a.ns.name, "monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    sync(&a, peers.clone(), Mode::HostGw);
    std::thread::sleep(std::time::Duration::from_millis(200));
    monitor.kill().unwrap();
    let out = monitor.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // Removing the peer removes the route.
    sync(&a, vec![], Mode::HostGw);
    assert_eq!(
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"]).trim(),
        ""
    );
}

/// Wait up to 10 s for `f` to hold.
fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn run_follows_node_objects_joining_and_leaving() {
    use k8s_openapi::api::core::v1::Node;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (a, b) = two_nodes();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(skiff_api::testing::TestServer::start())
        .unwrap();
    let client = rt.block_on(server.client()).unwrap();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    for n in [&a, &b] {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.local.name},
            "spec": {"podCIDR": n.local.pod_cidr.to_string(), "podCIDRs": [n.local.pod_cidr.to_string()]},
        }))
        .unwrap();
        rt.block_on(nodes.create(&Default::default(), &node))
            .unwrap();
    }
    let options = overlay::OverlayOptions {
        mode: Mode::Vxlan,
        cluster_cidr: "10.200.0.0/16".parse().unwrap(),
    };
    let tasks: Vec<_> = [&a, &b]
        .into_iter()
        .map(|n| {
            let identity = skiff_runtime::NodeIdentity {
                name: n.local.name.clone(),
                ip: n.local.node_ip.into(),
            };
            let (client, options, path) = (client.clone(), options.clone(), n.ns.path());
            rt.spawn(async move {
                let result = overlay::run_in(client, identity, options, Some(path)).await;
                tracing::error!("run_in ended: {result:?}");
                result
            })
        })
        .collect();

    eventually("route to node-b's pods on node-a", || {
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"])
            .contains("via 10.200.2.0 dev skiff.vxlan")
    });
    eventually("route to node-a's pods on node-b", || {
        b.ns.ip(&["-4", "route", "show", "10.200.1.0/24"])
            .contains("via 10.200.1.0 dev skiff.vxlan")
    });
    // The published annotations are the device's MAC and the node IP.
    let node_b = rt.block_on(nodes.get("node-b")).unwrap();
    let ann = node_b.metadata.annotations.unwrap();
    let dev = b.ns.ip(&["link", "show", "skiff.vxlan"]);
    assert!(
        dev.contains(&format!("link/ether {} ", ann["skiff.dev/vtep-mac"])),
        "{dev} vs {ann:?}"
    );
    assert_eq!(ann["skiff.dev/node-ip"], "192.168.77.2");
    let (peer, _) = tcp_probe(&b.pod, b.pod_ip, &a.pod);
    assert_eq!(peer.ip(), a.pod_ip);
    assert_eq!(
        common::sh(&[
            "ip",
            "netns",
            "exec",
            &a.ns.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward"
        ])
        .trim(),
        "1"
    );
    // The masquerade table exists in the node's namespace (and not on the host running the test).
    assert!(a.ns.exec_ok(&["nft", "list", "table", "ip", "skiff-cni"]));

    // node-b leaves: node-a forgets it.
    rt.block_on(nodes.delete("node-b", &Default::default()))
        .unwrap();
    eventually("node-a dropping node-b's route", || {
        a.ns.ip(&["-4", "route", "show", "10.200.2.0/24"])
            .trim()
            .is_empty()
    });
    eventually("node-a dropping node-b's neighbour", || {
        a.ns.ip(&["neigh", "show", "dev", "skiff.vxlan"])
            .trim()
            .is_empty()
    });
    for t in tasks {
        t.abort();
    }
    let path = a.ns.path();
    rt.block_on(overlay::teardown(Some(&path))).unwrap();
    assert!(!a.ns.ip(&["link"]).contains("skiff.vxlan"));
    assert!(!a.ns.exec_ok(&["nft", "list", "table", "ip", "skiff-cni"]));
}

/// Benchmark (run by bench/pod-network.sh): pod-to-pod TCP throughput across two nodes over VXLAN versus
/// host-gw (the same path without encapsulation), and node-to-node as the underlay's ceiling.
#[test]
#[ignore]
fn bench_pod_to_pod_throughput_vxlan_vs_host_gw() {
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut results = Vec::new();
    for mode in [Mode::Vxlan, Mode::HostGw] {
        let (a, b) = two_nodes();
        let peers = vec![publish(&a, mode), publish(&b, mode)];
        sync(&a, peers.clone(), mode);
        sync(&b, peers, mode);
        let pods = iperf(&b.pod, b.pod_ip, &a.pod, seconds);
        let nodes = iperf(&b.ns, b.local.node_ip, &a.ns, seconds);
        println!("BENCH mode={mode} pod-to-pod={pods:.2} Gbit/s node-to-node={nodes:.2} Gbit/s");
        results.push(pods);
    }
    println!("BENCH vxlan/host-gw ratio={:.2}", results[0] / results[1]);
}
