//! The node-side shell: watch caches of NetworkPolicies, Pods and Namespaces (a single writer each), a sync
//! loop through `SyncTrigger` that rebuilds the model and applies the difference as one `nft` transaction,
//! and the pod-start gate (`PodStartGate`): a new pod is added to the model before the API has its IP, and
//! its containers start once a sync including it has been applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use skiff_runtime::gate::PodStartGate;
use skiff_runtime::sync::SyncTrigger;
use skiff_runtime::NodeIdentity;

use crate::apply::{ApplyError, Runner};
use crate::model::{Local, Model, PodView};
use crate::nft::{self, RenderConfig, Ruleset};

/// `skiff agent` options of the policy enforcer.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Re-apply the whole table at least this often even without changes.
    #[arg(long = "netpol-sync-period", value_parser = parse_secs, default_value = "30")]
    pub netpol_sync_period: Duration,
    /// Minimum time between two syncs (changes arriving meanwhile are batched).
    #[arg(long = "netpol-min-sync-interval-ms", value_parser = parse_millis, default_value = "0")]
    pub netpol_min_sync_interval: Duration,
    /// Where Prometheus metrics (per-policy denials, syncs) are served; empty to serve none.
    #[arg(long = "netpol-metrics-addr", default_value = "0.0.0.0:10266")]
    pub netpol_metrics_addr: String,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds: {e}"))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("milliseconds: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

type Key = (String, String);

