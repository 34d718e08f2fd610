//! Endpoints and EndpointSlice controllers (and EndpointSlice mirroring for selector-less Services).
//!
//! The pure part turns (Service, selected Pods, existing slices) into the slice changes to apply, and
//! (Service, Pods) into the legacy Endpoints object. Placement follows upstream's spirit: an endpoint
//! stays in the slice it already lives in, new endpoints fill slices with room before a new slice is
//! created, so that one pod turning Ready rewrites one slice.
//!
//! The pure parts are one module each (`pods`, `slices`, `legacy`, `mirroring`); this module is the I/O
//! shell that reconciles them through the API.

mod legacy;
mod mirroring;
mod pods;
mod slices;
#[cfg(test)]
mod tests;

pub use legacy::*;
pub use mirroring::*;
pub use pods::*;
pub use slices::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CoreEndpointPort, EndpointSubset, Endpoints, ObjectReference,
    Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_runtime::defaults::{ENDPOINTSLICE_CONTROLLER, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};

pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::{DeleteParams, PostParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;
use crate::informer::Key;

pub const LABEL_ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";

/// Slice name → what this controller wrote (None: deleted).
type WrittenSlices = BTreeMap<String, Option<Arc<EndpointSlice>>>;

/// Shell state: slices this controller wrote that its cache may not show yet (upstream's
/// EndpointSliceTracker), so a reconcile running before the watch catches up never creates twice.
#[derive(Default)]
pub struct State {
    /// (namespace, service) → slice name → what we wrote (None: deleted).
    written: Mutex<HashMap<Key, WrittenSlices>>,
    /// The same for Endpoints objects: the last one we wrote per Service.
    written_endpoints: Mutex<HashMap<Key, Arc<Endpoints>>>,
    started: AtomicBool,
}

fn rv(obj: &ObjectMeta) -> Option<u64> {
    obj.resource_version.as_deref().and_then(|v| v.parse().ok())
}

impl State {
    /// The slices of one service managed by `manager`, as the cache shows them corrected by our own
    /// writes the cache has not seen yet.
    fn existing(
        &self,
        ctx: &Ctx,
        namespace: &str,
        service: &str,
        manager: &str,
    ) -> Vec<Arc<EndpointSlice>> {
        let mine = |s: &EndpointSlice| {
            let labels = s.metadata.labels.as_ref();
            labels
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
                .map(String::as_str)
                == Some(service)
                && labels
                    .and_then(|l| l.get(LABEL_MANAGED_BY))
                    .map(String::as_str)
                    == Some(manager)
        };
        let cached: BTreeMap<String, Arc<EndpointSlice>> = ctx
            .caches
            .slices
            .list_namespace(namespace)
            .into_iter()
            .filter(|s| mine(s))
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        let mut result = cached.clone();
        let mut all_written = self.written.lock();
        let service_key = (namespace.to_string(), service.to_string());
        let Some(written) = all_written.get_mut(&service_key) else {
            return result.into_values().collect();
        };
        written.retain(|name, entry| {
            let in_cache = cached.get(name);
            match entry {
                None => {
                    // Deleted by us: hide it until the cache forgets it too.
                    if in_cache.is_some() {
                        result.remove(name);
                        true
                    } else {
                        false
                    }
                }
                Some(ours) => {
                    if !mine(ours) {
                        return true;
                    }
                    match in_cache {
                        Some(c) if rv(&c.metadata) >= rv(&ours.metadata) => false,
                        _ => {
                            result.insert(name.clone(), ours.clone());
                            true
                        }
                    }
                }
            }
        });
        if written.is_empty() {
            all_written.remove(&service_key);
        }
        result.into_values().collect()
    }

    fn note_written(&self, slice: EndpointSlice) {
        let key = (
            slice.metadata.namespace.clone().unwrap_or_default(),
            service_of(&slice).unwrap_or_default(),
        );
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.written
            .lock()
            .entry(key)
            .or_default()
            .insert(name, Some(Arc::new(slice)));
    }

    fn note_deleted(&self, namespace: &str, service: &str, name: &str) {
        self.written
            .lock()
            .entry((namespace.to_string(), service.to_string()))
            .or_default()
            .insert(name.to_string(), None);
    }
}

/// Whether a pod change can change any endpoint.
fn endpoint_relevant(old: &Pod, new: &Pod) -> bool {
    let view = |p: &Pod| {
        (
            p.metadata.labels.clone(),
            pod_ips(p),
            pod_is_ready(p),
            p.metadata.deletion_timestamp.is_some(),
            p.spec.as_ref().map(|s| {
                (
                    s.node_name.clone(),
                    s.hostname.clone(),
                    s.subdomain.clone(),
                    s.containers
                        .iter()
                        .map(|c| c.ports.clone())
                        .collect::<Vec<_>>(),
                )
            }),
            p.status.as_ref().and_then(|s| s.phase.clone()),
        )
    };
    view(old) != view(new)
}

pub(crate) fn on_pod(ctx: &Arc<Ctx>, old: Option<&Pod>, new: Option<&Pod>) {
    if !ctx.endpoints.started.load(Ordering::Acquire) {
        return;
    }
    if let (Some(o), Some(n)) = (old, new) {
        if !endpoint_relevant(o, n) {
            return;
        }
    }
    let Some(pod) = new.or(old) else { return };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    for svc in ctx.caches.services.list_namespace(&namespace) {
        let Some(selector) = service_selector(&svc) else {
            continue;
        };
        let matches = [old, new]
            .iter()
            .flatten()
            .any(|p| selector_matches(selector, p.metadata.labels.as_ref()));
        if matches {
            ctx.queues
                .endpoints
                .add_ns_name(&namespace, svc.metadata.name.as_deref().unwrap_or_default());
        }
    }
}

pub(crate) fn on_slice(ctx: &Arc<Ctx>, old: Option<&EndpointSlice>, new: Option<&EndpointSlice>) {
    if !ctx.endpoints.started.load(Ordering::Acquire) {
        return;
    }
    let Some(slice) = new.or(old) else { return };
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
    else {
        return;
    };
    let namespace = slice.metadata.namespace.clone().unwrap_or_default();
    if let Some(cur) = new {
        // Our own write coming back through the watch: nothing to do.
        let key = (namespace.clone(), service.clone());
        let name = cur.metadata.name.clone().unwrap_or_default();
        if let Some(Some(ours)) = ctx
            .endpoints
            .written
            .lock()
            .get(&key)
            .and_then(|m| m.get(&name))
        {
            if ours.metadata.resource_version == cur.metadata.resource_version {
                return;
            }
        }
    }
    ctx.queues.endpoints.add_ns_name(&namespace, service);
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    ctx.endpoints.started.store(true, Ordering::Release);
    for key in ctx.caches.services.keys() {
        ctx.queues.endpoints.add(key);
    }
    for key in ctx.caches.endpoints.keys() {
        ctx.queues.endpoints.add(key);
    }
    let queue = ctx.queues.endpoints.clone();
    crate::context::drive_with_retry(queue, ctx.options.concurrent_writes, "endpoints", |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|()| None) }
    })
    .await;
}

