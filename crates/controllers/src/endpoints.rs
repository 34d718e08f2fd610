//! Endpoints and EndpointSlice controllers (and EndpointSlice mirroring for selector-less Services).
//!
//! The pure part turns (Service, selected Pods, existing slices) into the slice changes to apply, and
//! (Service, Pods) into the legacy Endpoints object. Placement follows upstream's spirit: an endpoint
//! stays in the slice it already lives in, new endpoints fill slices with room before a new slice is
//! created, so that one pod turning Ready rewrites one slice.

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

/// What to write so that a Service's slices match its pods.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SliceChanges {
    /// New slices (metadata.generateName set, no name).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl SliceChanges {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return vec![];
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .as_ref()
        .map(|v| v.iter().map(|p| p.ip.clone()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        if let Some(ip) = status.pod_ip.as_ref().filter(|ip| !ip.is_empty()) {
            ips.push(ip.clone());
        }
    }
    ips
}

/// Upstream's ShouldPodBeInEndpoints: an address, not finished, and (unless asked) not terminating.
pub fn pod_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ips(pod).is_empty() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

fn family_of(ip: &str) -> &'static str {
    if ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn service_families(service: &Service) -> Vec<String> {
    let families = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    if families.is_empty() {
        vec!["IPv4".to_string()]
    } else {
        families
    }
}

pub fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// upstream findPort: the container port a Service port's targetPort means for this pod.
/// `None` when a named targetPort is not declared by any of the pod's containers.
pub fn resolve_target_port(
    pod: &Pod,
    port: i32,
    target: Option<&IntOrString>,
    protocol: &str,
) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

