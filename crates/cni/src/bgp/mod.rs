//! Routed pod networking the Calico way: every node runs BIRD (Debian's `bird2`), configured from the Node
//! objects, and BIRD — not Skiff — installs the routes to other nodes' pod CIDRs (`proto bird`).
//!
//! `bird` renders the configuration (pure), `announce` decides which service addresses this node announces
//! (pure), `supervisor` runs and reconfigures the `bird` process; `run` below follows Nodes, Services and
//! EndpointSlices, rewrites the configuration and `birdc configure`s on every change, restarts BIRD when it
//! exits, and reports BIRD's health as the Node's `NetworkUnavailable` condition and as events.

pub mod announce;
pub mod bird;
pub mod supervisor;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::Handle;

pub use bird::{Asn, Encapsulation, ExternalPeer, Timers};
use supervisor::{Bird, BirdPaths};

use crate::nl::{self, NlError};
use crate::overlay;

/// The Node condition BIRD's health is reported as (Calico sets it too, reason `CalicoIsUp`).
pub const CONDITION: &str = "NetworkUnavailable";

#[derive(Debug, Clone, clap::Args)]
#[group(id = "bgp")]
pub struct BgpOptions {
    /// AS number of the nodes (`--backend bgp`): a number or high.low (RFC 5396).
    #[arg(id = "bgp_as", long = "bgp-as", default_value = "64512")]
    pub asn: Asn,
    /// An external BGP peer, IP or IP@AS (repeatable): it learns the pod CIDRs, the service CIDR and the
    /// LoadBalancer / external IPs this node announces.
    #[arg(id = "bgp_peer", long = "bgp-peer")]
    pub peers: Vec<ExternalPeer>,
    /// Peer with every other node (Calico's node-to-node mesh).
    #[arg(id = "bgp_node_mesh", long = "bgp-node-mesh", default_value_t = true, action = clap::ArgAction::Set)]
    pub node_mesh: bool,
    /// How pod traffic between nodes travels (Calico's ipipMode / vxlanMode).
    #[arg(id = "encapsulation", long = "encapsulation", value_enum, default_value_t = Encapsulation::None)]
    pub encapsulation: Encapsulation,
    /// BGP hold time in seconds (0, or at least 3): how long a silent peer keeps its routes.
    #[arg(id = "bgp_hold_time", long = "bgp-hold-time", default_value_t = 9)]
    pub hold_time: u16,
    /// BGP keepalive interval in seconds [default: a third of the hold time].
    #[arg(id = "bgp_keepalive_time", long = "bgp-keepalive-time")]
    pub keepalive_time: Option<u16>,
    /// The service (ClusterIP) range announced to external peers.
    #[arg(id = "bgp_service_cidr", long = "bgp-service-cidr", default_value = skiff_runtime::defaults::SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
    /// The BIRD daemon (Debian package bird2).
    #[arg(
        id = "bird_binary",
        long = "bird-binary",
        default_value = "/usr/sbin/bird"
    )]
    pub bird: PathBuf,
    /// BIRD's control client.
    #[arg(
        id = "birdc_binary",
        long = "birdc-binary",
        default_value = "/usr/sbin/birdc"
    )]
    pub birdc: PathBuf,
}

impl BgpOptions {
    pub fn timers(&self) -> Result<Timers, Error> {
        Ok(Timers::new(self.hold_time, self.keepalive_time, 1)?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] bird::ConfigError),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    #[error(transparent)]
    Bird(#[from] supervisor::BirdError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("--encapsulation {0}: {1}")]
    Encapsulation(Encapsulation, String),
    #[error("node {name}: {msg}")]
    Node { name: String, msg: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where this node's BIRD lives under the agent's data dir.
pub fn bird_dir(agent_data_dir: &Path) -> PathBuf {
    std::path::absolute(agent_data_dir)
        .unwrap_or_else(|_| agent_data_dir.to_path_buf())
        .join("bird")
}

/// The subnet of the interface holding `ip` (which peers share this node's L2 segment).
async fn subnet_of(handle: &Handle, ip: Ipv4Addr) -> Result<Option<Ipv4Net>, NlError> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl::nl("listing addresses"))?;
    for m in msgs {
        let has = m.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
        });
        if has {
            return Ok(Ipv4Net::new(ip, m.header.prefix_len)
                .ok()
                .map(|n| n.trunc()));
        }
    }
    Ok(None)
}

