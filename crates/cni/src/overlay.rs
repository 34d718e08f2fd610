//! Routes between nodes, kept in step with the Node objects.
//!
//! VXLAN mode works as flannel's vxlan backend: one device `skiff.vxlan` per node (VNI 1, learning off) whose
//! address is the node's podCIDR network address as /32; per remote node a route `<podCIDR> via <remote net
//! addr> dev skiff.vxlan onlink`, a permanent neighbour `<remote net addr> lladdr <remote VTEP MAC>` and an FDB
//! entry `<remote VTEP MAC> dst <remote node IP> self`: no multicast, no learning, no ARP across the overlay.
//! host-gw mode routes `<podCIDR> via <remote node IP>` (nodes share an L2 segment).
//! Pod traffic leaving the cluster's pod CIDR is masqueraded to the node's address (nftables table
//! `skiff-cni`); pod-to-pod traffic keeps its source address.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

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
#[group(id = "overlay")]
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

/// Apply an nft script in one transaction (`nft -f -`) in this process's network namespace.
pub async fn nft_apply(script: &str) -> Result<(), Error> {
    nft_apply_in(script, None).await
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
        if route.protocol == ROUTE_PROTO && !want.iter().any(|w| route_matches(w, route)) {
            tracing::debug!(?route, "removing stale overlay route");
            match handle.route().del(msg.clone()).execute().await {
                Ok(()) => {}
                Err(e) if nl::nl("")(e.clone()).errno() == Some(libc::ESRCH) => {}
                Err(e) => return Err(nl::nl(format!("deleting route {}", route.dst))(e)),
            }
        }
    }
    for route in &want {
        if !have.iter().any(|(h, _)| route_matches(route, h)) {
            nl::replace_route(handle, route).await?;
        }
    }
    Ok(())
}

/// Whether the kernel's route `have` is the wanted one. The kernel fills in the output interface of a
/// gateway route, so a wanted route without one matches any; comparing whole structs would delete and re-add
/// every host-gw route on each sync.
fn route_matches(want: &V4Route, have: &V4Route) -> bool {
    want.dst == have.dst
        && want.gateway == have.gateway
        && want.onlink == have.onlink
        && want.protocol == have.protocol
        && (want.oif.is_none() || want.oif == have.oif)
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

/// The Node's IPv4 podCIDR (`spec.podCIDR`, else the first IPv4 entry of `spec.podCIDRs`).
pub fn node_pod_cidr(node: &k8s_openapi::api::core::v1::Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find_map(|c| c.parse::<Ipv4Net>().ok())
}

/// The peer record of a Node object; None when it has no usable address or podCIDR yet.
pub fn peer_from_node(node: &k8s_openapi::api::core::v1::Node) -> Option<Peer> {
    let name = node.metadata.name.clone()?;
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let node_ip = annotations
        .get(skiff_runtime::defaults::ANNOTATION_NODE_IP)
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .or_else(|| {
            node.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find_map(|a| {
                    (a.type_ == "InternalIP")
                        .then(|| a.address.parse::<Ipv4Addr>().ok())
                        .flatten()
                })
        })?;
    let pod_cidr = node_pod_cidr(node)?;
    let vtep_mac = annotations
        .get(skiff_runtime::defaults::ANNOTATION_VTEP_MAC)
        .and_then(|m| nl::parse_mac(m));
    Some(Peer {
        name,
        node_ip,
        pod_cidr,
        vtep_mac,
    })
}

/// Run the inter-node routing of this node until the process ends: wait for the Node's podCIDR, create the
/// VXLAN device (VXLAN mode), publish its MAC and the node IP as Node annotations, install the masquerade
/// table, and keep routes / neighbours / FDB entries in step with all Nodes as they join, change and leave.
pub async fn run(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: OverlayOptions,
) -> Result<(), Error> {
    run_in(client, node, options, None).await
}

/// [`run`] against the network namespace at `netns` (None: this process's) — for tests and for a supervisor
/// that drives several nodes from one process. Netlink sockets are opened inside it and `nft` runs inside it.
pub async fn run_in(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: OverlayOptions,
    netns: Option<std::path::PathBuf>,
) -> Result<(), Error> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::{reflector, watcher, WatchStreamExt};

    let node_ip = match node.ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => {
            return Err(Error::Node {
                name: node.name.clone(),
                msg: format!("IPv6 node address {ip} is not supported"),
            })
        }
    };
    let (conn, handle) = nl::connect_in(netns.as_deref())?;
    tokio::spawn(conn);
    let api: kube::Api<Node> = kube::Api::all(client);

    if options.mode == Mode::HostGw {
        remove_vxlan_device(&handle).await?;
    }
    // The node forwards between pods, the overlay and the node network even before its first pod exists.
    let ns = netns.clone();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            if let Some(path) = &ns {
                nl::enter_netns(path)?;
            }
            nl::sysctl("net/ipv4/ip_forward", "1")
        })
        .join()
        .map_err(|_| NlError::Other("sysctl thread panicked".into()))?
    })
    .await
    .map_err(|e| NlError::Other(e.to_string()))??;
    nft_apply_in(&masquerade_script(options.cluster_cidr), netns.as_deref()).await?;

    let (reader, writer) = reflector::store::<Node>();
    let trigger = std::sync::Arc::new(skiff_runtime::sync::SyncTrigger::new());
    let watch = {
        let trigger = trigger.clone();
        // Every event counts, InitDone included: only then does the reflector's store hold the initial list.
        reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .for_each(move |event| {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "node watch");
                }
                trigger.request();
                futures::future::ready(())
            })
    };
    // What was last published on our Node, so a recreated device's new MAC gets re-announced.
    let published: std::sync::Arc<tokio::sync::Mutex<Option<String>>> = Default::default();
    let syncer = trigger.run(Duration::from_millis(50), Duration::from_secs(30), || {
        let (reader, handle, api, published) = (
            reader.clone(),
            handle.clone(),
            api.clone(),
            published.clone(),
        );
        let (name, mode) = (node.name.clone(), options.mode);
        async move {
            match sync_once(&reader, &handle, &api, &published, &name, node_ip, mode).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "overlay sync failed; retrying");
                    false
                }
            }
        }
    });
    tokio::select! {
        _ = watch => Err(Error::Node { name: node.name.clone(), msg: "node watch ended".into() }),
        _ = syncer => Ok(()),
    }
}

