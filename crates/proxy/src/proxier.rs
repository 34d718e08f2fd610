//! The change tracker (indexes of Services and EndpointSlices with the set of services changed since the last
//! sync) and the proxier that turns those changes into one nft transaction per sync. Independent of kube-rs
//! watchers so tests and benchmarks drive it with objects directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::apply::{stale_udp_flows, ApplyError, Runner};
use crate::model::{self, HealthCheck, NodeContext, ServiceKey, ServiceModel};
use crate::nft::{self, Program, RenderConfig};

/// What the watchers have seen, indexed for per-service recomputation.
#[derive(Debug)]
pub struct State {
    services: HashMap<ServiceKey, Arc<Service>>,
    /// Per service, its slices by name: a small vector (usually one slice; a B-tree node costs ~1 KB).
    slices: HashMap<ServiceKey, Vec<(String, model::SliceInfo)>>,
    /// (namespace, slice name) → the service its label named, so a relabelled or deleted slice is found.
    slice_owner: HashMap<(String, String), ServiceKey>,
    node: NodeContext,
    /// Node names seen in slices, so that endpoints share one allocation per node.
    node_names: HashSet<Arc<str>>,
    dirty: HashSet<ServiceKey>,
    all_dirty: bool,
    /// When the oldest change not yet synced was seen (network programming latency).
    pending_since: Option<Instant>,
}

impl State {
    pub fn new(node: NodeContext) -> State {
        State {
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            node,
            node_names: HashSet::new(),
            dirty: HashSet::new(),
            all_dirty: true,
            pending_since: None,
        }
    }

    fn touch(&mut self, key: ServiceKey) {
        self.pending_since.get_or_insert_with(Instant::now);
        self.dirty.insert(key);
    }

    pub fn apply_service(&mut self, svc: Service) {
        let Some(key) = model::service_key(&svc) else {
            return;
        };
        self.services.insert(key.clone(), Arc::new(svc));
        self.touch(key);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.services.remove(&key).is_some() {
            self.touch(key);
        }
    }

    /// Record slice `id` of service `key` (node names interned, the service's slices kept ordered by name).
    fn store_slice(&mut self, id: (String, String), key: &ServiceKey, info: model::SliceInfo) {
        let info = self.intern(info);
        let slices = self.slices.entry(key.clone()).or_default();
        match slices.binary_search_by(|(n, _)| n.as_str().cmp(&id.1)) {
            Ok(i) => slices[i].1 = info,
            Err(i) => slices.insert(i, (id.1.clone(), info)),
        }
        slices.shrink_to_fit();
        self.slice_owner.insert(id, key.clone());
    }

    fn intern(&mut self, mut info: model::SliceInfo) -> model::SliceInfo {
        for ep in &mut info.endpoints {
            if let Some(name) = ep.node_name.take() {
                let shared = match self.node_names.get(&name) {
                    Some(n) => Arc::clone(n),
                    None => {
                        self.node_names.insert(Arc::clone(&name));
                        name
                    }
                };
                ep.node_name = Some(shared);
            }
        }
        info
    }

