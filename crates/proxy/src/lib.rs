//! kube-proxy for Skiff: watches Services, EndpointSlices and this Node through kube-rs, builds a pure rule model
//! (`model`), renders it for nftables (`nft`) and applies it as one transaction per sync (`apply`, `proxier`):
//! `nft -f -` for full syncs and structural changes, a netlink batch (`netlink`) for endpoint moves. Also: stale UDP conntrack cleanup, health-check node
//! ports for `externalTrafficPolicy: Local`, LoadBalancer address announcement, and Prometheus metrics.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod announce;
pub mod apply;
pub mod http;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod proxier;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use skiff_runtime::defaults;
use skiff_runtime::sync::SyncTrigger;
use skiff_runtime::NodeIdentity;

use crate::apply::Runner;
use crate::model::NodeContext;
use crate::nft::RenderConfig;
use crate::proxier::{Proxier, State};

/// The data plane backend. Only nftables exists today; the model is backend-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    Nftables,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Service proxy flags (all prefixed `--proxy-`, so they flatten next to other components' flags).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "proxy")]
pub struct Options {
    /// Data plane backend.
    #[arg(long = "proxy-mode", value_enum, default_value = "nftables")]
    pub proxy_mode: ProxyMode,
    /// Minimum interval between syncs: changes arriving meanwhile collapse into one transaction.
    #[arg(long = "proxy-min-sync-period", default_value = "10ms", value_parser = parse_duration)]
    pub proxy_min_sync_period: Duration,
    /// Maximum interval between syncs, even without changes.
    #[arg(long = "proxy-sync-period", default_value = "30s", value_parser = parse_duration)]
    pub proxy_sync_period: Duration,
    /// Where /metrics is served (kube-proxy's metrics port).
    #[arg(long = "proxy-metrics-addr", default_value = "0.0.0.0:10249")]
    pub proxy_metrics_addr: SocketAddr,
    /// Where /healthz is served (kube-proxy's healthz port).
    #[arg(long = "proxy-healthz-addr", default_value = "0.0.0.0:10256")]
    pub proxy_healthz_addr: SocketAddr,
    /// Pod network of the cluster: other sources are masqueraded when they reach a ClusterIP.
    #[arg(id = "proxy_cluster_cidr", long = "proxy-cluster-cidr", value_name = "CIDR", default_value = defaults::CLUSTER_POD_CIDR)]
    pub cluster_cidr: Ipv4Net,
    /// Service network: traffic to unallocated ClusterIPs is dropped.
    #[arg(id = "proxy_service_cidr", long = "proxy-service-cidr", value_name = "CIDR", default_value = defaults::SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy_mode: ProxyMode::Nftables,
            proxy_min_sync_period: Duration::from_millis(10),
            proxy_sync_period: Duration::from_secs(30),
            proxy_metrics_addr: SocketAddr::from(([0, 0, 0, 0], 10249)),
            proxy_healthz_addr: SocketAddr::from(([0, 0, 0, 0], 10256)),
            cluster_cidr: defaults::CLUSTER_POD_CIDR.parse().unwrap_or_default(),
            service_cidr: defaults::SERVICE_CIDR.parse().unwrap_or_default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("watch of {0} ended")]
    WatchEnded(&'static str),
}

/// The node's addresses: the identity's IP plus the Node object's InternalIPs.
fn node_context(identity: &NodeIdentity, node: Option<&Node>) -> NodeContext {
    let mut ips = vec![identity.ip];
    if let Some(addrs) = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
    {
        for a in addrs {
            if a.type_ == "InternalIP" {
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    ips.push(ip);
                }
            }
        }
    }
    ips.sort();
    ips.dedup();
    NodeContext {
        name: identity.name.clone(),
        ips,
    }
}

/// Feed one kind's watch events into the state. `on_list` replaces everything after a (re)list.
// One generic loop for three kinds; the closures are what differs, a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn watch_kind<K, A, D, L>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    state: Arc<parking_lot::Mutex<State>>,
    trigger: Arc<SyncTrigger>,
    synced: Arc<(AtomicBool, tokio::sync::Notify)>,
    apply: A,
    delete: D,
    on_list: L,
) -> Error
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    A: Fn(&mut State, K),
    D: Fn(&mut State, K),
    L: Fn(&mut State, Vec<K>),
{
    let stream = watcher(api, config).default_backoff();
    skiff_runtime::watch::feed_state(
        stream, what, &state, &trigger, &synced, apply, delete, on_list,
    )
    .await;
    Error::WatchEnded(what)
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<K>>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    kube::runtime::watcher(api, config)
}

