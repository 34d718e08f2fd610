//! The embedded cluster's layout: every name, address, path and command line `skiff up` uses, computed from
//! the options alone (pure, no I/O), so that `skiff down` can recompute it after a crash and tests can pin it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use skiff_cni::bgp::Encapsulation;

use crate::Error;

/// Priority of the host's `ip rule` that looks up a bgp cluster's route table (before `main`, 32766).
pub const HOST_RULE_PRIORITY: u32 = 9100;

/// Longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Overlay mode between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Overlay {
    Vxlan,
    HostGw,
    /// Routes learned over BGP: BIRD on every node and on the host (`skiff_cni::bgp`).
    Bgp,
}

impl Overlay {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlay::Vxlan => "vxlan",
            Overlay::HostGw => "host-gw",
            Overlay::Bgp => "bgp",
        }
    }
}

/// Everything about one cluster that outlives the `skiff up` process (written to `<data-dir>/cluster.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub name: String,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub node_network: Ipv4Net,
    pub bridge_ip: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub overlay: Overlay,
    /// With the bgp backend: how pod traffic between nodes is encapsulated.
    #[serde(default)]
    pub encapsulation: Encapsulation,
    /// With the bgp backend: the BGP hold time of every session, in seconds.
    #[serde(default = "default_hold_time")]
    pub bgp_hold_time: u16,
    /// Every second node (node-2, node-4, ...) sits on a second host bridge with this network: nodes on
    /// two subnets that the host routes between (cross-subnet encapsulation).
    #[serde(default)]
    pub second_network: Option<Ipv4Net>,
    pub lb_pool: String,
    pub api_port: u16,
    pub nodes: Vec<NodeLayout>,
}

fn default_hold_time() -> u16 {
    skiff_cni::bgp::Timers::default().hold
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLayout {
    /// 1-based index.
    pub index: u32,
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The veth end that stays in the host and is enslaved to the bridge.
    pub host_veth: String,
    pub dir: PathBuf,
    /// On the second bridge (`Layout::second_network`).
    #[serde(default)]
    pub second: bool,
}

/// Inputs of [`Layout::new`] (the parsed `skiff up` options, defaults already applied).
#[derive(Debug, Clone)]
pub struct LayoutInput<'a> {
    pub name: &'a str,
    pub nodes: u32,
    pub data_dir: Option<&'a Path>,
    pub node_network: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub overlay: Overlay,
    pub encapsulation: Encapsulation,
    pub bgp_hold_time: u16,
    pub second_network: Option<Ipv4Net>,
    pub lb_pool: &'a str,
    pub api_port: u16,
}

/// Cluster names become parts of interface, namespace and file names: keep them DNS-label-like and short.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOption(format!(
            "cluster name {name:?}: must be 1-32 characters of a-z, 0-9 and '-', starting and ending alphanumeric"
        )))
    }
}

/// Default data directory of a cluster.
pub fn default_data_dir(name: &str) -> PathBuf {
    PathBuf::from("/var/lib/skiff").join(name)
}

/// The host bridge of a cluster: `skiff0` for the default cluster `skiff`, `sk-<name>` when that fits in an
/// interface name, otherwise `sk-` and a hash of the name.
pub fn bridge_name(name: &str) -> String {
    if name == "skiff" {
        return "skiff0".to_string();
    }
    let plain = format!("sk-{name}");
    if plain.len() <= IFNAME_MAX {
        plain
    } else {
        format!("sk-{:08x}", fnv1a(name) as u32)
    }
}

/// The host end of node `index`'s veth: `<bridge>-n<index>` when it fits, else a hash-derived name.
pub fn host_veth_name(bridge: &str, index: u32) -> String {
    let plain = format!("{bridge}-n{index}");
    if plain.len() <= IFNAME_MAX {
        plain
    } else {
        format!("skv{:08x}n{index}", fnv1a(bridge) as u32)
    }
}

/// Every network namespace of a cluster (its nodes', and pod namespaces that agents name with the node
/// namespace as prefix) starts with this.
pub fn netns_prefix(name: &str) -> String {
    format!("skiff-{name}-")
}

pub fn node_netns(name: &str, index: u32) -> String {
    format!("{}node-{index}", netns_prefix(name))
}

