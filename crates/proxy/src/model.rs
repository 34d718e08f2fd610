//! The pure rule model: Services + EndpointSlices + this node → what the data plane must do, independent of the
//! backend (nftables today; iptables or userspace could render the same model). Building it cannot fail:
//! objects the proxy cannot serve (headless, ExternalName, unknown protocols, IPv6 on an IPv4 table) are skipped,
//! as upstream kube-proxy skips them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the Kubernetes spelling (`TCP`, `UDP`, `SCTP`; absent means TCP).
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case name as nftables and conntrack spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of one Service: `namespace/name/protocol/port` (the port number is unique per protocol).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The Service port's name (matches EndpointSlice port names); may be empty.
    pub port_name: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.as_str(),
            self.port
        )
    }
}

/// A backend chosen for a service port: the pod address and the target port resolved from its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// Everything the data plane needs for one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortModel {
    pub name: ServicePortName,
    /// `spec.clusterIPs` (empty for services the proxy only exposes externally, which do not exist upstream).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (only meaningful when the service is reachable from outside).
    pub external_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Endpoints for cluster-wide policy: the ready ones, or the serving terminating ones when none is ready.
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints on this node, with the same terminating fallback.
    pub local_endpoints: Vec<Endpoint>,
}

impl ServicePortModel {
    /// Whether the service accepts traffic from outside the cluster network (NodePort, externalIPs, LB).
    pub fn externally_reachable(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Endpoints ClusterIP traffic goes to.
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        if self.internal_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Endpoints NodePort / externalIP / LoadBalancer traffic from outside goes to.
    pub fn external_endpoints(&self) -> &[Endpoint] {
        if self.external_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Whether the service has any usable endpoint anywhere (decides reject versus drop).
    pub fn has_endpoints(&self) -> bool {
        !self.cluster_endpoints.is_empty()
    }

    /// Every service address (ClusterIPs, externalIPs, LB IPs) clients may have used.
    pub fn service_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.cluster_ips
            .iter()
            .chain(&self.external_ips)
            .chain(&self.load_balancer_ips)
    }
}

/// The health check node port server of an `externalTrafficPolicy: Local` LoadBalancer service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// One Service as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceModel {
    pub ports: Vec<ServicePortModel>,
    pub health_check: Option<HealthCheck>,
    /// LoadBalancer addresses this node must answer ARP for (the Service names this node as its LB node).
    pub announce_ips: Vec<IpAddr>,
}

/// Who and where this proxy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// The whole model: one entry per served Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyModel {
    pub services: BTreeMap<ServiceKey, ServiceModel>,
}

impl ProxyModel {
    /// Build the model for all services. Slices are matched to services by the `kubernetes.io/service-name` label.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node: &NodeContext,
    ) -> ProxyModel {
        let mut by_service: BTreeMap<ServiceKey, Vec<SliceInfo>> = BTreeMap::new();
        for slice in slices {
            if let (Some(key), Some(info)) =
                (slice_service_key(slice), SliceInfo::from_slice(slice))
            {
                by_service.entry(key).or_default().push(info);
            }
        }
        let mut model = ProxyModel::default();
        for svc in services {
            let Some(key) = service_key(svc) else {
                continue;
            };
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(m) = service_model(svc, slices.iter(), node) {
                model.services.insert(key, m);
            }
        }
        model
    }
}

pub fn service_key(svc: &Service) -> Option<ServiceKey> {
    Some((
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        svc.metadata.name.clone()?,
    ))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_service_key(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(skiff_runtime::defaults::LABEL_SERVICE_NAME)?;
    Some((
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name.clone(),
    ))
}

fn parse_ips<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = v.into_iter().filter_map(|s| s.parse().ok()).collect();
    out.sort();
    out.dedup();
    out
}

/// The parts of an EndpointSlice the proxy uses, kept instead of the whole object (memory at scale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    /// Shared between endpoints (`State` interns node names: 100,000 endpoints name a handful of nodes).
    pub node_name: Option<std::sync::Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl SliceInfo {
    /// None for slices of other address types (FQDN).
    pub fn from_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return None;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::parse(p.protocol.as_deref()),
                port: p.port.and_then(|p| u16::try_from(p).ok()),
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|ep| {
                let ip = ep.addresses.first()?.parse::<IpAddr>().ok()?;
                let cond = ep.conditions.as_ref();
                // Upstream semantics: unknown readiness is ready; serving defaults to ready.
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                Some(SliceEndpoint {
                    ip,
                    node_name: ep.node_name.as_deref().map(std::sync::Arc::from),
                    ready,
                    serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                })
            })
            .collect();
        Some(SliceInfo { ports, endpoints })
    }
}