fn key(meta: &kube::api::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Pods the gate admitted before the API showed them with an address are forgotten after this.
const PENDING_TTL: Duration = Duration::from_secs(300);

/// What the watches have seen. Every change bumps `generation`; a sync records the generation it built.
#[derive(Debug)]
pub struct State {
    node: String,
    policies: BTreeMap<Key, NetworkPolicy>,
    /// Policed pods: (node name, view).
    pods: BTreeMap<Key, (Option<String>, PodView)>,
    namespaces: BTreeMap<String, Namespace>,
    /// Local pods admitted by the gate, not yet seen with their address in the watch.
    pending: BTreeMap<Key, (PodView, Instant)>,
    generation: u64,
}

impl State {
    pub fn new(node: &str) -> State {
        State {
            node: node.to_string(),
            policies: BTreeMap::new(),
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pending: BTreeMap::new(),
            generation: 1,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn bump(&mut self) {
        self.generation += 1;
    }

    pub fn apply_policy(&mut self, p: NetworkPolicy) {
        self.policies.insert(key(&p.metadata), p);
        self.bump();
    }

    pub fn delete_policy(&mut self, p: &NetworkPolicy) {
        self.policies.remove(&key(&p.metadata));
        self.bump();
    }

    pub fn replace_policies(&mut self, all: Vec<NetworkPolicy>) {
        self.policies = all.into_iter().map(|p| (key(&p.metadata), p)).collect();
        self.bump();
    }

    pub fn apply_pod(&mut self, p: &Pod) {
        let k = key(&p.metadata);
        match PodView::from_pod(p) {
            Some(v) => {
                self.pending.remove(&k);
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                self.pods.insert(k, (node, v));
            }
            None => {
                self.pods.remove(&k);
            }
        }
        self.bump();
    }

    pub fn delete_pod(&mut self, p: &Pod) {
        let k = key(&p.metadata);
        self.pods.remove(&k);
        self.pending.remove(&k);
        self.bump();
    }

    pub fn replace_pods(&mut self, all: Vec<Pod>) {
        self.pods.clear();
        for p in &all {
            if let Some(v) = PodView::from_pod(p) {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                self.pending.remove(&key(&p.metadata));
                self.pods.insert(key(&p.metadata), (node, v));
            }
        }
        self.bump();
    }

    pub fn apply_namespace(&mut self, n: Namespace) {
        self.namespaces
            .insert(n.metadata.name.clone().unwrap_or_default(), n);
        self.bump();
    }

    pub fn delete_namespace(&mut self, n: &Namespace) {
        self.namespaces
            .remove(n.metadata.name.as_deref().unwrap_or_default());
        self.bump();
    }

    pub fn replace_namespaces(&mut self, all: Vec<Namespace>) {
        self.namespaces = all
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        self.bump();
    }

    /// A local pod about to start (its address known to the node, maybe not yet to the API).
    pub fn admit(&mut self, view: PodView) -> u64 {
        self.pending.insert(
            (view.namespace.clone(), view.name.clone()),
            (view, Instant::now()),
        );
        self.bump();
        self.generation
    }

    /// The model of this node's pods (the ones bound here plus the admitted ones).
    pub fn model(&mut self) -> Model {
        self.pending
            .retain(|_, (_, since)| since.elapsed() < PENDING_TTL);
        let mut views: Vec<PodView> = Vec::with_capacity(self.pods.len() + self.pending.len());
        let mut local = BTreeSet::<Ipv4Addr>::new();
        for (node, v) in self.pods.values() {
            if node.as_deref() == Some(self.node.as_str()) {
                local.insert(v.ip);
            }
            views.push(v.clone());
        }
        for (v, _) in self.pending.values() {
            local.insert(v.ip);
            views.push(v.clone());
        }
        Model::build(
            self.policies.values(),
            &views,
            self.namespaces.values(),
            Local::Ips(&local),
        )
    }
}

/// Applies models to the kernel: the first sync (and any after a failure) replaces the whole table, later
/// ones apply the difference to what was applied last.
#[derive(Debug)]
pub struct Enforcer {
    pub cfg: RenderConfig,
    pub runner: Runner,
    applied: Option<Ruleset>,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Full,
    Diff,
    Unchanged,
}

impl Enforcer {
    pub fn new(cfg: RenderConfig, runner: Runner) -> Enforcer {
        Enforcer {
            cfg,
            runner,
            applied: None,
        }
    }

    pub async fn sync(&mut self, model: &Model) -> Result<Synced, ApplyError> {
        let next = nft::render(model);
        let (script, kind) = match &self.applied {
            Some(prev) if *prev == next => return Ok(Synced::Unchanged),
            Some(prev) => (nft::diff_script(prev, &next, &self.cfg), Synced::Diff),
            None => (nft::full_script(&next, &self.cfg), Synced::Full),
        };
        match self.runner.apply(&script).await {
            Ok(()) => {
                self.applied = Some(next);
                Ok(kind)
            }
            Err(e) => {
                // The kernel kept the previous table; only a full sync is sure to fix it.
                self.applied = None;
                Err(e)
            }
        }
    }

    /// Forget what was applied: the next sync replaces the whole table.
    pub fn invalidate(&mut self) {
        self.applied = None;
    }
}

/// The enforcer of one node, before it runs: hand out its gate first, then `run` it.
pub struct Enforcement {
    state: Arc<parking_lot::Mutex<State>>,
    trigger: Arc<SyncTrigger>,
    synced: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Enforcement {
    pub fn new(node: &NodeIdentity) -> Enforcement {
        Enforcement {
            state: Arc::new(parking_lot::Mutex::new(State::new(&node.name))),
            trigger: Arc::new(SyncTrigger::new()),
            synced: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The gate the node agent awaits before a pod's containers start.
    pub fn gate(&self) -> Arc<dyn PodStartGate> {
        Arc::new(Gate {
            state: self.state.clone(),
            trigger: self.trigger.clone(),
            synced: self.synced.subscribe(),
        })
    }

    /// Watch and enforce until a watch ends for good (in this network namespace: the node's).
    pub async fn run(
        self,
        client: kube::Client,
        options: Options,
        runner: Runner,
    ) -> Result<(), Error> {
        let flag = || Arc::new((AtomicBool::new(false), tokio::sync::Notify::new()));
        let (pol_synced, pod_synced, ns_synced) = (flag(), flag(), flag());
        let policies = tokio::spawn(watch_kind(
            Api::<NetworkPolicy>::all(client.clone()),
            "networkpolicies",
            self.state.clone(),
            self.trigger.clone(),
            pol_synced.clone(),
            |st, o| st.apply_policy(o),
            |st, o| st.delete_policy(&o),
            |st, all| st.replace_policies(all),
        ));
        let pods = tokio::spawn(watch_kind(
            Api::<Pod>::all(client.clone()),
            "pods",
            self.state.clone(),
            self.trigger.clone(),
            pod_synced.clone(),
            |st, o| st.apply_pod(&o),
            |st, o| st.delete_pod(&o),
            |st, all| st.replace_pods(all),
        ));
        let namespaces = tokio::spawn(watch_kind(
            Api::<Namespace>::all(client.clone()),
            "namespaces",
            self.state.clone(),
            self.trigger.clone(),
            ns_synced.clone(),
            |st, o| st.apply_namespace(o),
            |st, o| st.delete_namespace(&o),
            |st, all| st.replace_namespaces(all),
        ));
        // First sync only when every cache has been listed: a partial view would open isolated pods.
        for f in [&pol_synced, &pod_synced, &ns_synced] {
            loop {
                let notified = f.1.notified();
                if f.0.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
        }
        tracing::info!(
            "network policy caches synced; programming nftables table {}",
            nft::TABLE
        );
        let metrics = Arc::new(crate::metrics::Metrics::default());
        if !options.netpol_metrics_addr.is_empty() {
            match tokio::net::TcpListener::bind(&options.netpol_metrics_addr).await {
                Ok(l) => {
                    tokio::spawn(crate::metrics::serve(l, runner.clone(), metrics.clone()));
                }
                Err(e) => {
                    tracing::warn!(addr = %options.netpol_metrics_addr, error = %e, "network policy metrics not served")
                }
            }
        }
        let enforcer = Arc::new(tokio::sync::Mutex::new(Enforcer::new(
            RenderConfig::default(),
            runner,
        )));
        let (state, synced) = (self.state.clone(), self.synced.clone());
        self.trigger.request();
        let sync_loop = self.trigger.run(options.netpol_min_sync_interval, options.netpol_sync_period, move || {
            let (state, synced, enforcer, metrics) = (state.clone(), synced.clone(), enforcer.clone(), metrics.clone());
            async move {
                let started = Instant::now();
                let (model, generation) = {
                    let mut st = state.lock();
                    (st.model(), st.generation())
                };
                let mut enforcer = enforcer.lock().await;
                match enforcer.sync(&model).await {
                    Ok(kind) => {
                        synced.send_replace(generation);
                        let counter = match kind {
                            Synced::Full => Some(&metrics.full_syncs),
                            Synced::Diff => Some(&metrics.diff_syncs),
                            Synced::Unchanged => None,
                        };
                        if let Some(c) = counter {
                            c.fetch_add(1, Ordering::Relaxed);
                            metrics.last_sync_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        metrics.programmed_policies.store(model.policies.len() as u64, Ordering::Relaxed);
                        if kind != Synced::Unchanged {
                            tracing::debug!(?kind, policies = model.policies.len(), elapsed = ?started.elapsed(), "network policy synced");
                        }
                        true
                    }
                    Err(e) => {
                        metrics.failed_syncs.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "network policy sync failed; retrying with a full sync");
                        false
                    }
                }
            }
        });
        tokio::select! {
            _ = sync_loop => Err(Error::WatchEnded("sync")),
            r = policies => r.unwrap_or(Err(Error::WatchEnded("networkpolicies"))),
            r = pods => r.unwrap_or(Err(Error::WatchEnded("pods"))),
            r = namespaces => r.unwrap_or(Err(Error::WatchEnded("namespaces"))),
        }
    }
}

struct Gate {
    state: Arc<parking_lot::Mutex<State>>,
    trigger: Arc<SyncTrigger>,
    synced: tokio::sync::watch::Receiver<u64>,
}

impl PodStartGate for Gate {
    fn admit<'a>(&'a self, pod: &'a Pod, ips: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(view) = PodView::from_pod_with_ips(pod, ips) else {
                return;
            };
            let generation = self.state.lock().admit(view);
            self.trigger.request();
            let mut synced = self.synced.clone();
            let _ = synced.wait_for(|g| *g >= generation).await;
        })
    }
}

/// Feed one kind's watch events into the state.
#[allow(clippy::too_many_arguments)]
async fn watch_kind<K, A, D, L>(
    api: Api<K>,
    what: &'static str,
    state: Arc<parking_lot::Mutex<State>>,
    trigger: Arc<SyncTrigger>,
    synced: Arc<(AtomicBool, tokio::sync::Notify)>,
    apply: A,
    delete: D,
    on_list: L,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    A: Fn(&mut State, K),
    D: Fn(&mut State, K),
    L: Fn(&mut State, Vec<K>),
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    skiff_runtime::watch::feed_state(
        stream, what, &state, &trigger, &synced, apply, delete, on_list,
    )
    .await;
    Err(Error::WatchEnded(what))
}
