//! BIRD 2 configuration, rendered from what the Node objects say (pure; cannot fail).
//!
//! The shape follows Calico's confd templates for BIRD: a full iBGP mesh between nodes (one `bgp` protocol per
//! other node), optional external peers, this node's pod CIDR exported as one aggregated route (a static
//! blackhole that lives in BIRD only, as Calico's block), and a kernel protocol that installs what BGP learned
//! (`proto bird`, equal paths merged into ECMP routes). Nothing is ever exported to the kernel except
//! BGP-learned routes, so BIRD cannot overwrite the node's own pod routes.
//!
//! Encapsulation differs from Calico's: Calico's BIRD fork has a `krt_tunnel` attribute for IP-in-IP; upstream
//! BIRD 2 cannot point a BGP route at a tunnel device from a filter (setting `ifname` drops the gateway). Here
//! a peer whose traffic is encapsulated gets `gateway recursive` against a small table `skiff_tunnel` that
//! holds one static `onlink` next hop per peer through the tunnel device; BIRD's recursive resolution then
//! installs `<podCIDR> via <next hop> dev <tunnel> onlink proto bird`, per peer, so cross-subnet modes need no
//! filter logic at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// The IP-in-IP fallback device the kernel creates in every network namespace once `ipip` is loaded.
pub const IPIP_DEVICE: &str = "tunl0";
/// MTU of IP-in-IP: 20 bytes of outer IPv4 header.
pub const IPIP_MTU: u32 = 1480;
/// Calico's default AS number (a private one, RFC 6996).
pub const DEFAULT_AS: u32 = 64512;

/// How pod traffic between two nodes travels: Calico's `ipipMode` / `vxlanMode` (Never, Always, CrossSubnet).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Encapsulation {
    /// Plain routes via the other node's address (its pod CIDR is routed, not tunnelled).
    #[default]
    None,
    /// IP-in-IP to every other node through `tunl0`.
    Ipip,
    /// IP-in-IP only to nodes on another subnet; plain routes on the same subnet.
    IpipCrossSubnet,
    /// VXLAN to every other node through `skiff.vxlan` (the VXLAN backend's device, neighbours and FDB).
    Vxlan,
    /// VXLAN only to nodes on another subnet.
    VxlanCrossSubnet,
}

/// A tunnel device that encapsulated routes point through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Ipip,
    Vxlan,
}

impl Encapsulation {
    pub fn tunnel(self) -> Option<Tunnel> {
        match self {
            Encapsulation::None => None,
            Encapsulation::Ipip | Encapsulation::IpipCrossSubnet => Some(Tunnel::Ipip),
            Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet => Some(Tunnel::Vxlan),
        }
    }

