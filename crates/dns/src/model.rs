//! The compact, immutable DNS index and the incremental builder that produces it.
//!
//! Kubernetes objects are converted (see [`crate::convert`]) into small records as soon as they arrive, so the
//! memory held is proportional to what DNS needs, not to the size of the API objects. The builder keeps the
//! per-object inputs and publishes [`Snapshot`]s that share structure with the previous one: namespaces are
//! `Arc`ed maps and the reverse (PTR) index is sharded, so a change clones only the touched namespace and shards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

/// Transport protocol of a service port, as in `_<port>._<proto>` SRV names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Kubernetes spelling ("TCP", "UDP", "SCTP"); an absent protocol defaults to TCP as upstream does.
    pub fn from_k8s(value: Option<&str>) -> Option<Protocol> {
        match value.unwrap_or("TCP").to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A named (or unnamed: empty name) port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// Lower-cased port name; empty for unnamed ports (which get no `_<port>._<proto>` record).
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// What kind of answers a Service produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A ClusterIP (or NodePort / LoadBalancer) service: its cluster IPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: answers are the ready endpoint addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this (lower-cased, absolute) name.
    ExternalName(Box<str>),
}

/// The DNS-relevant part of a Service object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
}

/// One ready endpoint address of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `endpoints[].hostname` (lower-cased) when set (StatefulSet pods with a governing service).
    pub hostname: Option<Box<str>>,
    /// The ports of the EndpointSlice the address came from.
    pub ports: Arc<[Port]>,
}

impl Endpoint {
    /// The DNS label of this endpoint: its hostname, else its address with `.`/`:` turned into `-`,
    /// as CoreDNS's `endpoint_pod_names`-off mode does.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.to_string(),
            None => dashed_ip(&self.ip),
        }
    }
}

/// `10.244.1.5` → `10-244-1-5`, `fd00::1` → `fd00--1`.
pub fn dashed_ip(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The DNS-relevant part of an EndpointSlice: its service and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// `kubernetes.io/service-name` label (lower-cased).
    pub service: Box<str>,
    pub endpoints: Vec<Endpoint>,
}

/// A service as answered: spec plus the merged ready endpoints of all its slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
    /// Ready endpoints, de-duplicated by address, in address order (answers are stable).
    pub endpoints: Vec<Endpoint>,
}

const REVERSE_SHARDS: usize = 64;

type NamespaceMap = HashMap<Box<str>, Arc<Service>>;
type ReverseShard = HashMap<IpAddr, PtrSet>;

/// One PTR answer for an address, stored compactly: the service's name is shared by all its addresses and an
/// endpoint's dashed-IP label is derived from the address when answering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PtrTarget {
    /// `<svc>.<ns>.svc.<zone>.`
    service: Arc<str>,
    label: PtrLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PtrLabel {
    /// The address is a cluster IP: the PTR is the service name.
    ClusterIp,
    /// An endpoint without hostname: `<a-b-c-d>.<service>`.
    Dashed,
    /// An endpoint with a hostname: `<hostname>.<service>`.
    Host(Box<str>),
}

impl PtrTarget {
    fn render(&self, ip: &IpAddr) -> String {
        match &self.label {
            PtrLabel::ClusterIp => self.service.to_string(),
            PtrLabel::Dashed => format!("{}.{}", dashed_ip(ip), self.service),
            PtrLabel::Host(h) => format!("{h}.{}", self.service),
        }
    }
}

/// Almost every address has exactly one PTR target; avoid a heap vector for that case.
#[derive(Debug, Clone)]
pub(crate) enum PtrSet {
    One(PtrTarget),
    Many(Vec<PtrTarget>),
}