/// One endpoint as read from a slice, before the policy choice.
struct Candidate {
    ep: Endpoint,
    local: bool,
    ready: bool,
    serving_terminating: bool,
}

/// The model of one Service, or None when the proxy does not serve it (headless, ExternalName, no IPs).
pub fn service_model<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    node: &NodeContext,
) -> Option<ServiceModel> {
    let spec = svc.spec.as_ref()?;
    let (namespace, name) = service_key(svc)?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut cluster_ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if cluster_ips.is_empty() {
        cluster_ips.extend(spec.cluster_ip.iter());
    }
    if cluster_ips.iter().any(|ip| ip.as_str() == "None") {
        return None; // headless: DNS only
    }
    let cluster_ips = parse_ips(cluster_ips);
    if cluster_ips.is_empty() {
        return None;
    }
    let external_ips = parse_ips(spec.external_ips.iter().flatten());
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let load_balancer_ips = if is_lb {
        parse_ips(
            svc.status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.ip.as_ref()),
        )
    } else {
        Vec::new()
    };
    let has_node_ports = matches!(
        spec.type_.as_deref(),
        Some("NodePort") | Some("LoadBalancer")
    );
    let externally_reachable =
        has_node_ports || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let external_local =
        externally_reachable && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(10800)
    });

    let slices: Vec<&SliceInfo> = slices.into_iter().collect();

    let mut ports = Vec::new();
    let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let port_name = sp.name.clone().unwrap_or_default();
        let mut candidates: BTreeMap<Endpoint, Candidate> = BTreeMap::new();
        for slice in &slices {
            // The slice port with the same name and protocol gives the target port of this slice's endpoints
            // (a named targetPort can resolve to different numbers in different pods, hence per slice).
            let Some(target) = slice
                .ports
                .iter()
                .find(|p| p.name == port_name && p.protocol == Some(protocol))
            else {
                continue;
            };
            let Some(target_port) = target.port else {
                continue;
            };
            for ep in &slice.endpoints {
                let (ip, ready, serving, terminating) =
                    (ep.ip, ep.ready, ep.serving, ep.terminating);
                let local = ep.node_name.as_deref() == Some(node.name.as_str());
                if local && ready {
                    local_ready.insert(ip);
                }
                let e = Endpoint {
                    ip,
                    port: target_port,
                };
                candidates.entry(e).or_insert(Candidate {
                    ep: e,
                    local,
                    ready,
                    serving_terminating: serving && terminating,
                });
            }
        }
        let pick = |only_local: bool| -> Vec<Endpoint> {
            let pool = || candidates.values().filter(move |c| !only_local || c.local);
            let ready: Vec<Endpoint> = pool().filter(|c| c.ready).map(|c| c.ep).collect();
            if !ready.is_empty() {
                return ready;
            }
            // As upstream: when nothing is ready, keep sending to endpoints that still serve while terminating,
            // so a rolling update does not drop traffic.
            pool()
                .filter(|c| c.serving_terminating)
                .map(|c| c.ep)
                .collect()
        };
        let mut cluster_endpoints = pick(false);
        let mut local_endpoints = pick(true);
        cluster_endpoints.shrink_to_fit();
        local_endpoints.shrink_to_fit();
        ports.push(ServicePortModel {
            name: ServicePortName {
                namespace: namespace.clone(),
                name: name.clone(),
                protocol,
                port,
                port_name,
            },
            cluster_ips: cluster_ips.clone(),
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            node_port: if has_node_ports {
                sp.node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
            } else {
                None
            },
            internal_local,
            external_local,
            affinity_timeout,
            cluster_endpoints,
            local_endpoints,
        });
    }
    ports.sort_by(|a, b| a.name.cmp(&b.name));

    let health_check = if is_lb && external_local {
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .map(|port| HealthCheck {
                port,
                local_endpoints: local_ready.len(),
            })
    } else {
        None
    };
    let lb_node = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(skiff_runtime::defaults::ANNOTATION_LB_NODE));
    let announce_ips = if lb_node.map(String::as_str) == Some(node.name.as_str()) {
        load_balancer_ips
    } else {
        Vec::new()
    };
    // Models live as long as their service; exact capacities save ~0.6 KB per service at 10,000 services.
    ports.shrink_to_fit();
    Some(ServiceModel {
        ports,
        health_check,
        announce_ips,
    })
}
