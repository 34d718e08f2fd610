//! The pure policy model: NetworkPolicies + Pods + Namespaces + which pods are this node's → per-pod verdict
//! sets, with networking.k8s.io/v1 semantics. Building it cannot fail: input the API server would reject
//! (bad selectors, CIDRs, ports) can only make a rule match nothing, so it isolates without allowing.
//!
//! The model separates *structure* (which policies, rules and kinds of peers and ports exist: it depends on the
//! policies only) from *members* (pod addresses, resolved named ports: they follow pods), so that pod churn
//! becomes element diffs in the data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as ApiSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use skiff_apimachinery::selector::LabelSelector;

use crate::cidr::{self, Range};

/// Label every namespace carries (upstream sets it on create); added here when missing so that selectors on it
/// work against any API server.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling; absent means TCP. Unknown protocols give None.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case, as nftables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// `protocol . first-last` destination ports (one port: first == last; protocol only: 0-65535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

/// A named port resolved on one destination pod: `ip . protocol . port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedTarget {
    pub ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

/// Who a rule's `from`/`to` admits. `selects_pods` / `has_blocks` say whether the rule has selector or ipBlock
/// peers at all (structure); `pods` / `blocks` are the current members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    pub selects_pods: bool,
    pub pods: BTreeSet<Ipv4Addr>,
    pub has_blocks: bool,
    pub blocks: Vec<Range>,
}

impl PeerSet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.pods.contains(&ip) || self.blocks.iter().any(|r| r.contains(ip))
    }
}

/// Which destination ports a rule admits. Named ports are resolved per destination pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    pub has_numeric: bool,
    pub numeric: BTreeSet<PortRange>,
    pub has_named: bool,
    pub named: BTreeSet<NamedTarget>,
}

impl PortSet {
    pub fn contains(&self, dst: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        self.numeric
            .iter()
            .any(|r| r.protocol == protocol && r.first <= port && port <= r.last)
            || self.named.contains(&NamedTarget {
                ip: dst,
                protocol,
                port,
            })
    }
}

/// One ingress or egress rule. `None` means "any" (a missing or empty `from`/`to`/`ports`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleModel {
    pub peers: Option<PeerSet>,
    pub ports: Option<PortSet>,
}

impl RuleModel {
    /// Whether the rule admits traffic between `peer` (the other end) and `dst` (the destination pod).
    pub fn admits(&self, peer: Ipv4Addr, dst: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        self.peers.as_ref().is_none_or(|p| p.contains(peer))
            && self
                .ports
                .as_ref()
                .is_none_or(|p| p.contains(dst, protocol, port))
    }
}

/// A policy that selects at least one of this node's pods. `ingress` / `egress` are None when the policy
/// does not have that policyType; `Some(vec![])` isolates without allowing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyModel {
    pub namespace: String,
    pub name: String,
    /// `skiff.dev/log-denied: "true"`.
    pub log_denied: bool,
    pub ingress: Option<Vec<RuleModel>>,
    pub egress: Option<Vec<RuleModel>>,
}

impl PolicyModel {
    pub fn rules(&self, d: Direction) -> Option<&[RuleModel]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The verdict sets of one node (or, for `skiff netpol why`, of the whole cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Sorted by namespace/name.
    pub policies: Vec<PolicyModel>,
    /// Local pod address → the policies (indices into `policies`) isolating it for ingress, in order.
    pub ingress: BTreeMap<Ipv4Addr, Vec<usize>>,
    /// Same for egress.
    pub egress: BTreeMap<Ipv4Addr, Vec<usize>>,
    /// Every policed pod address in the cluster → namespace/name (to name both ends in explanations).
    pub pod_names: BTreeMap<Ipv4Addr, String>,
}

/// Which pods the model programs: this node's (by address) or all of them.
#[derive(Debug, Clone, Copy)]
pub enum Local<'a> {
    All,
    Ips(&'a BTreeSet<Ipv4Addr>),
}

impl Local<'_> {
    fn has(&self, ip: Ipv4Addr) -> bool {
        match self {
            Local::All => true,
            Local::Ips(s) => s.contains(&ip),
        }
    }
}

/// What the model needs of a Pod.
#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: Value,
    /// Container ports with a name: (name, protocol, number).
    pub named_ports: Vec<(String, Protocol, u16)>,
}

impl PodView {
    /// Policy applies to pods with an IPv4 address that are not host-network and not finished (their address
    /// may already belong to another pod).
    pub fn from_pod(pod: &Pod) -> Option<PodView> {
        let status = pod.status.as_ref()?;
        let ips: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .collect();
        Self::from_pod_with_ips(pod, &ips)
    }