impl PtrSet {
    fn iter(&self) -> std::slice::Iter<'_, PtrTarget> {
        match self {
            PtrSet::One(t) => std::slice::from_ref(t).iter(),
            PtrSet::Many(v) => v.iter(),
        }
    }

    fn insert(&mut self, t: PtrTarget) {
        match self {
            PtrSet::One(first) => {
                let mut v = vec![first.clone(), t];
                v.sort();
                *self = PtrSet::Many(v);
            }
            PtrSet::Many(v) => {
                v.push(t);
                v.sort();
            }
        }
    }

    /// Remove `t`; true when the set is now empty.
    fn remove(&mut self, t: &PtrTarget) -> bool {
        match self {
            PtrSet::One(first) => first == t,
            PtrSet::Many(v) => {
                if let Some(pos) = v.iter().position(|x| x == t) {
                    v.remove(pos);
                }
                let empty = v.is_empty();
                let single = (v.len() == 1).then(|| v[0].clone());
                if let Some(only) = single {
                    *self = PtrSet::One(only);
                }
                empty
            }
        }
    }
}

/// An immutable view of the cluster that answers are computed from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) zone: Name,
    pub(crate) zone_labels: Arc<[Box<[u8]>]>,
    pub(crate) ttl: u32,
    /// SOA serial: changes whenever the published content does.
    pub(crate) serial: u32,
    /// False until Services, EndpointSlices and Namespaces have all been listed once: answers are SERVFAIL.
    pub(crate) synced: bool,
    pub(crate) namespaces: Arc<HashSet<Box<str>>>,
    pub(crate) services: Arc<HashMap<Box<str>, Arc<NamespaceMap>>>,
    pub(crate) reverse: Arc<[Arc<ReverseShard>]>,
    /// Addresses answered for `ns.dns.<zone>` (the kube-dns service's cluster IPs).
    pub(crate) dns_ips: Arc<[IpAddr]>,
}

impl Snapshot {
    /// An empty, not yet synced snapshot: in-zone queries answer SERVFAIL.
    pub fn unsynced(zone: &str, ttl: u32) -> Snapshot {
        SnapshotBuilder::new(zone, ttl).snapshot()
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(namespace)?.get(name)
    }

    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    /// PTR target names (absolute, lower-case) for `ip`, sorted; empty when the address is unknown.
    pub fn ptr_targets(&self, ip: &IpAddr) -> Vec<String> {
        match self.reverse[shard_of(ip)].get(ip) {
            Some(set) => set.iter().map(|t| t.render(ip)).collect(),
            None => Vec::new(),
        }
    }

    pub fn service_count(&self) -> usize {
        self.services.values().map(|m| m.len()).sum()
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    // The low bytes vary most between neighbouring addresses.
    let v = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[2] as usize) * 31 + o[3] as usize
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (o[14] as usize) * 31 + o[15] as usize
        }
    };
    v % REVERSE_SHARDS
}

type Key = (Box<str>, Box<str>);

/// Mutable, single-writer state fed by the watchers; [`SnapshotBuilder::snapshot`] publishes it.
#[derive(Debug)]
pub struct SnapshotBuilder {
    zone: Name,
    zone_text: String,
    zone_labels: Arc<[Box<[u8]>]>,
    ttl: u32,
    serial: u32,
    synced: bool,
    specs: HashMap<Key, ServiceSpec>,
    slices: HashMap<Key, SliceSpec>,
    /// (namespace, service) → slice names.
    slices_by_service: HashMap<Key, BTreeSet<Box<str>>>,
    namespaces: Arc<HashSet<Box<str>>>,
    services: Arc<HashMap<Box<str>, Arc<NamespaceMap>>>,
    reverse: Vec<Arc<ReverseShard>>,
    dirty: HashSet<Key>,
    changed: bool,
    dns_service: Key,
    dns_ips: Arc<[IpAddr]>,
}