fn slice_ports_for_pod(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .cloned()
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|sp| {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".to_string());
            let port = resolve_target_port(pod, sp.port, sp.target_port.as_ref(), &protocol)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn pod_hostname_for(service: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    if spec.subdomain.as_deref() == service.metadata.name.as_deref()
        && pod.metadata.namespace == service.metadata.namespace
    {
        Some(hostname.clone())
    } else {
        None
    }
}

fn owner_ref_to(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Group key: (addressType, ports).
type GroupKey = (String, Vec<(String, i32, String)>);

fn group_key(address_type: &str, ports: &[EndpointPort]) -> GroupKey {
    (
        address_type.to_string(),
        ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or(0),
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect(),
    )
}

struct Group {
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

/// The identity of an endpoint across recomputations: its target (pod) or else its address.
fn endpoint_id(ep: &Endpoint) -> String {
    match ep.target_ref.as_ref().and_then(|r| r.name.as_ref()) {
        Some(name) => format!("ref/{name}"),
        None => format!("ip/{}", ep.addresses.first().cloned().unwrap_or_default()),
    }
}

/// Everything a managed slice carries besides its endpoints and ports.
struct SliceTemplate {
    namespace: String,
    generate_name: String,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
}

fn sort_endpoints(eps: &mut [Endpoint]) {
    eps.sort_by_key(endpoint_id);
}

fn place(
    groups: BTreeMap<GroupKey, Group>,
    existing: &[Arc<EndpointSlice>],
    template: &SliceTemplate,
    placeholder_family: &str,
) -> SliceChanges {
    let mut changes = SliceChanges::default();
    let total: usize = groups.values().map(|g| g.endpoints.len()).sum();
    let mut existing: Vec<&EndpointSlice> = existing.iter().map(|s| s.as_ref()).collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let finish = |slice: &EndpointSlice,
                  endpoints: Vec<Endpoint>,
                  ports: Option<Vec<EndpointPort>>,
                  changes: &mut SliceChanges| {
        let mut new = slice.clone();
        new.endpoints = endpoints;
        new.ports = ports;
        let mut labels = new.metadata.labels.clone().unwrap_or_default();
        // Keep labels others added, but ours must hold our values.
        for (k, v) in &template.labels {
            labels.insert(k.clone(), v.clone());
        }
        if !template.labels.contains_key(LABEL_HEADLESS) {
            labels.remove(LABEL_HEADLESS);
        }
        new.metadata.labels = Some(labels);
        new.metadata.owner_references = Some(vec![template.owner.clone()]);
        if new != *slice {
            changes.update.push(new);
        }
    };

    if total == 0 {
        // Upstream keeps a single placeholder slice (no endpoints, no ports) for a Service with none.
        let mut iter = existing.iter();
        match iter.next() {
            Some(first) => finish(first, vec![], None, &mut changes),
            None => changes
                .create
                .push(new_slice(template, placeholder_family, vec![], None)),
        }
        for rest in iter {
            changes
                .delete
                .push(rest.metadata.name.clone().unwrap_or_default());
        }
        return changes;
    }

    let mut used: BTreeSet<usize> = BTreeSet::new();
    for (key, group) in groups {
        let mut desired: HashMap<String, Endpoint> = group
            .endpoints
            .into_iter()
            .map(|ep| (endpoint_id(&ep), ep))
            .collect();
        // Existing slices of this group keep the endpoints they already hold.
        let mut kept: Vec<(usize, Vec<Endpoint>)> = vec![];
        for (i, slice) in existing.iter().enumerate() {
            if used.contains(&i) {
                continue;
            }
            let ports = slice.ports.clone().unwrap_or_default();
            if group_key(&slice.address_type, &ports) != key {
                continue;
            }
            used.insert(i);
            let eps: Vec<Endpoint> = slice
                .endpoints
                .iter()
                .filter_map(|ep| desired.remove(&endpoint_id(ep)))
                .collect();
            kept.push((i, eps));
        }
        // The rest fill slices with room, then new slices.
        let mut rest: Vec<Endpoint> = desired.into_values().collect();
        sort_endpoints(&mut rest);
        let mut rest = rest.into_iter().peekable();
        for (_, eps) in kept.iter_mut() {
            while eps.len() < MAX_ENDPOINTS_PER_SLICE {
                match rest.next() {
                    Some(ep) => eps.push(ep),
                    None => break,
                }
            }
        }
        for (i, mut eps) in kept {
            if eps.is_empty() {
                changes
                    .delete
                    .push(existing[i].metadata.name.clone().unwrap_or_default());
            } else {
                sort_endpoints(&mut eps);
                finish(existing[i], eps, Some(group.ports.clone()), &mut changes);
            }
        }
        while rest.peek().is_some() {
            let mut eps: Vec<Endpoint> = rest.by_ref().take(MAX_ENDPOINTS_PER_SLICE).collect();
            sort_endpoints(&mut eps);
            changes
                .create
                .push(new_slice(template, &key.0, eps, Some(group.ports.clone())));
        }
    }
    for (i, slice) in existing.iter().enumerate() {
        if !used.contains(&i) {
            changes
                .delete
                .push(slice.metadata.name.clone().unwrap_or_default());
        }
    }
    changes
}

fn new_slice(
    template: &SliceTemplate,
    address_type: &str,
    endpoints: Vec<Endpoint>,
    ports: Option<Vec<EndpointPort>>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(template.generate_name.clone()),
            namespace: Some(template.namespace.clone()),
            labels: Some(template.labels.clone()),
            owner_references: Some(vec![template.owner.clone()]),
            ..Default::default()
        },
        address_type: address_type.to_string(),
        endpoints,
        ports,
    }
}

/// The slices of `service` given the pods its selector matches (`pods`, any order), the zone of
/// each node (`zone_of`), and the slices this controller already manages for it (`existing`).
pub fn desired_endpoint_slices(
    service: &Service,
    pods: &[Arc<Pod>],
    zone_of: &dyn Fn(&str) -> Option<String>,
    existing: &[Arc<EndpointSlice>],
) -> SliceChanges {
    let name = service.metadata.name.clone().unwrap_or_default();
    let families = service_families(service);
    let publish = publish_not_ready(service);
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for pod in pods {
        if !pod_in_endpoints(pod, true) {
            continue;
        }
        let ports = slice_ports_for_pod(service, pod);
        let ready = pod_is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        for ip in pod_ips(pod) {
            let family = family_of(&ip);
            if !families.iter().any(|f| f == family) {
                continue;
            }
            let endpoint = Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish || (ready && !terminating)),
                    serving: Some(publish || ready),
                    terminating: Some(terminating),
                }),
                hostname: pod_hostname_for(service, pod),
                zone: node_name.as_deref().and_then(zone_of),
                node_name: node_name.clone(),
                target_ref: Some(pod_ref(pod)),
                ..Default::default()
            };
            groups
                .entry(group_key(family, &ports))
                .or_insert_with(|| Group {
                    ports: ports.clone(),
                    endpoints: vec![],
                })
                .endpoints
                .push(endpoint);
        }
    }
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.to_string(), name.clone());
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        ENDPOINTSLICE_CONTROLLER.to_string(),
    );
    if is_headless(service) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    let template = SliceTemplate {
        namespace: service.metadata.namespace.clone().unwrap_or_default(),
        generate_name: format!("{name}-"),
        labels,
        owner: owner_ref_to("v1", "Service", &service.metadata),
    };
    place(groups, existing, &template, &families[0])
}