/// Prepare the tunnel device of the chosen encapsulation (and remove the VXLAN device when it is not used).
async fn ensure_ipip(handle: &Handle, pod_cidr: Option<Ipv4Net>) -> Result<(), Error> {
    let Some(link) = nl::link_by_name(handle, bird::IPIP_DEVICE).await? else {
        return Err(Error::Encapsulation(
            Encapsulation::Ipip,
            format!(
                "no {} device in the node's network namespace: this kernel has no IP-in-IP support \
                 (CONFIG_NET_IPIP, module ipip); use --encapsulation none or vxlan",
                bird::IPIP_DEVICE
            ),
        ));
    };
    let index = link.header.index;
    handle
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(index)
                .mtu(bird::IPIP_MTU)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl::nl(format!("setting up {}", bird::IPIP_DEVICE)))?;
    // As Calico's tunnel address: traffic the node itself sends through the tunnel leaves from its pod range.
    if let Some(cidr) = pod_cidr {
        nl::ensure_address(handle, index, cidr.trunc().network(), 32).await?;
    }
    Ok(())
}

struct Shared {
    client: kube::Client,
    node: String,
    node_ip: Ipv4Addr,
    options: BgpOptions,
    timers: Timers,
    cluster_cidr: Ipv4Net,
    paths: BirdPaths,
    netns: Option<PathBuf>,
    handle: Handle,
    nodes: kube::runtime::reflector::Store<Node>,
    services: kube::runtime::reflector::Store<Service>,
    slices: kube::runtime::reflector::Store<EndpointSlice>,
    trigger: Arc<skiff_runtime::sync::SyncTrigger>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    bird: Option<Bird>,
    written: Option<String>,
    /// The condition last posted: (status, reason, message).
    reported: Option<(String, String, String)>,
    published_mac: Option<Option<String>>,
}

/// Run this node's BGP routing until the process ends (or BIRD cannot be configured at all).
pub async fn run(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: BgpOptions,
    cluster_cidr: Ipv4Net,
    data_dir: PathBuf,
) -> Result<(), Error> {
    run_in(client, node, options, cluster_cidr, data_dir, None).await
}

/// [`run`] against the network namespace at `netns` (None: this process's) — BIRD and `nft` are started
/// inside it and netlink sockets opened in it.
pub async fn run_in(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: BgpOptions,
    cluster_cidr: Ipv4Net,
    data_dir: PathBuf,
    netns: Option<PathBuf>,
) -> Result<(), Error> {
    use futures::StreamExt;
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
    // Bad settings are startup errors, before anything changes in the kernel.
    let timers = options.timers()?;
    for p in &options.peers {
        if p.ip == node_ip {
            return Err(bird::ConfigError::Peer {
                input: p.ip.to_string(),
                reason: "that is this node's own address".into(),
            }
            .into());
        }
    }
    let (conn, handle) = nl::connect_in(netns.as_deref())?;
    tokio::spawn(conn);
    if options.encapsulation.tunnel() == Some(bird::Tunnel::Ipip) {
        ensure_ipip(&handle, None).await?;
    }
    if options.encapsulation.tunnel() != Some(bird::Tunnel::Vxlan) {
        overlay::remove_vxlan_device(&handle).await?;
    }
    {
        let ns = netns.clone();
        nl::run_in_netns(ns, |_h| async { nl::sysctl("net/ipv4/ip_forward", "1") })?;
    }
    overlay::nft_apply_in(&overlay::masquerade_script(cluster_cidr), netns.as_deref()).await?;

    let dir = bird_dir(&data_dir);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let paths = BirdPaths {
        bird: options.bird.clone(),
        birdc: options.birdc.clone(),
        dir,
    };

    let (nodes, nodes_w) = reflector::store::<Node>();
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let trigger = Arc::new(skiff_runtime::sync::SyncTrigger::new());
    let watch_nodes = reflector(
        nodes_w,
        watcher(Api::<Node>::all(client.clone()), Default::default()),
    )
    .default_backoff()
    .for_each(on_event(trigger.clone(), "node"));
    let watch_services = reflector(
        services_w,
        watcher(Api::<Service>::all(client.clone()), Default::default()),
    )
    .default_backoff()
    .for_each(on_event(trigger.clone(), "service"));
    let watch_slices = reflector(
        slices_w,
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            Default::default(),
        ),
    )
    .default_backoff()
    .for_each(on_event(trigger.clone(), "endpointslice"));

    let shared = Arc::new(Shared {
        client,
        node: node.name.clone(),
        node_ip,
        options,
        timers,
        cluster_cidr,
        paths,
        netns,
        handle,
        nodes,
        services,
        slices,
        trigger: trigger.clone(),
        state: Default::default(),
    });
    let syncer = trigger.run(Duration::from_millis(20), Duration::from_secs(10), || {
        let shared = shared.clone();
        async move {
            match sync_once(&shared).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "bgp sync failed; retrying");
                    false
                }
            }
        }
    });
    let name = node.name;
    tokio::select! {
        _ = watch_nodes => Err(Error::Node { name, msg: "node watch ended".into() }),
        _ = watch_services => Err(Error::Node { name, msg: "service watch ended".into() }),
        _ = watch_slices => Err(Error::Node { name, msg: "endpointslice watch ended".into() }),
        _ = syncer => Ok(()),
    }
}