impl SnapshotBuilder {
    /// `zone` is the cluster domain, e.g. `cluster.local`.
    pub fn new(zone: &str, ttl: u32) -> SnapshotBuilder {
        let zone_text = zone.trim_end_matches('.').to_ascii_lowercase();
        let zone_name = Name::from_ascii(format!("{zone_text}.")).unwrap_or_else(|_| Name::root());
        let zone_labels: Arc<[Box<[u8]>]> = zone_name
            .iter()
            .map(|l| l.to_ascii_lowercase().into_boxed_slice())
            .collect();
        SnapshotBuilder {
            zone: zone_name,
            zone_text,
            zone_labels,
            ttl,
            serial: 1,
            synced: false,
            specs: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            namespaces: Arc::new(HashSet::new()),
            services: Arc::new(HashMap::new()),
            reverse: (0..REVERSE_SHARDS)
                .map(|_| Arc::new(HashMap::new()))
                .collect(),
            dirty: HashSet::new(),
            changed: true,
            dns_service: ("kube-system".into(), "kube-dns".into()),
            dns_ips: Arc::from(Vec::new()),
        }
    }

    /// The SOA serial to publish next (CoreDNS uses the last-modified time; callers pass e.g. unix seconds).
    pub fn set_serial(&mut self, serial: u32) {
        if serial != self.serial {
            self.serial = serial;
            self.changed = true;
        }
    }

    pub fn set_synced(&mut self, synced: bool) {
        if synced != self.synced {
            self.synced = synced;
            self.changed = true;
        }
    }

    /// Whether anything changed since the last [`SnapshotBuilder::snapshot`].
    pub fn has_changes(&self) -> bool {
        self.changed || !self.dirty.is_empty()
    }

    pub fn apply_service(&mut self, spec: ServiceSpec) {
        let key = (spec.namespace.clone(), spec.name.clone());
        if self.specs.get(&key) == Some(&spec) {
            return;
        }
        self.specs.insert(key.clone(), spec);
        self.dirty.insert(key);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key: Key = (namespace.into(), name.into());
        if self.specs.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// Replace all services (after a relist): deletes those not present.
    pub fn replace_services(&mut self, specs: Vec<ServiceSpec>) {
        let keep: HashSet<Key> = specs
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .specs
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_service(&ns, &name);
        }
        for spec in specs {
            self.apply_service(spec);
        }
    }

    pub fn apply_slice(&mut self, slice: SliceSpec) {
        let key = (slice.namespace.clone(), slice.name.clone());
        if self.slices.get(&key) == Some(&slice) {
            return;
        }
        if let Some(old) = self.slices.remove(&key) {
            self.unlink_slice(&old);
        }
        let svc_key = (slice.namespace.clone(), slice.service.clone());
        self.slices_by_service
            .entry(svc_key.clone())
            .or_default()
            .insert(slice.name.clone());
        self.dirty.insert(svc_key);
        self.slices.insert(key, slice);
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let key: Key = (namespace.into(), name.into());
        if let Some(old) = self.slices.remove(&key) {
            self.unlink_slice(&old);
        }
    }

    fn unlink_slice(&mut self, old: &SliceSpec) {
        let svc_key = (old.namespace.clone(), old.service.clone());
        if let Some(set) = self.slices_by_service.get_mut(&svc_key) {
            set.remove(&old.name);
            if set.is_empty() {
                self.slices_by_service.remove(&svc_key);
            }
        }
        self.dirty.insert(svc_key);
    }

