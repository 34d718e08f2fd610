//! Routes between nodes, kept in step with the Node objects.
//!
//! VXLAN mode works as flannel's vxlan backend: one device `skiff.vxlan` per node (VNI 1, learning off) whose
//! address is the node's podCIDR network address as /32; per remote node a route `<podCIDR> via <remote net
//! addr> dev skiff.vxlan onlink`, a permanent neighbour `<remote net addr> lladdr <remote VTEP MAC>` and an FDB
//! entry `<remote VTEP MAC> dst <remote node IP> self`: no multicast, no learning, no ARP across the overlay.
//! host-gw mode routes `<podCIDR> via <remote node IP>` (nodes share an L2 segment).
//! Pod traffic leaving the cluster's pod CIDR is masqueraded to the node's address (nftables table
//! `skiff-cni`); pod-to-pod traffic keeps its source address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkVxlan};

use crate::nl::{self, NlError, V4Route};

pub const VXLAN_DEVICE: &str = "skiff.vxlan";
pub const VXLAN_VNI: u32 = 1;
/// flannel's (and the Linux kernel's historical) VXLAN port.
pub const VXLAN_PORT: u16 = 8472;
/// MTU of the overlay device and of pods behind it: 1500 minus 50 bytes of VXLAN/UDP/IP/Ethernet headers.
pub const VXLAN_MTU: u32 = 1450;
/// rtm_protocol of the routes this module owns: stale ones are recognised by it and removed.
pub const ROUTE_PROTO: u8 = 0x5f;
/// The nftables table holding the masquerade rule.
pub const NFT_TABLE: &str = "skiff-cni";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Vxlan,
    HostGw,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::HostGw => "host-gw",
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct OverlayOptions {
    /// How pods on different nodes reach each other: a VXLAN overlay, or direct routes via node IPs
    /// (nodes on one L2 segment).
    #[arg(long = "overlay-mode", value_enum, default_value_t = Mode::Vxlan)]
    pub mode: Mode,
    /// The cluster's pod network: traffic from pods to destinations outside it is masqueraded.
    #[arg(long = "cluster-cidr", default_value = skiff_runtime::defaults::CLUSTER_POD_CIDR)]
    pub cluster_cidr: Ipv4Net,
}

/// This node as the overlay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// Another node: from its Node object (InternalIP or the skiff.dev/node-ip annotation, spec.podCIDR, and the
/// skiff.dev/vtep-mac annotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OverlayRoute {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    /// Through the VXLAN device (onlink), else through whatever reaches `via`.
    pub vxlan: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// What the kernel should hold for the current set of nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OverlayState {
    pub routes: BTreeSet<OverlayRoute>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
}

/// The desired kernel state: one entry set per usable remote node. Peers that are this node, share its
/// address or podCIDR, or (in VXLAN mode) have not published a VTEP MAC yet are skipped; when two peers claim
/// the same podCIDR the lexically first name wins so the result does not depend on list order.
pub fn desired(local: &LocalNode, peers: &[Peer], mode: Mode) -> OverlayState {
    let mut by_cidr: BTreeMap<Ipv4Net, &Peer> = BTreeMap::new();
    for peer in peers {
        let cidr = peer.pod_cidr.trunc();
        if peer.name == local.name
            || peer.node_ip == local.node_ip
            || cidr.contains(&local.pod_cidr.network())
        {
            continue;
        }
        if mode == Mode::Vxlan && peer.vtep_mac.is_none() {
            continue;
        }
        match by_cidr.get(&cidr) {
            Some(existing) if existing.name <= peer.name => {}
            _ => {
                by_cidr.insert(cidr, peer);
            }
        }
    }
    let mut state = OverlayState::default();
    for (cidr, peer) in by_cidr {
        match (mode, peer.vtep_mac) {
            (Mode::Vxlan, Some(mac)) => {
                state.routes.insert(OverlayRoute {
                    dst: cidr,
                    via: cidr.network(),
                    vxlan: true,
                });
                state.neighbours.insert(Neighbour {
                    ip: cidr.network(),
                    mac,
                });
                state.fdb.insert(FdbEntry {
                    mac,
                    dst: peer.node_ip,
                });
            }
            (Mode::Vxlan, None) => {}
            (Mode::HostGw, _) => {
                state.routes.insert(OverlayRoute {
                    dst: cidr,
                    via: peer.node_ip,
                    vxlan: false,
                });
            }
        }
    }
    state
}