    /// As `from_pod`, with the addresses given (the node knows them before the API does).
    pub fn from_pod_with_ips<S: AsRef<str>>(pod: &Pod, ips: &[S]) -> Option<PodView> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network.unwrap_or(false) {
            return None;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip = ips
            .iter()
            .find_map(|s| s.as_ref().parse::<Ipv4Addr>().ok())?;
        let named_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let protocol = Protocol::parse(p.protocol.as_deref())?;
                let port = u16::try_from(p.container_port).ok().filter(|p| *p > 0)?;
                Some((name, protocol, port))
            })
            .collect();
        Some(PodView {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            labels: labels_value(pod.metadata.labels.as_ref()),
            named_ports,
        })
    }
}

fn labels_value(labels: Option<&BTreeMap<String, String>>) -> Value {
    match labels {
        Some(l) => Value::Object(
            l.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// A compiled selector; one the API server would reject selects nothing.
fn compile(sel: &ApiSelector) -> LabelSelector {
    serde_json::to_value(sel)
        .ok()
        .and_then(|v| LabelSelector::from_json(&v).ok())
        .unwrap_or(LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        })
}

struct Index<'a> {
    pods: &'a [PodView],
    by_ns: BTreeMap<&'a str, Vec<usize>>,
    namespaces: BTreeMap<String, Value>,
}

impl<'a> Index<'a> {
    fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &'a PodView> + '_ {
        self.by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .map(|&i| &self.pods[i])
    }

    /// Pods one selector peer admits (namespaceSelector and podSelector in one peer: both must match).
    fn peer_pods(&self, peer: &NetworkPolicyPeer, policy_ns: &str, out: &mut BTreeSet<Ipv4Addr>) {
        let pod_sel = peer.pod_selector.as_ref().map(compile);
        let admit = |p: &PodView| pod_sel.as_ref().is_none_or(|s| s.matches(Some(&p.labels)));
        match &peer.namespace_selector {
            None => out.extend(
                self.in_namespace(policy_ns)
                    .filter(|p| admit(p))
                    .map(|p| p.ip),
            ),
            Some(ns_sel) => {
                let ns_sel = compile(ns_sel);
                for (ns, labels) in &self.namespaces {
                    if ns_sel.matches(Some(labels)) {
                        out.extend(self.in_namespace(ns).filter(|p| admit(p)).map(|p| p.ip));
                    }
                }
            }
        }
    }

    fn peers(&self, peers: Option<&Vec<NetworkPolicyPeer>>, policy_ns: &str) -> Option<PeerSet> {
        let peers = peers.filter(|p| !p.is_empty())?;
        let mut set = PeerSet::default();
        let mut blocks = Vec::new();
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                set.has_blocks = true;
                if let Some(range) = cidr::parse_v4(&block.cidr) {
                    let except: Vec<Range> = block
                        .except
                        .iter()
                        .flatten()
                        .filter_map(|e| cidr::parse_v4(e))
                        .collect();
                    blocks.extend(cidr::subtract(range, &except));
                }
            } else if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                set.selects_pods = true;
                self.peer_pods(peer, policy_ns, &mut set.pods);
            }
            // A peer with neither is invalid and admits nobody.
        }
        set.blocks = cidr::normalize(blocks);
        Some(set)
    }

    /// `dests` are the pods named ports resolve on (the selected pods for ingress, the peers for egress).
    fn ports(
        &self,
        ports: Option<&Vec<NetworkPolicyPort>>,
        dests: impl FnOnce() -> Vec<&'a PodView>,
    ) -> Option<PortSet> {
        let ports = ports.filter(|p| !p.is_empty())?;
        let mut set = PortSet::default();
        let named = ports
            .iter()
            .any(|p| matches!(p.port, Some(IntOrString::String(_))));
        let dests = if named { dests() } else { Vec::new() };
        for p in ports {
            let protocol = Protocol::parse(p.protocol.as_deref());
            match &p.port {
                Some(IntOrString::String(name)) => {
                    set.has_named = true;
                    let Some(protocol) = protocol else { continue };
                    for pod in &dests {
                        for (n, proto, port) in &pod.named_ports {
                            if n == name && *proto == protocol {
                                set.named.insert(NamedTarget {
                                    ip: pod.ip,
                                    protocol,
                                    port: *port,
                                });
                            }
                        }
                    }
                }
                Some(IntOrString::Int(first)) => {
                    set.has_numeric = true;
                    let last = p.end_port.unwrap_or(*first);
                    let (Some(protocol), Ok(first), Ok(last)) =
                        (protocol, u16::try_from(*first), u16::try_from(last))
                    else {
                        continue;
                    };
                    if first > 0 && first <= last {
                        set.numeric.insert(PortRange {
                            protocol,
                            first,
                            last,
                        });
                    }
                }
                None => {
                    set.has_numeric = true;
                    if let Some(protocol) = protocol {
                        set.numeric.insert(PortRange {
                            protocol,
                            first: 0,
                            last: u16::MAX,
                        });
                    }
                }
            }
        }
        Some(set)
    }
}