    /// Whether traffic to a node at `peer` is encapsulated, given this node's own subnet.
    pub fn encapsulates(self, local_subnet: Ipv4Net, peer: Ipv4Addr) -> bool {
        match self {
            Encapsulation::None => false,
            Encapsulation::Ipip | Encapsulation::Vxlan => true,
            Encapsulation::IpipCrossSubnet | Encapsulation::VxlanCrossSubnet => {
                !local_subnet.contains(&peer)
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encapsulation::None => "none",
            Encapsulation::Ipip => "ipip",
            Encapsulation::IpipCrossSubnet => "ipip-cross-subnet",
            Encapsulation::Vxlan => "vxlan",
            Encapsulation::VxlanCrossSubnet => "vxlan-cross-subnet",
        }
    }
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Tunnel {
    pub fn device(self) -> &'static str {
        match self {
            Tunnel::Ipip => IPIP_DEVICE,
            Tunnel::Vxlan => crate::overlay::VXLAN_DEVICE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid AS number {input:?}: {reason}")]
    As { input: String, reason: String },
    #[error("invalid BGP peer {input:?}: {reason}")]
    Peer { input: String, reason: String },
    #[error("invalid BGP timers: {0}")]
    Timers(String),
}

/// A 4-byte AS number (RFC 6793) that may be used on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Asn(u32);

impl Asn {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn new(n: u32) -> Result<Asn, ConfigError> {
        let reason = match n {
            0 => Some("AS 0 is reserved (RFC 7607)"),
            23456 => {
                Some("AS 23456 is AS_TRANS, only a placeholder for 4-byte AS numbers (RFC 6793)")
            }
            65535 | 4294967295 => Some("the last AS number of each range is reserved (RFC 7300)"),
            _ => None,
        };
        match reason {
            Some(r) => Err(ConfigError::As {
                input: n.to_string(),
                reason: r.into(),
            }),
            None => Ok(Asn(n)),
        }
    }
}

impl Default for Asn {
    fn default() -> Asn {
        Asn(DEFAULT_AS)
    }
}

impl FromStr for Asn {
    type Err = ConfigError;
    /// A plain number, or the `high.low` notation of RFC 5396.
    fn from_str(s: &str) -> Result<Asn, ConfigError> {
        let bad = |reason: &str| ConfigError::As {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let n = match s.split_once('.') {
            Some((hi, lo)) => {
                let hi: u16 = hi
                    .parse()
                    .map_err(|_| bad("each half of high.low must be 0-65535"))?;
                let lo: u16 = lo
                    .parse()
                    .map_err(|_| bad("each half of high.low must be 0-65535"))?;
                (u32::from(hi) << 16) | u32::from(lo)
            }
            None => s
                .parse::<u32>()
                .map_err(|_| bad("must be a number from 1 to 4294967294"))?,
        };
        Asn::new(n).map_err(|e| match e {
            ConfigError::As { reason, .. } => bad(&reason),
            other => other,
        })
    }
}

impl std::fmt::Display for Asn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether `ip` can be a BGP neighbour at all (unicast, not this host's loopback or wildcard).
pub fn check_peer_address(ip: Ipv4Addr) -> Result<(), String> {
    if ip.is_unspecified() {
        Err("0.0.0.0 is not a neighbour address".into())
    } else if ip.is_loopback() {
        Err("a loopback address is this node itself".into())
    } else if ip.is_multicast() || ip.is_broadcast() {
        Err("a BGP neighbour must be a unicast address".into())
    } else if ip.octets()[0] == 0 || ip.octets()[0] >= 240 {
        Err("reserved address range".into())
    } else {
        Ok(())
    }
}

/// A BGP peer outside the node mesh (a router, or the host in `skiff up`): `IP` (same AS as the nodes) or
/// `IP@AS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExternalPeer {
    pub ip: Ipv4Addr,
    pub asn: Option<Asn>,
}

impl FromStr for ExternalPeer {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<ExternalPeer, ConfigError> {
        let bad = |reason: String| ConfigError::Peer {
            input: s.to_string(),
            reason,
        };
        let (ip, asn) = match s.split_once('@') {
            Some((ip, asn)) => (
                ip,
                Some(asn.parse::<Asn>().map_err(|e| bad(e.to_string()))?),
            ),
            None => (s, None),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad(format!("{ip:?} is not an IPv4 address (IP or IP@AS)")))?;
        check_peer_address(ip).map_err(bad)?;
        Ok(ExternalPeer { ip, asn })
    }
}

/// BGP timers in seconds (RFC 4271: hold time 0 or at least 3; keepalive below hold time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub hold: u16,
    pub keepalive: u16,
    pub connect_retry: u16,
}

impl Default for Timers {
    /// Short enough that a stopped node is withdrawn within seconds on a small cluster network.
    fn default() -> Timers {
        Timers {
            hold: 9,
            keepalive: 3,
            connect_retry: 1,
        }
    }
}

impl Timers {
    pub fn new(
        hold: u16,
        keepalive: Option<u16>,
        connect_retry: u16,
    ) -> Result<Timers, ConfigError> {
        if hold != 0 && hold < 3 {
            return Err(ConfigError::Timers(format!(
                "hold time {hold}s: must be 0 or at least 3 seconds (RFC 4271)"
            )));
        }
        let keepalive = keepalive.unwrap_or(hold / 3);
        if hold != 0 && (keepalive == 0 || keepalive >= hold) {
            return Err(ConfigError::Timers(format!(
                "keepalive time {keepalive}s: must be at least 1 second and below the hold time {hold}s"
            )));
        }
        if connect_retry == 0 {
            return Err(ConfigError::Timers(
                "connect retry time must be at least 1 second".into(),
            ));
        }
        Ok(Timers {
            hold,
            keepalive,
            connect_retry,
        })
    }
}

/// Another node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The peer's VXLAN endpoint address (its pod CIDR's network address), once it has published a VTEP MAC.
    pub vtep: Option<Ipv4Addr>,
}

/// Everything one node's BIRD configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBird {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The subnet of the node's uplink (which peers are on the same L2 segment).
    pub local_subnet: Ipv4Net,
    pub local_as: Asn,
    /// None until the node IPAM controller assigned one: nothing is exported then.
    pub pod_cidr: Option<Ipv4Net>,
    pub cluster_cidr: Ipv4Net,
    pub encapsulation: Encapsulation,
    pub timers: Timers,
    /// Calico's nodeToNodeMeshEnabled.
    pub mesh: bool,
    pub mesh_peers: Vec<MeshPeer>,
    pub external_peers: Vec<ExternalPeer>,
    /// What external peers also learn from this node: the service CIDR, LoadBalancer and external IPs.
    pub service_routes: BTreeSet<Ipv4Net>,
}

/// A BIRD symbol from an address: `mesh_172_30_0_3`.
fn symbol(prefix: &str, ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{prefix}_{}_{}_{}_{}", o[0], o[1], o[2], o[3])
}

/// Text safe inside a BIRD string literal (node names are DNS subdomains; this guards the rest).
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ' ' | '/'))
        .collect();
    format!("\"{clean}\"")
}