fn core_ports(ports: &[EndpointPort]) -> Vec<CoreEndpointPort> {
    ports
        .iter()
        .map(|p| CoreEndpointPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: p.port.unwrap_or(0),
            protocol: p.protocol.clone(),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

/// The legacy Endpoints object of `service` given the pods its selector matches.
pub fn desired_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Endpoints {
    let publish = publish_not_ready(service);
    // ports key → (ports, ready addresses, not-ready addresses)
    type Subset = (
        Vec<CoreEndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut subsets: BTreeMap<Vec<(String, i32, String)>, Subset> = BTreeMap::new();
    let families = service_families(service);
    for pod in pods {
        if !pod_in_endpoints(pod, publish) {
            continue;
        }
        let ports = slice_ports_for_pod(service, pod);
        let key = group_key("", &ports).1;
        let Some(ip) = pod_ips(pod)
            .into_iter()
            .find(|ip| family_of(ip) == families[0])
        else {
            continue;
        };
        let address = EndpointAddress {
            ip,
            hostname: pod_hostname_for(service, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (core_ports(&ports), vec![], vec![]));
        if publish || pod_is_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    if is_headless(service) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// Whether `current` already says what `desired` says (labels and subsets).
pub fn endpoints_equal(current: &Endpoints, desired: &Endpoints) -> bool {
    let norm = |s: &Option<Vec<EndpointSubset>>| s.clone().unwrap_or_default();
    current.metadata.labels.clone().unwrap_or_default()
        == desired.metadata.labels.clone().unwrap_or_default()
        && norm(&current.subsets) == norm(&desired.subsets)
}

/// Mirrors a user-written Endpoints object (of a Service without selector) to EndpointSlices
/// managed by the mirroring controller.
pub fn mirrored_endpoint_slices(
    endpoints: &Endpoints,
    existing: &[Arc<EndpointSlice>],
) -> SliceChanges {
    let name = endpoints.metadata.name.clone().unwrap_or_default();
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let both = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        for (address, ready) in both {
            let family = family_of(&address.ip);
            groups
                .entry(group_key(family, &ports))
                .or_insert_with(|| Group {
                    ports: ports.clone(),
                    endpoints: vec![],
                })
                .endpoints
                .push(Endpoint {
                    addresses: vec![address.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    hostname: address.hostname.clone(),
                    node_name: address.node_name.clone(),
                    target_ref: address.target_ref.clone(),
                    ..Default::default()
                });
        }
    }
    let mut labels = endpoints.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAME.to_string(), name.clone());
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MIRRORING_CONTROLLER.to_string(),
    );
    let template = SliceTemplate {
        namespace: endpoints.metadata.namespace.clone().unwrap_or_default(),
        generate_name: format!("{name}-"),
        labels,
        owner: owner_ref_to("v1", "Endpoints", &endpoints.metadata),
    };
    let total: usize = groups.values().map(|g| g.endpoints.len()).sum();
    if total == 0 {
        // The mirroring controller keeps no placeholder: no addresses, no slices.
        return SliceChanges {
            delete: existing
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect(),
            ..Default::default()
        };
    }
    place(groups, existing, &template, "IPv4")
}

/// Label selector semantics of `Service.spec.selector` (equality on every key).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Service's selector, `None` when it has none (then the user manages its Endpoints).
pub fn service_selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// I/O shell

use std::sync::atomic::{AtomicBool, Ordering};

use kube::api::{DeleteParams, PostParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;
use crate::informer::Key;

pub const LABEL_ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";

/// Shell state: slices this controller wrote that its cache may not show yet (upstream's
/// EndpointSliceTracker), so a reconcile running before the watch catches up never creates twice.
#[derive(Default)]
pub struct State {
    /// (namespace, service) → slice name → what we wrote (None: deleted).
    written: Mutex<HashMap<Key, BTreeMap<String, Option<Arc<EndpointSlice>>>>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "demoapp", "namespace": "default", "uid": "svc-uid", "labels": {"app": "demoapp"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
        let mut status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "demoapp"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn no_zone(_: &str) -> Option<String> {
        None
    }

    fn web_service() -> Service {
        svc(
            json!({"selector": {"app": "demoapp"}, "clusterIP": "10.96.0.20",
                   "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}),
        )
    }

    #[test]
    fn one_slice_with_ready_and_not_ready_pods_and_no_ip_pods_skipped() {
        let pods = vec![
            pod(
                "b",
                Some("10.244.0.3"),
                false,
                json!([{"name": "web", "containerPort": 80}]),
            ),
            pod(
                "a",
                Some("10.244.0.2"),
                true,
                json!([{"name": "web", "containerPort": 80}]),
            ),
            pod(
                "c",
                None,
                false,
                json!([{"name": "web", "containerPort": 80}]),
            ),
        ];
        let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
        assert!(changes.update.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.create.len(), 1);
        let got = serde_json::to_value(&changes.create[0]).unwrap();
        assert_eq!(
            got,
            json!({
                "addressType": "IPv4",
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "endpoints": [
                    {"addresses": ["10.244.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
                     "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default", "uid": "uid-a"}},
                    {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": false, "terminating": false},
                     "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "default", "uid": "uid-b"}},
                ],
                "metadata": {
                    "generateName": "demoapp-",
                    "namespace": "default",
                    "labels": {"app": "demoapp", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                               "kubernetes.io/service-name": "demoapp"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "demoapp", "uid": "svc-uid",
                                         "controller": true, "blockOwnerDeletion": true}],
                },
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            })
        );
    }

    #[test]
    fn named_target_ports_differing_per_pod_make_separate_slices_and_subsets() {
        let pods = vec![
            pod(
                "a",
                Some("10.244.0.2"),
                true,
                json!([{"name": "web", "containerPort": 80}]),
            ),
            pod(
                "b",
                Some("10.244.1.2"),
                true,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            // No port named "web": this pod serves no port of the Service.
            pod(
                "c",
                Some("10.244.1.3"),
                true,
                json!([{"name": "other", "containerPort": 9090}]),
            ),
        ];
        let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
        let summary: Vec<(Vec<i32>, Vec<String>)> = changes
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.iter().flatten().filter_map(|p| p.port).collect(),
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (vec![], vec!["10.244.1.3".to_string()]),
                (vec![80], vec!["10.244.0.2".to_string()]),
                (vec![8080], vec!["10.244.1.2".to_string()]),
            ]
        );
        let ep = desired_endpoints(&web_service(), &pods);
        let got = serde_json::to_value(&ep.subsets).unwrap();
        assert_eq!(
            got,
            json!([
                {"addresses": [{"ip": "10.244.1.3", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "c", "namespace": "default", "uid": "uid-c"}}]},
                {"addresses": [{"ip": "10.244.0.2", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default", "uid": "uid-a"}}],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
                {"addresses": [{"ip": "10.244.1.2", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "default", "uid": "uid-b"}}],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
            ])
        );
    }

    #[test]
    fn terminating_pods_are_not_ready_in_slices_and_absent_from_endpoints() {
        let mut p: Pod = (*pod(
            "a",
            Some("10.244.0.2"),
            true,
            json!([{"name": "web", "containerPort": 80}]),
        ))
        .clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        let pods = vec![Arc::new(p)];
        let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
        assert_eq!(
            changes.create[0].endpoints[0].conditions,
            Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true)
            })
        );
        assert_eq!(desired_endpoints(&web_service(), &pods).subsets, None);
    }

    #[test]
    fn publish_not_ready_addresses_marks_everything_ready() {
        let mut s = web_service();
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let pods = vec![pod(
            "a",
            Some("10.244.0.2"),
            false,
            json!([{"name": "web", "containerPort": 80}]),
        )];
        let changes = desired_endpoint_slices(&s, &pods, &no_zone, &[]);
        assert_eq!(
            changes.create[0].endpoints[0]
                .conditions
                .as_ref()
                .unwrap()
                .ready,
            Some(true)
        );
        let ep = desired_endpoints(&s, &pods);
        assert_eq!(
            ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
            "10.244.0.2"
        );
    }

    #[test]
    fn headless_service_gets_hostnames_and_label() {
        let s = svc(json!({"selector": {"app": "demoapp"}, "clusterIP": "None"}));
        let mut p: Pod = (*pod("web-0", Some("10.244.0.5"), true, json!([]))).clone();
        p.spec.as_mut().unwrap().hostname = Some("web-0".into());
        p.spec.as_mut().unwrap().subdomain = Some("demoapp".into());
        let pods = vec![Arc::new(p)];
        let changes = desired_endpoint_slices(&s, &pods, &no_zone, &[]);
        let slice = &changes.create[0];
        assert_eq!(slice.endpoints[0].hostname.as_deref(), Some("web-0"));
        assert_eq!(
            slice
                .metadata
                .labels
                .as_ref()
                .unwrap()
                .get(LABEL_HEADLESS)
                .map(String::as_str),
            Some("")
        );
        assert_eq!(slice.ports, Some(vec![]));
        let ep = desired_endpoints(&s, &pods);
        assert_eq!(
            ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("web-0")
        );
    }

    fn named(mut s: EndpointSlice, name: &str) -> Arc<EndpointSlice> {
        s.metadata.name = Some(name.to_string());
        s.metadata.generate_name = None;
        s.metadata.resource_version = Some("7".into());
        Arc::new(s)
    }

    #[test]
    fn readiness_change_updates_only_the_slice_holding_the_pod() {
        let mk = |n: usize, ready_first: bool| -> Vec<Arc<Pod>> {
            (0..n)
                .map(|i| {
                    pod(
                        &format!("p{i:03}"),
                        Some(&format!("10.244.{}.{}", i / 200, i % 200 + 2)),
                        i != 0 || ready_first,
                        json!([{"name": "web", "containerPort": 80}]),
                    )
                })
                .collect()
        };
        let first = desired_endpoint_slices(&web_service(), &mk(250, true), &no_zone, &[]);
        assert_eq!(
            first
                .create
                .iter()
                .map(|s| s.endpoints.len())
                .collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        let existing: Vec<Arc<EndpointSlice>> = first
            .create
            .into_iter()
            .enumerate()
            .map(|(i, s)| named(s, &format!("demoapp-{i}")))
            .collect();
        // Nothing changed: nothing to write.
        assert!(
            desired_endpoint_slices(&web_service(), &mk(250, true), &no_zone, &existing).is_empty()
        );
        // p000 becomes not ready: one update of the slice it lives in.
        let changes = desired_endpoint_slices(&web_service(), &mk(250, false), &no_zone, &existing);
        assert!(changes.create.is_empty() && changes.delete.is_empty());
        assert_eq!(changes.update.len(), 1);
        assert_eq!(
            changes.update[0].metadata.name.as_deref(),
            Some("demoapp-0")
        );
        // Scale down to 0: one placeholder remains, the others go.
        let changes = desired_endpoint_slices(&web_service(), &[], &no_zone, &existing);
        assert_eq!(
            changes.delete,
            vec!["demoapp-1".to_string(), "demoapp-2".to_string()]
        );
        assert_eq!(changes.update.len(), 1);
        assert!(changes.update[0].endpoints.is_empty());
        assert_eq!(changes.update[0].ports, None);
        // New pods fill the slice with room before a new slice is made.
        let changes = desired_endpoint_slices(&web_service(), &mk(260, true), &no_zone, &existing);
        assert!(changes.create.is_empty());
        assert_eq!(changes.update.len(), 1);
        assert_eq!(changes.update[0].endpoints.len(), 60);
    }

    #[test]
    fn user_endpoints_are_mirrored() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "external", "namespace": "default", "uid": "ep-uid"},
            "subsets": [{"addresses": [{"ip": "192.168.1.10"}], "notReadyAddresses": [{"ip": "192.168.1.11"}],
                         "ports": [{"name": "db", "port": 3306}]}]
        }))
        .unwrap();
        let changes = mirrored_endpoint_slices(&ep, &[]);
        let got = serde_json::to_value(&changes.create).unwrap();
        assert_eq!(
            got,
            json!([{
                "addressType": "IPv4",
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "endpoints": [
                    {"addresses": ["192.168.1.10"], "conditions": {"ready": true, "serving": true, "terminating": false}},
                    {"addresses": ["192.168.1.11"], "conditions": {"ready": false, "serving": false, "terminating": false}},
                ],
                "metadata": {"generateName": "external-", "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
                               "kubernetes.io/service-name": "external"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": "external", "uid": "ep-uid",
                                         "controller": true, "blockOwnerDeletion": true}]},
                "ports": [{"name": "db", "port": 3306, "protocol": "TCP"}],
            }])
        );
    }
}
