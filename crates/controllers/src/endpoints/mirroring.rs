//! EndpointSlice mirroring (pure): selector-less Services' custom Endpoints mirrored into slices.

use super::*;

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