/// The mesh peers to configure: not this node, one per address (the lexically first name wins), ordered by
/// address so the output does not depend on list order; addresses also given as external peers are left to
/// those.
fn mesh_peers(cfg: &NodeBird) -> BTreeMap<Ipv4Addr, &MeshPeer> {
    let mut by_ip: BTreeMap<Ipv4Addr, &MeshPeer> = BTreeMap::new();
    if !cfg.mesh {
        return by_ip;
    }
    for p in &cfg.mesh_peers {
        if p.name == cfg.node_name
            || p.ip == cfg.node_ip
            || check_peer_address(p.ip).is_err()
            || cfg.external_peers.iter().any(|e| e.ip == p.ip)
        {
            continue;
        }
        match by_ip.get(&p.ip) {
            Some(existing) if existing.name <= p.name => {}
            _ => {
                by_ip.insert(p.ip, p);
            }
        }
    }
    by_ip
}

fn external_peers(cfg: &NodeBird) -> BTreeMap<Ipv4Addr, ExternalPeer> {
    cfg.external_peers
        .iter()
        .filter(|p| p.ip != cfg.node_ip)
        .map(|p| (p.ip, *p))
        .collect()
}

/// The node's BIRD configuration.
pub fn render(cfg: &NodeBird) -> String {
    let mesh = mesh_peers(cfg);
    let external = external_peers(cfg);
    let cluster = cfg.cluster_cidr.trunc();
    let t = cfg.timers;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# BIRD configuration of node {}, written by skiff agent (backend bgp, encapsulation {}).\n\
         # Rendered from the Node objects and rewritten on every change: do not edit.\n\
         log stderr all;\n\
         router id {};\n\
         timeformat protocol iso long;\n",
        quoted(&cfg.node_name),
        cfg.encapsulation,
        cfg.node_ip
    );
    let _ = writeln!(w, "protocol device {{\n\tscan time 10;\n}}\n");
    let _ = writeln!(
        w,
        "# Connected subnets: next hops of peers on other subnets resolve through them. Single addresses\n\
         # (pod gateways, a LoadBalancer address on the uplink) would shadow the routes announced here.\n\
         protocol direct skiff_direct {{\n\tipv4 {{ import where net.len < 32; }};\n}}\n"
    );
    let _ = writeln!(
        w,
        "# This node's pod CIDR as one aggregated route (a Calico block). It stays in BIRD: the pods' own\n\
         # /32 routes are the CNI plugin's.\n\
         protocol static skiff_pods {{\n\tipv4;"
    );
    if let Some(cidr) = cfg.pod_cidr {
        let _ = writeln!(w, "\troute {} blackhole;", cidr.trunc());
    }
    let _ = writeln!(w, "}}\n");
    if !external.is_empty() {
        let _ = writeln!(
            w,
            "# Announced to external peers only: the service CIDR, LoadBalancer and external IPs.\n\
             protocol static skiff_services {{\n\tipv4;"
        );
        for net in &cfg.service_routes {
            let _ = writeln!(w, "\troute {} blackhole;", net.trunc());
        }
        let _ = writeln!(w, "}}\n");
    }
    let tunnelled: Vec<(&Ipv4Addr, &&MeshPeer)> = mesh
        .iter()
        .filter(|(ip, _)| cfg.encapsulation.encapsulates(cfg.local_subnet, **ip))
        .collect();
    if let Some(tunnel) = cfg.encapsulation.tunnel() {
        let dev = tunnel.device();
        let _ = writeln!(
            w,
            "# Next hops through {dev}: a route learned from a peer listed here resolves to `via <gw> dev {dev}\n\
             # onlink`.\n\
             ipv4 table skiff_tunnel;\n\
             protocol static skiff_tunnel_nh {{\n\tipv4 {{ table skiff_tunnel; }};"
        );
        for (ip, peer) in &tunnelled {
            let gw = match tunnel {
                Tunnel::Ipip => Some(**ip),
                Tunnel::Vxlan => peer.vtep,
            };
            match gw {
                Some(gw) => {
                    // Quoted: `skiff.vxlan` is not a plain BIRD symbol.
                    let _ = writeln!(w, "\troute {ip}/32 via {gw}%'{dev}' onlink;");
                }
                None => {
                    let _ = writeln!(
                        w,
                        "\t# {ip} ({}): no VXLAN endpoint published yet",
                        peer.name
                    );
                }
            }
        }
        let _ = writeln!(w, "}}\n");
    }
    let _ = writeln!(
        w,
        "# What BGP learned goes into the kernel (proto bird); equal paths become one ECMP route. Routes the\n\
         # kernel has from elsewhere (the default route) are learned only to resolve next hops.\n\
         protocol kernel skiff_kernel {{\n\
         \tipv4 {{\n\
         \t\timport filter {{ if net ~ [ {cluster}+ ] then reject; accept; }};\n\
         \t\texport where source = RTS_BGP;\n\
         \t}};\n\
         \tlearn;\n\
         \tmerge paths on;\n\
         }}\n"
    );
    let _ = writeln!(
        w,
        "filter skiff_mesh_import {{\n\
         \tif net ~ [ {cluster}{{{},32}} ] then accept;\n\
         \treject;\n\
         }}\n\
         filter skiff_mesh_export {{\n\
         \tif proto = \"skiff_pods\" then accept;\n\
         \treject;\n\
         }}\n\
         filter skiff_external_export {{\n\
         \tif proto = \"skiff_pods\" || proto = \"skiff_services\" then accept;\n\
         \treject;\n\
         }}\n",
        cluster.prefix_len()
    );
    let _ = writeln!(
        w,
        "template bgp skiff_peer {{\n\
         \tlocal {} as {};\n\
         \thold time {};\n\
         \tkeepalive time {};\n\
         \tconnect delay time 1;\n\
         \tconnect retry time {};\n\
         \terror wait time 1, 10;\n\
         }}\n",
        cfg.node_ip, cfg.local_as, t.hold, t.keepalive, t.connect_retry
    );
    for (ip, peer) in &mesh {
        let same_subnet = cfg.local_subnet.contains(ip);
        let encap = cfg.encapsulation.encapsulates(cfg.local_subnet, *ip);
        let _ = writeln!(
            w,
            "protocol bgp {} from skiff_peer {{\n\
             \tdescription {};\n\
             \tneighbor {ip} as {};\n\
             \t{};\n\
             \tipv4 {{\n\
             \t\timport filter skiff_mesh_import;\n\
             \t\texport filter skiff_mesh_export;\n\
             \t\tnext hop self;\n\
             \t\t{};\n\
             \t}};\n\
             }}\n",
            symbol("mesh", *ip),
            quoted(&format!("node {}", peer.name)),
            cfg.local_as,
            if same_subnet { "direct" } else { "multihop" },
            if encap {
                "gateway recursive;\n\t\tigp table skiff_tunnel"
            } else if same_subnet {
                "gateway direct"
            } else {
                "gateway recursive"
            }
        );
    }
    for (ip, peer) in &external {
        let same_subnet = cfg.local_subnet.contains(ip);
        let _ = writeln!(
            w,
            "protocol bgp {} from skiff_peer {{\n\
             \tdescription \"external peer\";\n\
             \tneighbor {ip} as {};\n\
             \t{};\n\
             \tipv4 {{\n\
             \t\timport none;\n\
             \t\texport filter skiff_external_export;\n\
             \t\tnext hop self;\n\
             \t}};\n\
             }}\n",
            symbol("peer", *ip),
            peer.asn.unwrap_or(cfg.local_as),
            if same_subnet { "direct" } else { "multihop" },
        );
    }
    out
}