/// Registry entry that lets `skiff down --name X` find a cluster whose data dir was not the default.
pub fn registry_file(name: &str) -> PathBuf {
    PathBuf::from("/run/skiff").join(format!("{name}.json"))
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Address `n` of `net` (0 = network address).
fn nth(net: Ipv4Net, n: u32) -> Result<Ipv4Addr, Error> {
    let base = u32::from(net.network());
    let size = 1u64 << (32 - net.prefix_len());
    if u64::from(n) + 1 >= size {
        return Err(Error::InvalidOption(format!(
            "node network {net} has no room for address #{n}"
        )));
    }
    Ok(Ipv4Addr::from(base + n))
}

impl Layout {
    pub fn new(input: &LayoutInput<'_>) -> Result<Layout, Error> {
        validate_name(input.name)?;
        if input.nodes == 0 {
            return Err(Error::InvalidOption("--nodes must be at least 1".into()));
        }
        let net = input.node_network.trunc();
        let data_dir = input
            .data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| default_data_dir(input.name));
        let bridge = bridge_name(input.name);
        let bridge_ip = nth(net, 1)?;
        let second_network = input.second_network.map(|n| n.trunc());
        if let Some(second) = second_network {
            if second.contains(&net.network()) || net.contains(&second.network()) {
                return Err(Error::InvalidOption(format!(
                    "--second-node-network {second} overlaps the node network {net}"
                )));
            }
        }
        let nodes = (1..=input.nodes)
            .map(|i| {
                let second = second_network.filter(|_| i % 2 == 0);
                Ok(NodeLayout {
                    index: i,
                    name: format!("node-{i}"),
                    netns: node_netns(input.name, i),
                    ip: nth(second.unwrap_or(net), 1 + i)?,
                    host_veth: host_veth_name(&bridge, i),
                    dir: data_dir.join("nodes").join(i.to_string()),
                    second: second.is_some(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Layout {
            name: input.name.to_string(),
            data_dir,
            bridge,
            node_network: net,
            bridge_ip,
            cluster_cidr: input.cluster_cidr,
            service_cidr: input.service_cidr,
            overlay: input.overlay,
            encapsulation: input.encapsulation,
            bgp_hold_time: input.bgp_hold_time,
            second_network,
            lb_pool: input.lb_pool.to_string(),
            api_port: input.api_port,
            nodes,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("cluster.json")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn server_dir(&self) -> PathBuf {
        self.data_dir.join("server")
    }
    pub fn server_pid_file(&self) -> PathBuf {
        self.run_dir().join("server.pid")
    }
    pub fn server_log(&self) -> PathBuf {
        self.logs_dir().join("server.log")
    }
    /// The kubeconfig users (and the host) use.
    pub fn kubeconfig(&self) -> PathBuf {
        self.server_dir().join("kubeconfig")
    }
    /// The kubeconfig components inside node namespaces use (the server at the bridge address).
    pub fn internal_kubeconfig(&self) -> PathBuf {
        self.server_dir().join("kubeconfig.internal")
    }
    pub fn agent_pid_file(&self, node: &NodeLayout) -> PathBuf {
        self.run_dir().join(format!("{}.pid", node.name))
    }
    pub fn agent_log(&self, node: &NodeLayout) -> PathBuf {
        self.logs_dir().join(format!("{}.log", node.name))
    }
    pub fn netns_prefix(&self) -> String {
        netns_prefix(&self.name)
    }
    pub fn api_url(&self) -> String {
        format!("https://{}:{}", self.bridge_ip, self.api_port)
    }

    /// `skiff server` arguments (after the executable).
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "server".into(),
            "--data-dir".into(),
            self.server_dir().display().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{}", self.api_port),
            "--advertise-address".into(),
            self.bridge_ip.to_string(),
            "--service-cidr".into(),
            self.service_cidr.to_string(),
            "--cluster-cidr".into(),
            self.cluster_cidr.to_string(),
            "--load-balancer-pool".into(),
            self.lb_pool.clone(),
        ]
    }

    /// `skiff agent` arguments for one node (after the executable).
    pub fn agent_args(&self, node: &NodeLayout) -> Vec<String> {
        let internal = self.internal_kubeconfig().display().to_string();
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--kubeconfig".into(),
            internal.clone(),
            "--node-name".into(),
            node.name.clone(),
            "--node-ip".into(),
            node.ip.to_string(),
            "--data-dir".into(),
            self.node_state_dir(node).display().to_string(),
            "--cni-conf-dir".into(),
            node.dir.join("cni/net.d").display().to_string(),
            "--cni-bin-dir".into(),
            node.dir.join("cni/bin").display().to_string(),
            "--cni-bin-dir".into(),
            "/usr/lib/cni".into(),
            "--internal-kubeconfig".into(),
            internal,
            "--cluster-dns".into(),
            self.dns_ip().to_string(),
        ];
        match self.overlay {
            Overlay::Vxlan | Overlay::HostGw => {
                args.extend(["--overlay-mode".into(), self.overlay.as_str().into()])
            }
            // The host is every node's external peer: it learns pod CIDRs and service addresses.
            Overlay::Bgp => args.extend([
                "--backend".into(),
                "bgp".into(),
                "--encapsulation".into(),
                self.encapsulation.to_string(),
                "--bgp-peer".into(),
                self.node_gateway(node).to_string(),
                "--bgp-hold-time".into(),
                self.bgp_hold_time.to_string(),
                "--bgp-service-cidr".into(),
                self.service_cidr.to_string(),
            ]),
        }
        args.extend([
            "--cluster-cidr".into(),
            self.cluster_cidr.to_string(),
            "--proxy-cluster-cidr".into(),
            self.cluster_cidr.to_string(),
            "--proxy-service-cidr".into(),
            self.service_cidr.to_string(),
        ]);
        args
    }

    /// The second host bridge (with `second_network`): the bridge's name and a `b`, or a hash-derived name.
    pub fn second_bridge(&self) -> Option<String> {
        self.second_network?;
        Some(if self.bridge.len() < IFNAME_MAX {
            format!("{}b", self.bridge)
        } else {
            format!("sk-{:08x}b", fnv1a(&self.name) as u32)
        })
    }
    /// The host's address on the second bridge.
    pub fn second_bridge_ip(&self) -> Option<Ipv4Addr> {
        self.second_network.and_then(|n| nth(n, 1).ok())
    }
    /// The node's subnet on its bridge and its default gateway (the host's address on that bridge).
    pub fn node_subnet(&self, node: &NodeLayout) -> Ipv4Net {
        match (node.second, self.second_network) {
            (true, Some(n)) => n,
            _ => self.node_network,
        }
    }
    pub fn node_gateway(&self, node: &NodeLayout) -> Ipv4Addr {
        match (node.second, self.second_bridge_ip()) {
            (true, Some(ip)) => ip,
            _ => self.bridge_ip,
        }
    }

    /// The host's BIRD (bgp backend): configuration, control socket, pid file and log.
    pub fn host_bird_dir(&self) -> PathBuf {
        self.data_dir.join("host-bird")
    }
    pub fn host_bird_pid_file(&self) -> PathBuf {
        self.run_dir().join("bird-host.pid")
    }
    pub fn host_bird_log(&self) -> PathBuf {
        self.logs_dir().join("bird-host.log")
    }
    /// A node's BIRD control socket (where its agent runs BIRD).
    pub fn node_bird_socket(&self, node: &NodeLayout) -> PathBuf {
        skiff_cni::bgp::bird_dir(&self.node_state_dir(node)).join("bird.ctl")
    }
    /// The host routing table the host's BIRD installs learned routes into: one per cluster, so two
    /// clusters' BIRDs never remove each other's routes; an `ip rule` of priority [`HOST_RULE_PRIORITY`] looks
    /// it up before `main`.
    pub fn host_route_table(&self) -> u32 {
        20000 + (fnv1a(&self.name) % 40000) as u32
    }

    /// The cluster DNS Service address: the tenth address of the service range, as kubeadm picks it
    /// (10.96.0.10 for the default range).
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 10)
    }

    /// The agent's data dir (pod records live under `pods/<uid>/state.json`).
    pub fn node_state_dir(&self, node: &NodeLayout) -> PathBuf {
        node.dir.join("state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, nodes: u32) -> LayoutInput<'_> {
        LayoutInput {
            name,
            nodes,
            data_dir: None,
            node_network: "172.30.0.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            overlay: Overlay::Vxlan,
            encapsulation: Encapsulation::None,
            bgp_hold_time: 9,
            second_network: None,
            lb_pool: "172.30.0.200-172.30.0.250",
            api_port: 6443,
        }
    }

    #[test]
    fn default_cluster_layout() {
        let l = Layout::new(&input("skiff", 3)).unwrap();
        assert_eq!(l.bridge, "skiff0");
        assert_eq!(l.bridge_ip.to_string(), "172.30.0.1");
        assert_eq!(l.data_dir, PathBuf::from("/var/lib/skiff/skiff"));
        let nodes: Vec<String> = l
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} {} {} {} {}",
                    n.name,
                    n.netns,
                    n.ip,
                    n.host_veth,
                    n.dir.display()
                )
            })
            .collect();
        assert_eq!(
            nodes,
            [
                "node-1 skiff-skiff-node-1 172.30.0.2 skiff0-n1 /var/lib/skiff/skiff/nodes/1",
                "node-2 skiff-skiff-node-2 172.30.0.3 skiff0-n2 /var/lib/skiff/skiff/nodes/2",
                "node-3 skiff-skiff-node-3 172.30.0.4 skiff0-n3 /var/lib/skiff/skiff/nodes/3",
            ]
        );
        assert_eq!(l.api_url(), "https://172.30.0.1:6443");
        assert_eq!(
            l.server_args().join(" "),
            "server --data-dir /var/lib/skiff/skiff/server --listen 0.0.0.0:6443 \
             --advertise-address 172.30.0.1 --service-cidr 10.96.0.0/12 --cluster-cidr 10.244.0.0/16 \
             --load-balancer-pool 172.30.0.200-172.30.0.250"
        );
        assert_eq!(
            l.agent_args(&l.nodes[1]).join(" "),
            "agent --kubeconfig /var/lib/skiff/skiff/server/kubeconfig.internal --node-name node-2 \
             --node-ip 172.30.0.3 --data-dir /var/lib/skiff/skiff/nodes/2/state \
             --cni-conf-dir /var/lib/skiff/skiff/nodes/2/cni/net.d \
             --cni-bin-dir /var/lib/skiff/skiff/nodes/2/cni/bin --cni-bin-dir /usr/lib/cni \
             --internal-kubeconfig /var/lib/skiff/skiff/server/kubeconfig.internal --cluster-dns 10.96.0.10 \
             --overlay-mode vxlan --cluster-cidr 10.244.0.0/16 --proxy-cluster-cidr 10.244.0.0/16 \
             --proxy-service-cidr 10.96.0.0/12"
        );
    }

    #[test]
    fn every_second_node_on_the_second_network() {
        let mut i = input("dev", 3);
        i.second_network = Some("172.29.0.0/24".parse().unwrap());
        i.overlay = Overlay::Bgp;
        let l = Layout::new(&i).unwrap();
        let nodes: Vec<String> = l
            .nodes
            .iter()
            .map(|n| format!("{} {} {}", n.name, n.ip, l.node_gateway(n)))
            .collect();
        assert_eq!(
            nodes,
            [
                "node-1 172.30.0.2 172.30.0.1",
                "node-2 172.29.0.3 172.29.0.1",
                "node-3 172.30.0.4 172.30.0.1"
            ]
        );
        assert_eq!(l.second_bridge().as_deref(), Some("sk-devb"));
        assert!(l
            .agent_args(&l.nodes[1])
            .join(" ")
            .contains("--bgp-peer 172.29.0.1 "));
        i.second_network = Some("172.30.0.0/16".parse().unwrap());
        assert!(Layout::new(&i).is_err());
    }

    #[test]
    fn long_names_are_hashed_into_interface_names() {
        assert_eq!(bridge_name("dev"), "sk-dev");
        assert_eq!(
            bridge_name("e2e-123456-abcd"),
            format!("sk-{:08x}", fnv1a("e2e-123456-abcd") as u32)
        );
        assert!(bridge_name("e2e-123456-abcd").len() <= IFNAME_MAX);
        let v = host_veth_name("sk-0123abcd", 12);
        assert!(v.len() <= IFNAME_MAX, "{v}");
        assert_eq!(host_veth_name("sk-dev", 2), "sk-dev-n2");
    }

    #[test]
    fn rejects_bad_names_and_full_networks() {
        assert!(matches!(
            Layout::new(&input("Bad_Name", 3)),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            Layout::new(&input("x", 0)),
            Err(Error::InvalidOption(_))
        ));
        let mut small = input("x", 3);
        small.node_network = "172.30.0.0/30".parse().unwrap();
        let err = Layout::new(&small).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid option: node network 172.30.0.0/30 has no room for address #3"
        );
    }
}
