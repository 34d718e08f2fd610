//! Node namespaces for routing tests: a "node" namespace with one "pod" wired by skiff-cni, and two nodes on
//! one L2 segment.

use std::net::Ipv4Addr;

use skiff_cni::overlay::{self, LocalNode};
use skiff_cni::runtime::{CniRuntime, PodRef};

use super::Netns;

const PLUGIN: &str = env!("CARGO_BIN_EXE_skiff-cni");

pub struct Node {
    pub ns: Netns,
    pub pod: Netns,
    pub pod_ip: Ipv4Addr,
    pub local: LocalNode,
    _dir: tempfile::TempDir,
}

/// A node namespace with `eth0` = `node_ip/24` and one pod from `pod_cidr` attached by skiff-cni.
pub fn node(node_ip: Ipv4Addr, pod_cidr: &str, name: &str) -> Node {
    let ns = Netns::new("skon");
    let pod = Netns::new("skop");
    let dir = tempfile::tempdir().unwrap();
    let (conf, bin) = (dir.path().join("conf"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(PLUGIN, bin.join("skiff-cni")).unwrap();
    let mut list: serde_json::Value = serde_json::from_str(&skiff_cni::config::skiff_conflist(
        "overlaytest",
        pod_cidr.parse().unwrap(),
        overlay::VXLAN_MTU,
    ))
    .unwrap();
    list["plugins"][0]["ipam"]["dataDir"] = dir.path().join("ipam").display().to_string().into();
    std::fs::write(conf.join("10-skiff.conflist"), list.to_string()).unwrap();
    let runtime = CniRuntime::new(conf, vec![bin], dir.path().join("cache"));
    let pod_path = pod.path();
    let result = ns.block_on(move || async move {
        runtime
            .add(
                "ctr",
                &pod_path,
                "eth0",
                &PodRef {
                    namespace: "default".into(),
                    name: "p".into(),
                    uid: "u".into(),
                },
            )
            .await
            .unwrap()
    });
    Node {
        pod_ip: result.pod_ipv4().unwrap(),
        ns,
        pod,
        local: LocalNode {
            name: name.into(),
            node_ip,
            pod_cidr: pod_cidr.parse().unwrap(),
        },
        _dir: dir,
    }
}

/// Two nodes whose eth0s are the two ends of one veth pair (one L2 segment).
pub fn two_nodes() -> (Node, Node) {
    let a = node(Ipv4Addr::new(192, 168, 77, 1), "10.200.1.0/24", "node-a");
    let b = node(Ipv4Addr::new(192, 168, 77, 2), "10.200.2.0/24", "node-b");
    a.ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.ns.name,
    ]);
    for (n, ip) in [(&a, "192.168.77.1/24"), (&b, "192.168.77.2/24")] {
        n.ns.ip(&["addr", "add", ip, "dev", "eth0"]);
        n.ns.ip(&["link", "set", "eth0", "up"]);
    }
    (a, b)
}