/// The nft script (one transaction) that (re)creates the masquerade table: traffic from the cluster's pod
/// CIDR to anything outside it leaves with the node's address; pod-to-pod traffic is untouched.
pub fn masquerade_script(cluster_cidr: Ipv4Net) -> String {
    let cidr = cluster_cidr.trunc();
    format!(
        "add table ip {NFT_TABLE}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} ip daddr != {cidr} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// Delete-only script for teardown.
pub fn masquerade_teardown_script() -> String {
    format!("add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("nft: {0}")]
    Nft(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("node {name}: {msg}")]
    Node { name: String, msg: String },
}

/// Apply an nft script in one transaction (`nft -f -`).
pub async fn nft_apply(script: &str) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| Error::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

fn vxlan_info(link: &rtnetlink::packet_route::link::LinkMessage) -> Option<Vec<InfoVxlan>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// Create (or fix) the node's VXLAN device with its address, bring it up, and return its MAC address.
pub async fn ensure_vxlan_device(handle: &Handle, local: &LocalNode) -> Result<[u8; 6], NlError> {
    if let Some(link) = nl::link_by_name(handle, VXLAN_DEVICE).await? {
        let info = vxlan_info(&link).unwrap_or_default();
        let matches = info.contains(&InfoVxlan::Id(VXLAN_VNI))
            && info.contains(&InfoVxlan::Local(local.node_ip))
            && info.contains(&InfoVxlan::Port(VXLAN_PORT));
        if !matches {
            // Wrong parameters (e.g. the node IP changed): recreate, as flannel does.
            tracing::info!(
                device = VXLAN_DEVICE,
                "recreating VXLAN device with new parameters"
            );
            handle
                .link()
                .del(link.header.index)
                .execute()
                .await
                .map_err(nl::nl("deleting VXLAN device"))?;
        }
    }
    if nl::link_by_name(handle, VXLAN_DEVICE).await?.is_none() {
        let msg = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
            .local(local.node_ip)
            .port(VXLAN_PORT)
            .learning(false)
            .mtu(VXLAN_MTU)
            .build();
        handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl::nl("creating VXLAN device"))?;
    }
    let link = nl::link_by_name(handle, VXLAN_DEVICE)
        .await?
        .ok_or_else(|| NlError::Other(format!("{VXLAN_DEVICE} vanished after creation")))?;
    let index = link.header.index;
    let want = local.pod_cidr.trunc().network();
    // Exactly the podCIDR network address as /32: drop anything else (an old podCIDR).
    for (ip, prefix) in nl::addresses(handle, index).await? {
        if (ip, prefix) != (want, 32) {
            let msgs: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(IpAddr::V4(ip))
                .execute()
                .try_collect()
                .await
                .map_err(nl::nl("listing VXLAN addresses"))?;
            for m in msgs {
                handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl::nl("removing old VXLAN address"))?;
            }
        }
    }
    nl::ensure_address(handle, index, want, 32).await?;
    nl::set_up(handle, index).await?;
    nl::link_mac(&link).ok_or_else(|| NlError::Other(format!("{VXLAN_DEVICE} has no MAC address")))
}

/// Remove the VXLAN device if present (host-gw mode, teardown).
pub async fn remove_vxlan_device(handle: &Handle) -> Result<(), NlError> {
    if let Some(link) = nl::link_by_name(handle, VXLAN_DEVICE).await? {
        handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(nl::nl("deleting VXLAN device"))?;
    }
    Ok(())
}

fn route_of(r: &OverlayRoute, vxlan_index: Option<u32>) -> Option<V4Route> {
    Some(V4Route {
        dst: r.dst,
        gateway: Some(r.via),
        oif: if r.vxlan { Some(vxlan_index?) } else { None },
        onlink: r.vxlan,
        scope_link: false,
        protocol: ROUTE_PROTO,
    })
}

/// Make the kernel hold exactly `state`: add what is missing, remove stale entries this module owns
/// (routes with its protocol, neighbours and FDB entries on its device). Idempotent.
pub async fn sync(handle: &Handle, state: &OverlayState) -> Result<(), NlError> {
    let vxlan_index = nl::link_by_name(handle, VXLAN_DEVICE)
        .await?
        .map(|l| l.header.index);

    // Neighbours and FDB entries first: a route must not point at an unresolved next hop.
    if let Some(index) = vxlan_index {
        sync_neighbours(handle, index, state).await?;
        sync_fdb(handle, index, state).await?;
    }

    let want: BTreeSet<V4Route> = state
        .routes
        .iter()
        .filter_map(|r| route_of(r, vxlan_index))
        .collect();
    let have = nl::routes_v4(handle).await?;
    for (route, msg) in &have {
        if route.protocol == ROUTE_PROTO && !want.contains(route) {
            tracing::debug!(?route, "removing stale overlay route");
            match handle.route().del(msg.clone()).execute().await {
                Ok(()) => {}
                Err(e) if nl::nl("")(e.clone()).errno() == Some(libc::ESRCH) => {}
                Err(e) => return Err(nl::nl(format!("deleting route {}", route.dst))(e)),
            }
        }
    }
    let present: BTreeSet<&V4Route> = have.iter().map(|(r, _)| r).collect();
    for route in &want {
        if !present.contains(route) {
            nl::replace_route(handle, route).await?;
        }
    }
    Ok(())
}

async fn sync_neighbours(handle: &Handle, index: u32, state: &OverlayState) -> Result<(), NlError> {
    let msgs: Vec<_> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl::nl("listing neighbours"))?;
    let mut have = BTreeSet::new();
    for msg in msgs.into_iter().filter(|m| m.header.ifindex == index) {
        let ip = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let mac = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => {
                <[u8; 6]>::try_from(mac.as_slice()).ok()
            }
            _ => None,
        });
        match (ip, mac) {
            (Some(ip), Some(mac))
                if state.neighbours.contains(&Neighbour { ip, mac })
                    && msg.header.state == NeighbourState::Permanent =>
            {
                have.insert(Neighbour { ip, mac });
            }
            _ => {
                handle
                    .neighbours()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl::nl("deleting stale neighbour"))?;
            }
        }
    }
    for n in state.neighbours.difference(&have) {
        handle
            .neighbours()
            .add(index, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl::nl(format!("adding neighbour {}", n.ip)))?;
    }
    Ok(())
}

