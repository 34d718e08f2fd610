//! EndpointSlices for a selected Service (pure): an endpoint stays in the slice it lives in, new endpoints
//! fill slices with room before a new one is created, so one pod turning Ready rewrites one slice.

use super::*;

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

pub(super) fn group_key(address_type: &str, ports: &[EndpointPort]) -> GroupKey {
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

pub(super) struct Group {
    pub(super) ports: Vec<EndpointPort>,
    pub(super) endpoints: Vec<Endpoint>,
}

/// The identity of an endpoint across recomputations: its target (pod) or else its address.
pub(super) fn endpoint_id(ep: &Endpoint) -> String {
    match ep.target_ref.as_ref().and_then(|r| r.name.as_ref()) {
        Some(name) => format!("ref/{name}"),
        None => format!("ip/{}", ep.addresses.first().cloned().unwrap_or_default()),
    }
}

/// Everything a managed slice carries besides its endpoints and ports.
pub(super) struct SliceTemplate {
    pub(super) namespace: String,
    pub(super) generate_name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) owner: OwnerReference,
}

pub(super) fn sort_endpoints(eps: &mut [Endpoint]) {
    eps.sort_by_key(endpoint_id);
}

pub(super) fn place(
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

pub(super) fn new_slice(
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