fn name_ns(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Run the service proxy until a watch ends for good (in this network namespace: the node's).
pub async fn run(client: kube::Client, node: NodeIdentity, options: Options) -> Result<(), Error> {
    run_in(
        client,
        node,
        options,
        Runner::new(),
        IpAddr::from([0, 0, 0, 0]),
    )
    .await
}

/// `run` with the data-plane commands sent through `runner` (e.g. into a test's namespace) and the health
/// check node ports bound on `health_bind`.
pub async fn run_in(
    client: kube::Client,
    node: NodeIdentity,
    options: Options,
    runner: Runner,
    health_bind: IpAddr,
) -> Result<(), Error> {
    let ProxyMode::Nftables = options.proxy_mode;
    let cfg = RenderConfig {
        table: "skiff-proxy".into(),
        cluster_cidr: Some(options.cluster_cidr),
        service_cidr: Some(options.service_cidr),
    };
    let state = Arc::new(parking_lot::Mutex::new(State::new(node_context(
        &node, None,
    ))));
    let trigger = Arc::new(SyncTrigger::new());
    let metrics = Arc::new(metrics::Metrics::new());

    let metrics_listener = tokio::net::TcpListener::bind(options.proxy_metrics_addr)
        .await
        .map_err(|source| Error::Bind {
            what: "metrics",
            addr: options.proxy_metrics_addr,
            source,
        })?;
    let m = metrics.clone();
    let _metrics_server = http::serve(metrics_listener, move |path| match path {
        "/metrics" => http::Response {
            status: 200,
            headers: vec![(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8".into(),
            )],
            body: m.render(),
        },
        _ => http::Response {
            status: 404,
            headers: vec![],
            body: "404 page not found\n".into(),
        },
    });
    let healthz_listener = tokio::net::TcpListener::bind(options.proxy_healthz_addr)
        .await
        .map_err(|source| Error::Bind {
            what: "healthz",
            addr: options.proxy_healthz_addr,
            source,
        })?;
    let m = metrics.clone();
    let max = options.proxy_sync_period;
    let _healthz_server = http::serve(healthz_listener, move |path| {
        if path != "/healthz" && path != "/livez" {
            return http::Response {
                status: 404,
                headers: vec![],
                body: "404 page not found\n".into(),
            };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let last = m.last_sync();
        // Healthy once synced and not stale by more than two sync periods (as kube-proxy's healthz).
        let healthy = last > 0.0 && now - last < 2.0 * max.as_secs_f64() + 1.0;
        http::Response {
            status: if healthy { 200 } else { 503 },
            headers: vec![("Content-Type", "application/json".into())],
            body: format!(
                "{{\"lastUpdated\": {last}, \"currentTime\": {now}, \"nodeEligible\": true}}"
            ),
        }
    });

    let flag = || Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
    let (svc_synced, slice_synced, node_synced) = (flag(), flag(), flag());

    let services = tokio::spawn(watch_kind(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        "services",
        state.clone(),
        trigger.clone(),
        svc_synced.clone(),
        |st: &mut State, s: Service| st.apply_service(s),
        |st: &mut State, s: Service| {
            let (ns, n) = name_ns(&s.metadata);
            st.delete_service(&ns, &n)
        },
        |st: &mut State, all| st.replace_services(all),
    ));
    let slices = tokio::spawn(watch_kind(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        "endpointslices",
        state.clone(),
        trigger.clone(),
        slice_synced.clone(),
        |st: &mut State, s: EndpointSlice| st.apply_slice(s),
        |st: &mut State, s: EndpointSlice| {
            let (ns, n) = name_ns(&s.metadata);
            st.delete_slice(&ns, &n)
        },
        |st: &mut State, all| st.replace_slices(all),
    ));
    let ident = node.clone();
    let ident2 = node.clone();
    let nodes = tokio::spawn(watch_kind(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", node.name)),
        "nodes",
        state.clone(),
        trigger.clone(),
        node_synced.clone(),
        move |st: &mut State, n: Node| st.set_node(node_context(&ident, Some(&n))),
        move |st: &mut State, _n: Node| st.set_node(node_context(&ident2, None)),
        {
            let ident = node.clone();
            move |st: &mut State, all: Vec<Node>| st.set_node(node_context(&ident, all.first()))
        },
    ));

    // First sync only when every cache has been listed: a partial view would delete live rules.
    for f in [&svc_synced, &slice_synced, &node_synced] {
        loop {
            let notified = f.1.notified();
            if f.0.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
    }
    tracing::info!(node = %node.name, "service proxy caches synced; programming nftables table skiff-proxy");

    let proxier = Arc::new(tokio::sync::Mutex::new(Proxier::new(cfg, runner.clone())));
    let health = Arc::new(tokio::sync::Mutex::new(http::HealthServers::new(
        health_bind,
    )));
    let announcer = Arc::new(tokio::sync::Mutex::new(announce::Announcer::new(
        runner, node.ip,
    )));
    trigger.request();
    let sync_loop = {
        let trigger = trigger.clone();
        async move {
            trigger
                .run(options.proxy_min_sync_period, options.proxy_sync_period, || {
                    let (proxier, state, metrics) = (proxier.clone(), state.clone(), metrics.clone());
                    let (health, announcer) = (health.clone(), announcer.clone());
                    async move {
                        let mut p = proxier.lock().await;
                        let start = Instant::now();
                        match p.sync(&state).await {
                            Ok(r) => {
                                let took = start.elapsed();
                                metrics.record_sync(r.full, took, r.changed, p.service_count(), r.programming_latency);
                                if r.changed > 0 {
                                    tracing::debug!(full = r.full, changed = r.changed, bytes = r.script_bytes, ?took, "synced");
                                }
                                if r.health_checks_changed {
                                    health.lock().await.reconcile(p.health_checks()).await;
                                }
                                if r.announce_changed || r.full {
                                    announcer.lock().await.reconcile(&p.announced_ips()).await;
                                }
                                true
                            }
                            Err(e) => {
                                metrics.record_failure();
                                tracing::warn!(error = %e, "sync failed; next sync is a full one");
                                false
                            }
                        }
                    }
                })
                .await
        }
    };
    tokio::select! {
        _ = sync_loop => Ok(()),
        r = services => Err(r.unwrap_or(Error::WatchEnded("services"))),
        r = slices => Err(r.unwrap_or(Error::WatchEnded("endpointslices"))),
        r = nodes => Err(r.unwrap_or(Error::WatchEnded("nodes"))),
    }
}