async fn sync_fdb(handle: &Handle, index: u32, state: &OverlayState) -> Result<(), NlError> {
    let msgs: Vec<_> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl::nl("listing FDB"))?;
    let mut have = BTreeSet::new();
    for msg in msgs.into_iter().filter(|m| m.header.ifindex == index) {
        let mac = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) if mac.len() == 6 => {
                <[u8; 6]>::try_from(mac.as_slice()).ok()
            }
            _ => None,
        });
        // In AF_BRIDGE dumps the kernel's NDA_DST is not decoded as IPv4 by the family: accept raw bytes.
        let dst = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            _ => None,
        });
        match (mac, dst) {
            (Some(mac), Some(dst)) if state.fdb.contains(&FdbEntry { mac, dst }) => {
                have.insert(FdbEntry { mac, dst });
            }
            // The device's own MAC entry and other kernel-made entries carry no destination: leave them.
            (_, None) => {}
            _ => {
                handle
                    .neighbours()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl::nl("deleting stale FDB entry"))?;
            }
        }
    }
    for e in state.fdb.difference(&have) {
        handle
            .neighbours()
            .add_bridge(index, &e.mac)
            .destination(IpAddr::V4(e.dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl::nl(format!(
                "adding FDB entry {} dst {}",
                nl::format_mac(&e.mac),
                e.dst
            )))?;
    }
    Ok(())
}