/// The host's BIRD in `skiff up --backend bgp`: the external peer of every node, accepting sessions from the
/// whole node network (BIRD's dynamic BGP, so a new node needs no reconfiguration) and installing the learned
/// pod CIDRs, service CIDR and LoadBalancer addresses into a routing table of the cluster's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBird {
    pub cluster: String,
    pub router_id: Ipv4Addr,
    /// The node networks, each with the host's address on it (BGP sessions are bound to it).
    pub node_networks: Vec<(Ipv4Addr, Ipv4Net)>,
    pub local_as: Asn,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub kernel_table: u32,
    pub timers: Timers,
}

pub fn render_host(cfg: &HostBird) -> String {
    let t = cfg.timers;
    let cluster = cfg.cluster_cidr.trunc();
    let services = cfg.service_cidr.trunc();
    let mut out = format!(
        "# BIRD configuration of the host of cluster {}, written by skiff up (backend bgp): the external BGP\n\
         # peer of every node. Learned routes go to kernel table {} (an `ip rule` looks it up first).\n\
         log stderr all;\n\
         router id {};\n\
         timeformat protocol iso long;\n\
         \n\
         protocol device {{\n\tscan time 10;\n}}\n\
         \n\
         protocol kernel skiff_kernel {{\n\
         \tkernel table {};\n\
         \tipv4 {{\n\
         \t\timport none;\n\
         \t\texport where source = RTS_BGP;\n\
         \t}};\n\
         \tmerge paths on;\n\
         }}\n\
         \n\
         # Pod CIDRs, the service CIDR and single addresses (LoadBalancer, external IPs); nothing else.\n\
         filter skiff_nodes_import {{\n\
         \tif net ~ [ {cluster}{{{},32}}, {services}{{{},32}} ] then accept;\n\
         \tif net.len = 32 && !(net ~ [ {}/32 ]) then accept;\n\
         \treject;\n\
         }}\n",
        quoted(&cfg.cluster),
        cfg.kernel_table,
        cfg.router_id,
        cfg.kernel_table,
        cluster.prefix_len(),
        services.prefix_len(),
        cfg.router_id,
    );
    for (k, (local, network)) in cfg.node_networks.iter().enumerate() {
        let (name, dynamic) = if k == 0 {
            ("skiff_nodes".to_string(), "node_".to_string())
        } else {
            (
                format!("skiff_nodes_{}", k + 1),
                format!("net{}_node_", k + 1),
            )
        };
        let _ = write!(
            out,
            "\n\
             protocol bgp {name} {{\n\
             \tdescription {};\n\
             \tlocal {local} as {};\n\
             \tneighbor range {} as {};\n\
             \tdynamic name \"{dynamic}\";\n\
             \tstrict bind yes;\n\
             \tdirect;\n\
             \thold time {};\n\
             \tkeepalive time {};\n\
             \tipv4 {{\n\
             \t\timport filter skiff_nodes_import;\n\
             \t\texport none;\n\
             \t\tgateway direct;\n\
             \t}};\n\
             }}\n",
            quoted(&format!(
                "nodes of cluster {} on {}",
                cfg.cluster,
                network.trunc()
            )),
            cfg.local_as,
            network.trunc(),
            cfg.local_as,
            t.hold,
            t.keepalive,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(encapsulation: Encapsulation) -> NodeBird {
        NodeBird {
            node_name: "node-1".into(),
            node_ip: Ipv4Addr::new(172, 30, 0, 2),
            local_subnet: "172.30.0.0/24".parse().unwrap(),
            local_as: Asn::default(),
            pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            encapsulation,
            timers: Timers::default(),
            mesh: true,
            mesh_peers: vec![
                MeshPeer {
                    name: "node-3".into(),
                    ip: Ipv4Addr::new(172, 30, 1, 4),
                    vtep: Some(Ipv4Addr::new(10, 244, 2, 0)),
                },
                MeshPeer {
                    name: "node-1".into(),
                    ip: Ipv4Addr::new(172, 30, 0, 2),
                    vtep: None,
                },
                MeshPeer {
                    name: "node-2".into(),
                    ip: Ipv4Addr::new(172, 30, 0, 3),
                    vtep: None,
                },
            ],
            external_peers: vec![ExternalPeer {
                ip: Ipv4Addr::new(172, 30, 0, 1),
                asn: None,
            }],
            service_routes: ["10.96.0.0/12", "172.30.0.200/32"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
        }
    }

    /// The peer protocols of a rendered configuration, without the fixed preamble.
    fn protocols(text: &str) -> String {
        text[text.find("protocol bgp ").unwrap()..].to_string()
    }

    #[test]
    fn full_mesh_golden() {
        let text = render(&node(Encapsulation::None));
        assert_eq!(
            text,
            r#"# BIRD configuration of node "node-1", written by skiff agent (backend bgp, encapsulation none).
# Rendered from the Node objects and rewritten on every change: do not edit.
log stderr all;
router id 172.30.0.2;
timeformat protocol iso long;

protocol device {
	scan time 10;
}

# Connected subnets: next hops of peers on other subnets resolve through them. Single addresses
# (pod gateways, a LoadBalancer address on the uplink) would shadow the routes announced here.
protocol direct skiff_direct {
	ipv4 { import where net.len < 32; };
}

# This node's pod CIDR as one aggregated route (a Calico block). It stays in BIRD: the pods' own
# /32 routes are the CNI plugin's.
protocol static skiff_pods {
	ipv4;
	route 10.244.0.0/24 blackhole;
}

# Announced to external peers only: the service CIDR, LoadBalancer and external IPs.
protocol static skiff_services {
	ipv4;
	route 10.96.0.0/12 blackhole;
	route 172.30.0.200/32 blackhole;
}

# What BGP learned goes into the kernel (proto bird); equal paths become one ECMP route. Routes the
# kernel has from elsewhere (the default route) are learned only to resolve next hops.
protocol kernel skiff_kernel {
	ipv4 {
		import filter { if net ~ [ 10.244.0.0/16+ ] then reject; accept; };
		export where source = RTS_BGP;
	};
	learn;
	merge paths on;
}

filter skiff_mesh_import {
	if net ~ [ 10.244.0.0/16{16,32} ] then accept;
	reject;
}
filter skiff_mesh_export {
	if proto = "skiff_pods" then accept;
	reject;
}
filter skiff_external_export {
	if proto = "skiff_pods" || proto = "skiff_services" then accept;
	reject;
}

template bgp skiff_peer {
	local 172.30.0.2 as 64512;
	hold time 9;
	keepalive time 3;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 10;
}

protocol bgp mesh_172_30_0_3 from skiff_peer {
	description "node node-2";
	neighbor 172.30.0.3 as 64512;
	direct;
	ipv4 {
		import filter skiff_mesh_import;
		export filter skiff_mesh_export;
		next hop self;
		gateway direct;
	};
}

protocol bgp mesh_172_30_1_4 from skiff_peer {
	description "node node-3";
	neighbor 172.30.1.4 as 64512;
	multihop;
	ipv4 {
		import filter skiff_mesh_import;
		export filter skiff_mesh_export;
		next hop self;
		gateway recursive;
	};
}

protocol bgp peer_172_30_0_1 from skiff_peer {
	description "external peer";
	neighbor 172.30.0.1 as 64512;
	direct;
	ipv4 {
		import none;
		export filter skiff_external_export;
		next hop self;
	};
}

"#
        );
        // The order of the Node list does not matter.
        let mut reversed = node(Encapsulation::None);
        reversed.mesh_peers.reverse();
        assert_eq!(render(&reversed), text);
    }

    #[test]
    fn ipip_always_and_cross_subnet() {
        let always = render(&node(Encapsulation::Ipip));
        assert!(always.contains(
            "protocol static skiff_tunnel_nh {\n\tipv4 { table skiff_tunnel; };\n\
             \troute 172.30.0.3/32 via 172.30.0.3%'tunl0' onlink;\n\
             \troute 172.30.1.4/32 via 172.30.1.4%'tunl0' onlink;\n}\n"
        ));
        assert_eq!(
            protocols(&always)
                .matches("gateway recursive;\n\t\tigp table skiff_tunnel;")
                .count(),
            2
        );
        let cross = render(&node(Encapsulation::IpipCrossSubnet));
        assert!(cross.contains(
            "protocol static skiff_tunnel_nh {\n\tipv4 { table skiff_tunnel; };\n\
             \troute 172.30.1.4/32 via 172.30.1.4%'tunl0' onlink;\n}\n"
        ));
        // node-2 shares the subnet: a plain route; node-3 does not: through the tunnel.
        let p = protocols(&cross);
        let node2 = &p[..p.find("protocol bgp mesh_172_30_1_4").unwrap()];
        assert!(node2.contains("gateway direct;"), "{node2}");
        let node3 = &p[p.find("protocol bgp mesh_172_30_1_4").unwrap()..];
        assert!(node3.contains("multihop;\n") && node3.contains("igp table skiff_tunnel;"));
    }

    #[test]
    fn vxlan_next_hops_are_the_peers_vteps() {
        let text = render(&node(Encapsulation::Vxlan));
        assert!(text.contains(
            "\t# 172.30.0.3 (node-2): no VXLAN endpoint published yet\n\
             \troute 172.30.1.4/32 via 10.244.2.0%'skiff.vxlan' onlink;\n"
        ));
    }

    #[test]
    fn mesh_off_and_no_pod_cidr_yet() {
        let mut cfg = node(Encapsulation::None);
        cfg.mesh = false;
        cfg.pod_cidr = None;
        let text = render(&cfg);
        assert!(!text.contains("protocol bgp mesh_"));
        assert!(text.contains("protocol bgp peer_172_30_0_1"));
        assert!(text.contains("protocol static skiff_pods {\n\tipv4;\n}\n"));
    }

    #[test]
    fn invalid_as_numbers_and_peers_are_clear_errors() {
        assert_eq!("64512".parse::<Asn>().unwrap().get(), 64512);
        assert_eq!("1.10".parse::<Asn>().unwrap().get(), 65546);
        assert_eq!("4200000000".parse::<Asn>().unwrap().get(), 4_200_000_000);
        let err = |s: &str| s.parse::<Asn>().unwrap_err().to_string();
        assert_eq!(
            err("0"),
            "invalid AS number \"0\": AS 0 is reserved (RFC 7607)"
        );
        assert_eq!(
            err("4294967296"),
            "invalid AS number \"4294967296\": must be a number from 1 to 4294967294"
        );
        assert_eq!(
            err("23456"),
            "invalid AS number \"23456\": AS 23456 is AS_TRANS, only a placeholder for 4-byte AS numbers (RFC 6793)"
        );
        assert_eq!(
            err("-1"),
            "invalid AS number \"-1\": must be a number from 1 to 4294967294"
        );
        let peer = |s: &str| s.parse::<ExternalPeer>().map_err(|e| e.to_string());
        assert_eq!(
            peer("192.0.2.1@64513"),
            Ok(ExternalPeer {
                ip: Ipv4Addr::new(192, 0, 2, 1),
                asn: Some(Asn::new(64513).unwrap())
            })
        );
        assert_eq!(
            peer("300.1.1.1"),
            Err("invalid BGP peer \"300.1.1.1\": \"300.1.1.1\" is not an IPv4 address (IP or IP@AS)".into())
        );
        assert_eq!(
            peer("224.0.0.5"),
            Err("invalid BGP peer \"224.0.0.5\": a BGP neighbour must be a unicast address".into())
        );
        assert_eq!(
            peer("192.0.2.1@0"),
            Err("invalid BGP peer \"192.0.2.1@0\": invalid AS number \"0\": AS 0 is reserved (RFC 7607)".into())
        );
        assert!(Timers::new(2, None, 1).is_err());
        assert!(Timers::new(9, Some(9), 1).is_err());
        assert_eq!(Timers::new(3, None, 1).unwrap().keepalive, 1);
    }

    fn host() -> HostBird {
        HostBird {
            cluster: "skiff".into(),
            router_id: Ipv4Addr::new(172, 30, 0, 1),
            node_networks: vec![(
                Ipv4Addr::new(172, 30, 0, 1),
                "172.30.0.0/24".parse().unwrap(),
            )],
            local_as: Asn::default(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            kernel_table: 20001,
            timers: Timers::default(),
        }
    }

    #[test]
    fn host_golden() {
        let text = render_host(&host());
        let bgp = &text[text.find("filter skiff_nodes_import").unwrap()..];
        assert_eq!(
            bgp,
            r#"filter skiff_nodes_import {
	if net ~ [ 10.244.0.0/16{16,32}, 10.96.0.0/12{12,32} ] then accept;
	if net.len = 32 && !(net ~ [ 172.30.0.1/32 ]) then accept;
	reject;
}

protocol bgp skiff_nodes {
	description "nodes of cluster skiff on 172.30.0.0/24";
	local 172.30.0.1 as 64512;
	neighbor range 172.30.0.0/24 as 64512;
	dynamic name "node_";
	strict bind yes;
	direct;
	hold time 9;
	keepalive time 3;
	ipv4 {
		import filter skiff_nodes_import;
		export none;
		gateway direct;
	};
}
"#
        );
        assert!(text.contains("\tkernel table 20001;\n"));
    }

    /// The real engine accepts every rendered variant (`bird -p` parses a configuration and exits).
    #[test]
    fn bird_parses_every_variant() {
        let bird = std::path::Path::new("/usr/sbin/bird");
        assert!(
            bird.exists(),
            "the tests need Debian's bird2 (.ci/run installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut texts: Vec<(String, String)> = [
            Encapsulation::None,
            Encapsulation::Ipip,
            Encapsulation::IpipCrossSubnet,
            Encapsulation::Vxlan,
            Encapsulation::VxlanCrossSubnet,
        ]
        .iter()
        .map(|e| (e.to_string(), render(&node(*e))))
        .collect();
        let mut bare = node(Encapsulation::None);
        bare.mesh = false;
        bare.external_peers.clear();
        bare.pod_cidr = None;
        texts.push(("bare".into(), render(&bare)));
        texts.push(("host".into(), render_host(&host())));
        let mut two = host();
        two.node_networks.push((
            Ipv4Addr::new(172, 29, 0, 1),
            "172.29.0.0/24".parse().unwrap(),
        ));
        texts.push(("host-two-networks".into(), render_host(&two)));
        for (name, text) in texts {
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new(bird)
                .arg("-p")
                .arg("-c")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
