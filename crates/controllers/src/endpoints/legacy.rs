//! The legacy Endpoints object for a Service (pure), as upstream's endpoints controller builds it.

use super::*;

pub(super) fn core_ports(ports: &[EndpointPort]) -> Vec<CoreEndpointPort> {
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