    fn slice_id(slice: &EndpointSlice) -> Option<(String, String)> {
        Some((
            slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            slice.metadata.name.clone()?,
        ))
    }

    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        let Some(id) = Self::slice_id(&slice) else {
            return;
        };
        self.remove_slice(&id);
        if let (Some(key), Some(info)) = (
            model::slice_service_key(&slice),
            model::SliceInfo::from_slice(&slice),
        ) {
            self.store_slice(id, &key, info);
            self.touch(key);
        }
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.remove_slice(&(namespace.to_string(), name.to_string()));
    }

    fn remove_slice(&mut self, id: &(String, String)) {
        if let Some(key) = self.slice_owner.remove(id) {
            if let Some(m) = self.slices.get_mut(&key) {
                m.retain(|(name, _)| *name != id.1);
                if m.is_empty() {
                    self.slices.remove(&key);
                }
            }
            self.touch(key);
        }
    }

    /// Replace all services (a watch (re)list): everything is recomputed.
    pub fn replace_services(&mut self, all: Vec<Service>) {
        self.services = all
            .into_iter()
            .filter_map(|s| Some((model::service_key(&s)?, Arc::new(s))))
            .collect();
        self.all_dirty = true;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    pub fn replace_slices(&mut self, all: Vec<EndpointSlice>) {
        self.slices.clear();
        self.slice_owner.clear();
        for s in all {
            let (Some(id), Some(key), Some(info)) = (
                Self::slice_id(&s),
                model::slice_service_key(&s),
                model::SliceInfo::from_slice(&s),
            ) else {
                continue;
            };
            self.store_slice(id, &key, info);
        }
        self.all_dirty = true;
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// The node's addresses changed (or were first learnt).
    pub fn set_node(&mut self, node: NodeContext) {
        if node != self.node {
            self.node = node;
            self.all_dirty = true;
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }

    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The model of one service from the current objects (pure computation).
    pub fn model_of(&self, key: &ServiceKey) -> Option<ServiceModel> {
        let svc = self.services.get(key)?;
        let slices = self.slices.get(key);
        model::service_model(
            svc,
            slices.into_iter().flatten().map(|(_, info)| info),
            &self.node,
        )
    }
}

/// Result of one sync.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub full: bool,
    /// Services whose model changed.
    pub changed: usize,
    /// Size of the nft script or netlink batch sent.
    pub script_bytes: usize,
    /// The change went over netlink (an endpoint move) rather than through `nft -f`.
    pub netlink: bool,
    /// Time spent computing models and the script (before the kernel is called).
    pub compute: Duration,
    /// Time from the oldest change seen to the rules being in the kernel.
    pub programming_latency: Option<Duration>,
    /// The changes to the health check servers / announced addresses happened (callers reconcile then).
    pub health_checks_changed: bool,
    pub announce_changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("applying rules: {0}")]
    Apply(#[from] ApplyError),
}

/// Owns what is installed and brings the kernel in line with `State`.
pub struct Proxier {
    cfg: RenderConfig,
    runner: Runner,
    program: Program,
    models: HashMap<ServiceKey, ServiceModel>,
    health_checks: BTreeMap<ServiceKey, HealthCheck>,
    announce: BTreeMap<ServiceKey, Vec<IpAddr>>,
}

/// The netlink batch for a diff that only moves endpoints, when it fits one send.
fn netlink_batch(diff: &nft::Diff, cfg: &RenderConfig) -> Option<crate::netlink::Batch> {
    if !diff.moves_endpoints_only() {
        return None;
    }
    match crate::netlink::encode(diff, &cfg.table) {
        Ok(b) if b.bytes.len() <= crate::netlink::MAX_BATCH_BYTES => Some(b),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "endpoint move not encodable for netlink; using nft");
            None
        }
    }
}

