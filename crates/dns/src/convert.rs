//! Kubernetes objects → the compact specs the index keeps (pure).

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{Endpoint, Port, Protocol, ServiceKind, ServiceSpec, SliceSpec};

/// The label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

fn lower(s: &str) -> Box<str> {
    s.to_ascii_lowercase().into_boxed_str()
}

/// `None` for objects DNS does not serve (no name, an ExternalName service without a name).
pub fn service_spec(svc: &K8sService) -> Option<ServiceSpec> {
    let name = svc.metadata.name.as_deref()?;
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let spec = svc.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref()?.trim_end_matches('.');
        if target.is_empty() {
            return None;
        }
        ServiceKind::ExternalName(lower(target))
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut ips: Vec<IpAddr> = Vec::new();
        let listed = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter());
        for ip in listed {
            if let Ok(ip) = ip.parse::<IpAddr>() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: lower(p.name.as_deref().unwrap_or("")),
                protocol: Protocol::from_k8s(p.protocol.as_deref())?,
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    Some(ServiceSpec {
        namespace: lower(namespace),
        name: lower(name),
        kind,
        ports,
    })
}

/// Only ready endpoints (`conditions.ready` unset counts as ready, as upstream consumers do) of IP slices.
pub fn slice_spec(slice: &EndpointSlice) -> Option<SliceSpec> {
    let name = slice.metadata.name.as_deref()?;
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    let service = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    let ports: Arc<[Port]> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: lower(p.name.as_deref().unwrap_or("")),
                protocol: Protocol::from_k8s(p.protocol.as_deref())?,
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let mut endpoints = Vec::new();
    if slice.address_type != "FQDN" {
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                endpoints.push(Endpoint {
                    ip,
                    hostname: ep.hostname.as_deref().filter(|h| !h.is_empty()).map(lower),
                    ports: ports.clone(),
                });
            }
        }
    }
    Some(SliceSpec {
        namespace: lower(namespace),
        name: lower(name),
        service: lower(service),
        endpoints,
    })
}