/// Upstream's policyTypes defaulting: Ingress always, Egress when there are egress rules.
pub fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else {
        return (true, false);
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

impl Model {
    /// Build the model. `local` chooses the pods whose isolation this node programs; peers are cluster-wide.
    pub fn build<'a>(
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        pods: &[PodView],
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        local: Local<'_>,
    ) -> Model {
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_ns.entry(p.namespace.as_str()).or_default().push(i);
        }
        let namespaces = namespaces
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let mut labels = match labels_value(n.metadata.labels.as_ref()) {
                    Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                labels
                    .entry(NAMESPACE_NAME_LABEL)
                    .or_insert_with(|| Value::String(name.clone()));
                Some((name, Value::Object(labels)))
            })
            .collect();
        let index = Index {
            pods,
            by_ns,
            namespaces,
        };
        let mut sorted: Vec<&NetworkPolicy> = policies.into_iter().collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        sorted.dedup_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name) == (&b.metadata.namespace, &b.metadata.name)
        });

        let mut model = Model {
            pod_names: pods
                .iter()
                .map(|p| (p.ip, format!("{}/{}", p.namespace, p.name)))
                .collect(),
            ..Model::default()
        };
        for policy in sorted {
            let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
            let spec = policy.spec.clone().unwrap_or_default();
            let selector = spec.pod_selector.as_ref().map(compile);
            let selected: Vec<&PodView> = index
                .in_namespace(ns)
                .filter(|p| local.has(p.ip))
                .filter(|p| selector.as_ref().is_none_or(|s| s.matches(Some(&p.labels))))
                .collect();
            let (has_ingress, has_egress) = policy_types(policy);
            if selected.is_empty() || !(has_ingress || has_egress) {
                continue;
            }
            let ingress = has_ingress.then(|| {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| RuleModel {
                        peers: index.peers(r.from.as_ref(), ns),
                        ports: index.ports(r.ports.as_ref(), || selected.clone()),
                    })
                    .collect()
            });
            let egress = has_egress.then(|| {
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| {
                        let peers = index.peers(r.to.as_ref(), ns);
                        let ports = index.ports(r.ports.as_ref(), || match &peers {
                            None => pods.iter().collect(),
                            Some(set) => pods.iter().filter(|p| set.contains(p.ip)).collect(),
                        });
                        RuleModel { peers, ports }
                    })
                    .collect()
            });
            let idx = model.policies.len();
            for p in &selected {
                if has_ingress {
                    model.ingress.entry(p.ip).or_default().push(idx);
                }
                if has_egress {
                    model.egress.entry(p.ip).or_default().push(idx);
                }
            }
            model.policies.push(PolicyModel {
                namespace: ns.to_string(),
                name: policy.metadata.name.clone().unwrap_or_default(),
                log_denied: policy
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(skiff_runtime::defaults::ANNOTATION_LOG_DENIED))
                    .is_some_and(|v| v == "true"),
                ingress,
                egress,
            });
        }
        model
    }

    /// The verdict for a new connection `src → dst` on `protocol/port` (dst after Service DNAT), exactly as
    /// the data plane decides it: the source's egress and the destination's ingress must both allow.
    pub fn evaluate(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: Protocol, port: u16) -> Verdict {
        let decide = |d: Direction, isolated: Option<&Vec<usize>>, peer: Ipv4Addr| match isolated {
            None => Decision::NotIsolated,
            Some(policies) => {
                for &pi in policies {
                    for (ri, rule) in self.policies[pi].rules(d).into_iter().flatten().enumerate() {
                        if rule.admits(peer, dst, protocol, port) {
                            return Decision::Allowed {
                                policy: pi,
                                rule: ri,
                            };
                        }
                    }
                }
                Decision::Denied {
                    isolating: policies.clone(),
                }
            }
        };
        Verdict {
            egress: decide(Direction::Egress, self.egress.get(&src), dst),
            ingress: decide(Direction::Ingress, self.ingress.get(&dst), src),
        }
    }
}

/// One direction's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy with this direction selects the pod (or the end is not a local pod).
    NotIsolated,
    /// The first policy (index) and rule (index) that admit the connection.
    Allowed { policy: usize, rule: usize },
    /// Isolated by these policies and admitted by none of their rules.
    Denied { isolating: Vec<usize> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Decision,
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self.egress, Decision::Denied { .. })
            && !matches!(self.ingress, Decision::Denied { .. })
    }
}