    pub fn replace_slices(&mut self, slices: Vec<SliceSpec>) {
        let keep: HashSet<Key> = slices
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_slice(&ns, &name);
        }
        for slice in slices {
            self.apply_slice(slice);
        }
    }

    pub fn apply_namespace(&mut self, name: &str) {
        if !self.namespaces.contains(name) {
            Arc::make_mut(&mut self.namespaces).insert(name.into());
            self.changed = true;
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.contains(name) {
            Arc::make_mut(&mut self.namespaces).remove(name);
            self.changed = true;
        }
    }

    pub fn replace_namespaces(&mut self, names: Vec<String>) {
        let set: HashSet<Box<str>> = names.into_iter().map(|n| n.into_boxed_str()).collect();
        if *self.namespaces != set {
            self.namespaces = Arc::new(set);
            self.changed = true;
        }
    }

    fn fqdn(&self, labels: &[&str]) -> Arc<str> {
        let mut s = String::new();
        for l in labels {
            s.push_str(l);
            s.push('.');
        }
        s.push_str(&self.zone_text);
        s.push('.');
        Arc::from(s)
    }

    /// The PTR targets a service contributes: its cluster IPs → service name, endpoints → endpoint names.
    fn ptr_entries(&self, svc: &Service) -> Vec<(IpAddr, PtrTarget)> {
        let mut out = Vec::new();
        if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            return out;
        }
        let service = self.fqdn(&[&svc.name, &svc.namespace, "svc"]);
        if let ServiceKind::ClusterIp(ips) = &svc.kind {
            for ip in ips {
                out.push((
                    *ip,
                    PtrTarget {
                        service: service.clone(),
                        label: PtrLabel::ClusterIp,
                    },
                ));
            }
        }
        for ep in &svc.endpoints {
            let label = match &ep.hostname {
                Some(h) => PtrLabel::Host(h.clone()),
                None => PtrLabel::Dashed,
            };
            out.push((
                ep.ip,
                PtrTarget {
                    service: service.clone(),
                    label,
                },
            ));
        }
        out
    }

    fn merged(&self, key: &Key) -> Option<Service> {
        let spec = self.specs.get(key)?;
        let mut by_ip: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
        if let Some(names) = self.slices_by_service.get(key) {
            for slice_name in names {
                let Some(slice) = self.slices.get(&(key.0.clone(), slice_name.clone())) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    by_ip.entry(ep.ip).or_insert_with(|| ep.clone());
                }
            }
        }
        Some(Service {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            ports: spec.ports.clone(),
            endpoints: by_ip.into_values().collect(),
        })
    }

    /// Publish the current state. Only services touched since the last call are rebuilt.
    pub fn snapshot(&mut self) -> Snapshot {
        let dirty: Vec<Key> = self.dirty.drain().collect();
        if !dirty.is_empty() {
            self.changed = true;
        }
        for key in dirty {
            let old = self
                .services
                .get(&key.0)
                .and_then(|m| m.get(&key.1))
                .cloned();
            let new = self.merged(&key).map(Arc::new);
            if old.as_deref() == new.as_deref() {
                continue;
            }
            if let Some(old) = &old {
                for (ip, target) in self.ptr_entries(old) {
                    let shard = Arc::make_mut(&mut self.reverse[shard_of(&ip)]);
                    if let Some(set) = shard.get_mut(&ip) {
                        if set.remove(&target) {
                            shard.remove(&ip);
                        }
                    }
                }
            }
            if let Some(new) = &new {
                for (ip, target) in self.ptr_entries(new) {
                    let shard = Arc::make_mut(&mut self.reverse[shard_of(&ip)]);
                    match shard.get_mut(&ip) {
                        Some(set) => set.insert(target),
                        None => {
                            shard.insert(ip, PtrSet::One(target));
                        }
                    }
                }
            }
            let services = Arc::make_mut(&mut self.services);
            match new {
                Some(new) => {
                    Arc::make_mut(services.entry(key.0.clone()).or_default())
                        .insert(key.1.clone(), new);
                }
                None => {
                    if let Some(ns) = services.get_mut(&key.0) {
                        Arc::make_mut(ns).remove(&key.1);
                        if ns.is_empty() {
                            services.remove(&key.0);
                        }
                    }
                }
            }
            if key == self.dns_service {
                let ips = match self.specs.get(&key).map(|s| &s.kind) {
                    Some(ServiceKind::ClusterIp(ips)) => ips.clone(),
                    _ => Vec::new(),
                };
                self.dns_ips = Arc::from(ips);
            }
        }
        self.changed = false;
        Snapshot {
            zone: self.zone.clone(),
            zone_labels: self.zone_labels.clone(),
            ttl: self.ttl,
            serial: self.serial,
            synced: self.synced,
            namespaces: self.namespaces.clone(),
            services: self.services.clone(),
            reverse: Arc::from(self.reverse.clone()),
            dns_ips: self.dns_ips.clone(),
        }
    }
}