async fn sync_once(
    reader: &kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node>,
    handle: &Handle,
    api: &kube::Api<k8s_openapi::api::core::v1::Node>,
    published: &tokio::sync::Mutex<Option<String>>,
    name: &str,
    node_ip: Ipv4Addr,
    mode: Mode,
) -> Result<(), Error> {
    let nodes = reader.state();
    let Some(me) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
    else {
        tracing::debug!(node = name, "waiting for the Node object");
        return Ok(());
    };
    let Some(pod_cidr) = node_pod_cidr(me) else {
        tracing::debug!(node = name, "waiting for the Node's podCIDR");
        return Ok(());
    };
    let local = LocalNode {
        name: name.to_string(),
        node_ip,
        pod_cidr,
    };
    // Re-ensured every sync: someone deleting the device, or a podCIDR change, heals here.
    let mac = match mode {
        Mode::Vxlan => Some(nl::format_mac(&ensure_vxlan_device(handle, &local).await?)),
        Mode::HostGw => None,
    };
    let annotations = me.metadata.annotations.clone().unwrap_or_default();
    let mut last = published.lock().await;
    let stale = annotations.get(skiff_runtime::defaults::ANNOTATION_VTEP_MAC) != mac.as_ref()
        || annotations.get(skiff_runtime::defaults::ANNOTATION_NODE_IP)
            != Some(&node_ip.to_string());
    if stale || *last != mac {
        let patch = serde_json::json!({ "metadata": { "annotations": {
            skiff_runtime::defaults::ANNOTATION_VTEP_MAC: mac,
            skiff_runtime::defaults::ANNOTATION_NODE_IP: node_ip.to_string(),
        }}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
        tracing::info!(node = name, vtep_mac = ?mac, "published overlay annotations");
        *last = mac;
    }
    drop(last);
    let peers: Vec<Peer> = nodes.iter().filter_map(|n| peer_from_node(n)).collect();
    let state = desired(&local, &peers, mode);
    sync(handle, &state).await?;
    Ok(())
}

/// Apply an nft script inside the network namespace at `netns` (None: this process's). The `nft` child enters
/// the namespace between fork and exec, so no runtime thread ever switches.
pub async fn nft_apply_in(script: &str, netns: Option<&std::path::Path>) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let ns_file = match netns {
        Some(path) => Some(
            std::fs::File::open(path)
                .map_err(|e| Error::Nft(format!("opening {}: {e}", path.display())))?,
        ),
        None => None,
    };
    if let Some(file) = &ns_file {
        let fd = file.as_raw_fd();
        // SAFETY: only async-signal-safe work (one setns syscall) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
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
    drop(ns_file);
    if !out.status.success() {
        return Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Remove what [`run`] installed in this network namespace: the VXLAN device (its routes, neighbours and FDB
/// entries go with it), remaining overlay routes, and the masquerade table. For `skiff down` and tests.
pub async fn teardown(netns: Option<&std::path::Path>) -> Result<(), Error> {
    let (conn, handle) = nl::connect_in(netns)?;
    tokio::spawn(conn);
    remove_vxlan_device(&handle).await?;
    sync(&handle, &OverlayState::default()).await?;
    nft_apply_in(&masquerade_teardown_script(), netns).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalNode {
        LocalNode {
            name: "node-1".into(),
            node_ip: Ipv4Addr::new(172, 30, 0, 2),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
        }
    }

    fn peer(name: &str, ip: u8, cidr: &str, mac: Option<u8>) -> Peer {
        Peer {
            name: name.into(),
            node_ip: Ipv4Addr::new(172, 30, 0, ip),
            pod_cidr: cidr.parse().unwrap(),
            vtep_mac: mac.map(|m| [0x0a, 0, 0, 0, 0, m]),
        }
    }

    #[test]
    fn vxlan_state_per_remote_node() {
        let peers = vec![
            peer("node-1", 2, "10.244.0.0/24", Some(1)), // ourselves
            peer("node-2", 3, "10.244.1.0/24", Some(2)),
            peer("node-3", 4, "10.244.2.0/24", None), // no VTEP MAC yet
            peer("node-4", 5, "10.244.3.7/24", Some(4)), // host bits are ignored
        ];
        let state = desired(&local(), &peers, Mode::Vxlan);
        let routes: Vec<String> = state
            .routes
            .iter()
            .map(|r| format!("{} via {} vxlan={}", r.dst, r.via, r.vxlan))
            .collect();
        assert_eq!(
            routes,
            vec![
                "10.244.1.0/24 via 10.244.1.0 vxlan=true",
                "10.244.3.0/24 via 10.244.3.0 vxlan=true"
            ]
        );
        let neigh: Vec<String> = state
            .neighbours
            .iter()
            .map(|n| format!("{} {}", n.ip, crate::nl::format_mac(&n.mac)))
            .collect();
        assert_eq!(
            neigh,
            vec![
                "10.244.1.0 0a:00:00:00:00:02",
                "10.244.3.0 0a:00:00:00:00:04"
            ]
        );
        let fdb: Vec<String> = state
            .fdb
            .iter()
            .map(|e| format!("{} {}", crate::nl::format_mac(&e.mac), e.dst))
            .collect();
        assert_eq!(
            fdb,
            vec![
                "0a:00:00:00:00:02 172.30.0.3",
                "0a:00:00:00:00:04 172.30.0.5"
            ]
        );
    }

    #[test]
    fn host_gw_state_and_conflicts() {
        let peers = vec![
            peer("node-3", 4, "10.244.2.0/24", None),
            peer("node-2", 3, "10.244.2.0/24", None), // same CIDR: the lexically first name wins
            peer("rogue", 9, "10.244.0.0/16", None),  // overlaps our own podCIDR
            peer("node-5", 2, "10.244.5.0/24", None), // claims our node IP
        ];
        let state = desired(&local(), &peers, Mode::HostGw);
        let routes: Vec<String> = state
            .routes
            .iter()
            .map(|r| format!("{} via {}", r.dst, r.via))
            .collect();
        assert_eq!(routes, vec!["10.244.2.0/24 via 172.30.0.3"]);
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        // Order of the peer list does not matter.
        let reversed: Vec<Peer> = peers.into_iter().rev().collect();
        assert_eq!(desired(&local(), &reversed, Mode::HostGw), state);
    }

    #[test]
    fn kernel_filled_output_interface_still_matches() {
        let want = route_of(
            &OverlayRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: Ipv4Addr::new(172, 30, 0, 4),
                vxlan: false,
            },
            None,
        )
        .unwrap();
        let mut have = want.clone();
        have.oif = Some(2);
        assert!(route_matches(&want, &have));
        have.gateway = Some(Ipv4Addr::new(172, 30, 0, 5));
        assert!(!route_matches(&want, &have));
        let vx = route_of(
            &OverlayRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: "10.244.2.0".parse().unwrap(),
                vxlan: true,
            },
            Some(7),
        )
        .unwrap();
        let mut other_dev = vx.clone();
        other_dev.oif = Some(8);
        assert!(!route_matches(&vx, &other_dev));
    }

    #[test]
    fn masquerade_script_golden() {
        assert_eq!(
            masquerade_script("10.244.0.0/16".parse().unwrap()),
            "add table ip skiff-cni\n\
             delete table ip skiff-cni\n\
             table ip skiff-cni {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             \t}\n\
             }\n"
        );
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;

    #[test]
    fn peers_from_node_objects() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2", "annotations": {"skiff.dev/vtep-mac": "0a:1b:2c:3d:4e:5f"}},
            "spec": {"podCIDRs": ["fd00::/64", "10.244.2.0/24"]},
            "status": {"addresses": [{"type": "Hostname", "address": "n2"}, {"type": "InternalIP", "address": "172.30.0.4"}]},
        }))
        .unwrap();
        assert_eq!(
            peer_from_node(&node),
            Some(Peer {
                name: "n2".into(),
                node_ip: Ipv4Addr::new(172, 30, 0, 4),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_mac: Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
            })
        );
        // The node-ip annotation wins over status; no podCIDR yet means no peer.
        let pending: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n3", "annotations": {"skiff.dev/node-ip": "172.30.0.9"}},
        }))
        .unwrap();
        assert_eq!(peer_from_node(&pending), None);
    }
}