/// Every event counts, InitDone included: only then does the reflector's store hold the initial list.
fn on_event<T>(
    trigger: Arc<skiff_runtime::sync::SyncTrigger>,
    what: &'static str,
) -> impl FnMut(Result<T, kube::runtime::watcher::Error>) -> futures::future::Ready<()> {
    move |event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "{what} watch");
        }
        trigger.request();
        futures::future::ready(())
    }
}

async fn sync_once(s: &Shared) -> Result<(), Error> {
    let nodes = s.nodes.state();
    let Some(me) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&s.node))
    else {
        tracing::debug!(node = %s.node, "waiting for the Node object");
        return Ok(());
    };
    let pod_cidr = overlay::node_pod_cidr(me);
    let local_subnet = subnet_of(&s.handle, s.node_ip)
        .await?
        .unwrap_or_else(|| Ipv4Net::from(s.node_ip));
    let peers: Vec<overlay::Peer> = nodes
        .iter()
        .filter_map(|n| overlay::peer_from_node(n))
        .collect();
    let mut state = s.state.lock().await;

    match s.options.encapsulation.tunnel() {
        Some(bird::Tunnel::Ipip) => ensure_ipip(&s.handle, pod_cidr).await?,
        Some(bird::Tunnel::Vxlan) => {
            if let Some(cidr) = pod_cidr {
                vxlan_sync(s, &mut state, me, cidr, &peers, local_subnet).await?;
            }
        }
        None => {}
    }

    let mesh_peers: Vec<bird::MeshPeer> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = node_ip_of(n)?;
            let vtep = overlay::peer_from_node(n)
                .filter(|p| p.vtep_mac.is_some())
                .map(|p| p.pod_cidr.trunc().network());
            Some(bird::MeshPeer { name, ip, vtep })
        })
        .collect();
    let services: Vec<Service> = s.services.state().iter().map(|a| (**a).clone()).collect();
    let slices: Vec<EndpointSlice> = s.slices.state().iter().map(|a| (**a).clone()).collect();
    let config = bird::render(&bird::NodeBird {
        node_name: s.node.clone(),
        node_ip: s.node_ip,
        local_subnet,
        local_as: s.options.asn,
        pod_cidr,
        cluster_cidr: s.cluster_cidr,
        encapsulation: s.options.encapsulation,
        timers: s.timers,
        mesh: s.options.node_mesh,
        mesh_peers,
        external_peers: s.options.peers.clone(),
        service_routes: announce::service_routes(
            &s.node,
            Some(s.options.service_cidr),
            &services,
            &slices,
        ),
    });
    let result = apply(s, &mut state, config).await;
    let condition = match &result {
        Ok(()) => (
            "False".to_string(),
            "BIRDIsUp".to_string(),
            "BIRD is running and configured".to_string(),
        ),
        Err(e) => ("True".to_string(), "BIRDFailed".to_string(), e.to_string()),
    };
    if state.reported.as_ref() != Some(&condition) {
        if let Err(e) = report(s, me, &condition).await {
            tracing::warn!(error = %e, "reporting the node's network condition");
        } else {
            state.reported = Some(condition);
        }
    }
    result
}