impl Proxier {
    pub fn new(cfg: RenderConfig, runner: Runner) -> Proxier {
        Proxier {
            cfg,
            runner,
            program: Program::new(),
            models: HashMap::new(),
            health_checks: BTreeMap::new(),
            announce: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RenderConfig {
        &self.cfg
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Health-check node port servers wanted now.
    pub fn health_checks(&self) -> &BTreeMap<ServiceKey, HealthCheck> {
        &self.health_checks
    }

    /// LoadBalancer addresses this node must answer for.
    pub fn announced_ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.announce.values().flatten().copied().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Number of services in the installed model.
    pub fn service_count(&self) -> usize {
        self.models.len()
    }

    /// One sync: recompute the changed services, apply the difference (or everything on the first sync and
    /// after a failure) in one transaction, then drop stale UDP flows.
    pub async fn sync(
        &mut self,
        state: &parking_lot::Mutex<State>,
    ) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let full = !self.program.is_synced_with(&self.cfg);
        let mut report = SyncReport {
            full,
            ..Default::default()
        };
        // Pure part under the lock: take the changes and compute their models.
        let (changes, pending_since) = {
            let mut st = state.lock();
            let all = full || st.all_dirty;
            let keys: Vec<ServiceKey> = if all {
                let mut k: HashSet<ServiceKey> = st.services.keys().cloned().collect();
                k.extend(self.models.keys().cloned());
                k.into_iter().collect()
            } else {
                st.dirty.iter().cloned().collect()
            };
            st.dirty.clear();
            st.all_dirty = false;
            let pending = st.pending_since.take();
            let changes: Vec<(ServiceKey, Option<ServiceModel>)> = keys
                .into_iter()
                .map(|k| {
                    let m = st.model_of(&k);
                    (k, m)
                })
                .collect();
            (changes, pending)
        };
        let mut flows = Vec::new();
        let mut frag_changes = Vec::new();
        for (key, new) in changes {
            let old = self.models.get(&key);
            if old == new.as_ref() && !full {
                continue;
            }
            report.changed += 1;
            flows.extend(stale_udp_flows(old, new.as_ref()));
            let hc = new.as_ref().and_then(|m| m.health_check.clone());
            if self.health_checks.get(&key) != hc.as_ref() {
                report.health_checks_changed = true;
                match hc {
                    Some(h) => self.health_checks.insert(key.clone(), h),
                    None => self.health_checks.remove(&key),
                };
            }
            let ann = new
                .as_ref()
                .map(|m| m.announce_ips.clone())
                .unwrap_or_default();
            if self.announce.get(&key).map(Vec::as_slice).unwrap_or(&[]) != ann.as_slice() {
                report.announce_changed = true;
                if ann.is_empty() {
                    self.announce.remove(&key);
                } else {
                    self.announce.insert(key.clone(), ann);
                }
            }
            if !full {
                let installed = old.map(|m| self.program.fragment(m, &self.cfg));
                let wanted = new.as_ref().map(|m| self.program.fragment(m, &self.cfg));
                frag_changes.push((installed, wanted));
            }
            match new {
                Some(m) => {
                    self.models.insert(key, m);
                }
                None => {
                    self.models.remove(&key);
                }
            }
        }
        let diff = if full {
            None
        } else {
            self.program.update(frag_changes)
        };
        let result = match diff {
            Some(diff) if diff.is_empty() => {
                report.compute = started.elapsed();
                Ok(())
            }
            Some(diff) => {
                // Endpoint moves go straight over netlink; a batch too large for one send uses nft.
                let batch = netlink_batch(&diff, &self.cfg);
                report.compute = started.elapsed();
                match batch {
                    Some(batch) => {
                        report.netlink = true;
                        report.script_bytes = batch.bytes.len();
                        self.runner.netlink(batch).await
                    }
                    None => {
                        let script = diff.script(&self.cfg);
                        report.script_bytes = script.len();
                        self.runner.nft(&script).await
                    }
                }
            }
            None => {
                report.full = true;
                let models = std::mem::take(&mut self.models);
                // In key order, so that a fresh program numbers endpoint blocks the same way every time.
                let ordered: BTreeMap<&ServiceKey, &ServiceModel> = models.iter().collect();
                let frags: BTreeMap<ServiceKey, nft::Fragment> = ordered
                    .into_iter()
                    .map(|(k, m)| (k.clone(), self.program.fragment(m, &self.cfg)))
                    .collect();
                self.models = models;
                // Streamed: nft parses the start of the script while the rest is rendered.
                let (program, cfg) = (&mut self.program, &self.cfg);
                let mut compute = started.elapsed();
                let applied = self
                    .runner
                    .nft_streamed(|out| {
                        program.full_into(cfg, frags, out);
                        compute = started.elapsed();
                    })
                    .await;
                report.compute = compute;
                applied.map(|bytes| report.script_bytes = bytes)
            }
        };
        if let Err(e) = result {
            // The kernel still has the previous table (the transaction is atomic): start over with a full
            // sync of everything next time.
            self.program.invalidate();
            state.lock().all_dirty = true;
            return Err(e.into());
        }
        report.programming_latency = pending_since.map(|t| t.elapsed());
        if report.full {
            // A full sync at scale allocates a transient script and fragments of tens of MB; hand the freed
            // memory back to the system instead of keeping it mapped for the agent's lifetime.
            #[cfg(target_env = "gnu")]
            #[allow(unsafe_code)] // malloc_trim: no safe binding
            // SAFETY: malloc_trim has no preconditions; it only releases free heap pages.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        for f in flows {
            if let Err(e) = self.runner.conntrack_delete(&f).await {
                tracing::warn!(error = %e, filter = ?f, "deleting stale UDP conntrack entries");
            }
        }
        Ok(report)
    }
}
