//! Which service addresses this node announces to external BGP peers (pure; cannot fail), as Calico's
//! `serviceClusterIPs` / `serviceExternalIPs` / `serviceLoadBalancerIPs` and MetalLB's BGP mode: every node
//! announces the service CIDR; a LoadBalancer ingress IP or an external IP is announced by every node, or, with
//! `externalTrafficPolicy: Local`, only by the nodes that hold a ready endpoint of the Service (the others would
//! drop the traffic). Routers then spread traffic over the announcing nodes (ECMP) and a node that stops is
//! withdrawn by BGP itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Nodes holding a ready endpoint, per `(namespace, service)`.
fn local_endpoint_nodes(slices: &[EndpointSlice]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.clone(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) else {
            continue;
        };
        let entry = out.entry((ns, svc)).or_default();
        for ep in &s.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if let (true, Some(node)) = (ready, ep.node_name.as_ref()) {
                entry.insert(node.clone());
            }
        }
    }
    out
}

/// The routes node `node` announces besides its pod CIDR.
pub fn service_routes(
    node: &str,
    service_cidr: Option<Ipv4Net>,
    services: &[Service],
    slices: &[EndpointSlice],
) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    if let Some(cidr) = service_cidr {
        out.insert(cidr.trunc());
    }
    let local = local_endpoint_nodes(slices);
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let mut ips: Vec<&str> = spec
            .external_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if spec.type_.as_deref() == Some("LoadBalancer") {
            ips.extend(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()),
            );
        }
        if ips.is_empty() {
            continue;
        }
        if spec.external_traffic_policy.as_deref() == Some("Local") {
            let key = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            if !local.get(&key).is_some_and(|nodes| nodes.contains(node)) {
                continue;
            }
        }
        for ip in ips {
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                out.insert(Ipv4Net::from(ip));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, policy: &str, lb: Option<&str>, external: &[&str]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": if lb.is_some() { "LoadBalancer" } else { "ClusterIP" },
                     "externalTrafficPolicy": policy, "externalIPs": external},
            "status": {"loadBalancer": {"ingress": lb.map(|ip| vec![serde_json::json!({"ip": ip})]).unwrap_or_default()}},
        }))
        .unwrap()
    }

    fn slice(service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": endpoints.iter().map(|(node, ready)| serde_json::json!({
                "addresses": ["10.244.1.5"], "nodeName": node, "conditions": {"ready": ready}})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn routes(node: &str, services: &[Service], slices: &[EndpointSlice]) -> Vec<String> {
        service_routes(node, "10.96.0.0/12".parse().ok(), services, slices)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn cluster_policy_is_announced_by_every_node_local_only_where_endpoints_are() {
        let services = vec![
            svc("web", "Cluster", Some("172.30.0.200"), &[]),
            svc("local", "Local", Some("172.30.0.201"), &["172.30.0.100"]),
            svc("plain", "Cluster", None, &[]),
            svc("pending", "Cluster", Some("not-an-ip"), &[]),
        ];
        let slices = vec![slice("local", &[("node-2", true), ("node-3", false)])];
        assert_eq!(
            routes("node-1", &services, &slices),
            ["10.96.0.0/12", "172.30.0.200/32"]
        );
        assert_eq!(
            routes("node-2", &services, &slices),
            [
                "10.96.0.0/12",
                "172.30.0.100/32",
                "172.30.0.200/32",
                "172.30.0.201/32"
            ]
        );
        // node-3's endpoint is not ready: it would drop the traffic, so it does not announce.
        assert_eq!(
            routes("node-3", &services, &slices),
            routes("node-1", &services, &slices)
        );
    }
}