fn service_of(slice: &EndpointSlice) -> Option<String> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .cloned()
}

async fn apply_slices(
    ctx: &Ctx,
    namespace: &str,
    service: &str,
    changes: SliceChanges,
) -> Result<(), kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some("endpointslice-controller".to_string()),
        ..Default::default()
    };
    for slice in changes.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let written = api.replace(&name, &pp, &slice).await?;
        ctx.endpoints.note_written(written);
    }
    for slice in changes.create {
        let written = api.create(&pp, &slice).await?;
        ctx.endpoints.note_written(written);
    }
    for name in changes.delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
        ctx.endpoints.note_deleted(namespace, service, &name);
    }
    Ok(())
}

async fn reconcile(ctx: &Ctx, key: &Key) -> Result<(), kube::Error> {
    let (namespace, name) = key;
    if namespace == "default" && name == "kubernetes" {
        // The API server maintains its own Service's endpoints.
        return Ok(());
    }
    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    let service = ctx.caches.services.get(namespace, name);
    let ours = ctx
        .endpoints
        .existing(ctx, namespace, name, ENDPOINTSLICE_CONTROLLER);
    let mirrored = ctx
        .endpoints
        .existing(ctx, namespace, name, MIRRORING_CONTROLLER);
    let current_ep = {
        let cached = ctx.caches.endpoints.get(namespace, name);
        let mut written = ctx.endpoints.written_endpoints.lock();
        match (cached, written.get(key).cloned()) {
            (Some(c), Some(w)) if rv(&c.metadata) < rv(&w.metadata) => Some(w),
            (c, _) => {
                written.remove(key);
                c
            }
        }
    };
    let delete_all = |slices: &[Arc<EndpointSlice>]| SliceChanges {
        delete: slices
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect(),
        ..Default::default()
    };
    let Some(service) = service else {
        apply_slices(ctx, namespace, name, delete_all(&ours)).await?;
        apply_slices(ctx, namespace, name, delete_all(&mirrored)).await?;
        if let Some(ep) = current_ep {
            let managed = ep
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ENDPOINTS_MANAGED_BY));
            if managed.map(String::as_str) == Some(ENDPOINTS_CONTROLLER) {
                match ep_api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        return Ok(());
    };
    let Some(selector) = service_selector(&service) else {
        // No selector: the user owns the Endpoints; mirror them.
        apply_slices(ctx, namespace, name, delete_all(&ours)).await?;
        let changes = match current_ep {
            Some(ep)
                if ep
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SKIP_MIRROR))
                    .map(String::as_str)
                    != Some("true") =>
            {
                mirrored_endpoint_slices(&ep, &mirrored)
            }
            _ => delete_all(&mirrored),
        };
        return apply_slices(ctx, namespace, name, changes).await;
    };
    apply_slices(ctx, namespace, name, delete_all(&mirrored)).await?;
    let pods: Vec<Arc<Pod>> = ctx
        .caches
        .pods
        .list_namespace(namespace)
        .into_iter()
        .filter(|p| selector_matches(selector, p.metadata.labels.as_ref()))
        .collect();
    let nodes = &ctx.caches.nodes;
    let zone_of = |node: &str| {
        nodes.get("", node).and_then(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ZONE).cloned())
        })
    };
    let changes = desired_endpoint_slices(&service, &pods, &zone_of, &ours);
    apply_slices(ctx, namespace, name, changes).await?;

    let mut desired = desired_endpoints(&service, &pods);
    desired
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(
            LABEL_ENDPOINTS_MANAGED_BY.to_string(),
            ENDPOINTS_CONTROLLER.to_string(),
        );
    let pp = PostParams {
        field_manager: Some("endpoint-controller".to_string()),
        ..Default::default()
    };
    match current_ep {
        Some(cur) if endpoints_equal(&cur, &desired) => {}
        Some(cur) => {
            let mut next = (*cur).clone();
            next.metadata.labels = desired.metadata.labels.clone();
            next.subsets = desired.subsets.clone();
            let written = match ep_api.replace(name, &pp, &next).await {
                Ok(w) => w,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Someone else wrote it since: start from the live object once.
                    let mut live = ep_api.get(name).await?;
                    live.metadata.labels = desired.metadata.labels;
                    live.subsets = desired.subsets;
                    ep_api.replace(name, &pp, &live).await?
                }
                Err(e) => return Err(e),
            };
            ctx.endpoints
                .written_endpoints
                .lock()
                .insert(key.clone(), Arc::new(written));
        }
        None => match ep_api.create(&pp, &desired).await {
            Ok(w) => {
                ctx.endpoints
                    .written_endpoints
                    .lock()
                    .insert(key.clone(), Arc::new(w));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Our own earlier write the cache has not shown yet (or a user's): compare live.
                let live = ep_api.get(name).await?;
                if !endpoints_equal(&live, &desired) {
                    let mut next = live;
                    next.metadata.labels = desired.metadata.labels;
                    next.subsets = desired.subsets;
                    ep_api.replace(name, &pp, &next).await?;
                }
            }
            Err(e) => return Err(e),
        },
    }
    Ok(())
}