/// Write the configuration and make the running BIRD use it: start BIRD if it is not running, else
/// `birdc configure` when the file changed.
async fn apply(s: &Shared, state: &mut State, config: String) -> Result<(), Error> {
    if let Some(status) = state.bird.as_ref().and_then(Bird::exited) {
        let log = state.bird.as_ref().map(Bird::log_tail).unwrap_or_default();
        tracing::warn!(%status, %log, "bird exited; starting it again");
        state.bird = None;
    }
    let changed = state.written.as_deref() != Some(config.as_str());
    if changed {
        let path = s.paths.config();
        let tmp = path.with_extension("conf.tmp");
        std::fs::write(&tmp, &config)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        state.written = Some(config);
    }
    match &state.bird {
        None => {
            let trigger = s.trigger.clone();
            let bird = Bird::start(&s.paths, s.netns.as_deref(), move || trigger.request()).await;
            match bird {
                Ok(b) => {
                    tracing::info!(pid = ?b.pid(), config = %s.paths.config().display(), "bird started");
                    state.bird = Some(b);
                }
                Err(e) => {
                    // The next sync (after the runner's back-off) starts it again.
                    return Err(e.into());
                }
            }
        }
        Some(_) if changed => {
            supervisor::configure(&s.paths).await?;
            tracing::info!("bird reconfigured");
        }
        Some(_) => {}
    }
    Ok(())
}

fn node_ip_of(n: &Node) -> Option<Ipv4Addr> {
    n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(skiff_runtime::defaults::ANNOTATION_NODE_IP))
        .and_then(|ip| ip.parse().ok())
        .or_else(|| {
            n.status.as_ref()?.addresses.as_ref()?.iter().find_map(|a| {
                (a.type_ == "InternalIP")
                    .then(|| a.address.parse().ok())
                    .flatten()
            })
        })
}

/// VXLAN encapsulation: the VXLAN backend's device, with the neighbour and FDB entries of the peers whose
/// traffic is encapsulated; the routes through it are BIRD's.
async fn vxlan_sync(
    s: &Shared,
    state: &mut State,
    me: &Node,
    pod_cidr: Ipv4Net,
    peers: &[overlay::Peer],
    local_subnet: Ipv4Net,
) -> Result<(), Error> {
    let local = overlay::LocalNode {
        name: s.node.clone(),
        node_ip: s.node_ip,
        pod_cidr,
    };
    let mac = nl::format_mac(&overlay::ensure_vxlan_device(&s.handle, &local).await?);
    let annotations = me.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(skiff_runtime::defaults::ANNOTATION_VTEP_MAC) != Some(&mac)
        || state.published_mac.as_ref() != Some(&Some(mac.clone()))
    {
        let patch = serde_json::json!({ "metadata": { "annotations": {
            skiff_runtime::defaults::ANNOTATION_VTEP_MAC: mac,
            skiff_runtime::defaults::ANNOTATION_NODE_IP: s.node_ip.to_string(),
        }}});
        Api::<Node>::all(s.client.clone())
            .patch(&s.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        state.published_mac = Some(Some(mac));
    }
    let encapsulated: Vec<overlay::Peer> = peers
        .iter()
        .filter(|p| {
            s.options
                .encapsulation
                .encapsulates(local_subnet, p.node_ip)
        })
        .cloned()
        .collect();
    let mut want = overlay::desired(&local, &encapsulated, overlay::Mode::Vxlan);
    // Routes are BIRD's; only the L2 entries (neighbour, FDB) are programmed here.
    want.routes.clear();
    overlay::sync(&s.handle, &want).await?;
    Ok(())
}

/// Post the `NetworkUnavailable` condition (strategic merge: the kubelet's conditions stay) and, when BIRD
/// failed, an event on the Node.
async fn report(
    s: &Shared,
    me: &Node,
    (status, reason, message): &(String, String, String),
) -> Result<(), kube::Error> {
    let now = Time(jiff_now());
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": CONDITION, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    Api::<Node>::all(s.client.clone())
        .patch_status(&s.node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    if status == "True" {
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", s.node)),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(s.node.clone()),
                uid: me.metadata.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.clone()),
            message: Some(message.clone()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("skiff-agent".into()),
                host: Some(s.node.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("skiff-agent".into()),
            reporting_instance: Some(s.node.clone()),
            ..Default::default()
        };
        Api::<Event>::namespaced(s.client.clone(), "default")
            .create(&PostParams::default(), &event)
            .await?;
    }
    Ok(())
}

fn jiff_now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Remove what [`run`] left in the kernel besides BIRD's own routes (which BIRD withdraws when it stops):
/// the VXLAN device and the masquerade table.
pub async fn teardown(netns: Option<&Path>) -> Result<(), Error> {
    overlay::teardown(netns).await?;
    Ok(())
}
