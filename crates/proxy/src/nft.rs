//! nftables backend: the model rendered as one table (`ip skiff-proxy`), as a full script or as an incremental
//! diff. Pure: text in, text out; the caller pipes a script into one `nft -f -` run, or (for diffs that only move
//! endpoints) hands the diff to `netlink`, which encodes the same change as one kernel transaction.
//!
//! Layout (see `base`): verdict maps keyed by `daddr . l4proto . dport` dispatch to one chain per service port,
//! so packet cost does not depend on the number of services. That chain picks an endpoint with one rule,
//! `dnat ip to numgen random mod N offset K map @endpoints-S`: the endpoints are elements `K + i : ip . port` of
//! one of `ENDPOINT_SHARDS` shared maps, in a block of keys owned by the chain (`EndpointGroups`). Why this shape,
//! measured on this kernel (6.18):
//! - an endpoint change is an element update of a map without verdicts: the kernel does not re-validate the
//!   table (adding a `goto` element or a rule with `dnat` walks every reachable rule, ~16 ms at 10,000 services);
//!   only a change in the number of endpoints replaces the chain's one rule;
//! - binding a map walks its elements, and adding an element checks every rule bound to the map, so one map for
//!   all endpoints is quadratic at scale; `ENDPOINT_SHARDS` maps keep both walks short;
//! - per-service sets or chains of per-endpoint rules are slower still (kernel set creation walks every set).
//!
//! Services with `sessionAffinity: ClientIP` keep a cascade of `numgen` rules with one set per endpoint (as
//! upstream kube-proxy), since the remembered endpoint must be matched per endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use crate::model::{Endpoint, Protocol, ProxyModel, ServiceKey, ServiceModel, ServicePortModel};

/// Packet mark bit meaning "masquerade this connection in postrouting" (kube-proxy's value).
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const SET_CLUSTER_IPS: &str = "cluster-ips";
pub const MAP_SERVICE_IPS: &str = "service-ips";
pub const MAP_SERVICE_NODEPORTS: &str = "service-nodeports";
pub const MAP_NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const MAP_NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// Number of `endpoints-N` maps the endpoint groups are spread over (declared when first used).
pub const ENDPOINT_SHARDS: u32 = 256;
/// Keys per endpoint group: a dispatch chain chooses among at most this many endpoints (the first ones in the
/// model's order; more endpoints behind one service port than this is far beyond upstream's guidance).
pub const GROUP_CAPACITY: u32 = 4096;

/// Backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Table name in family `ip` (tests use unique names).
    pub table: String,
    /// Pod network: sources outside it are masqueraded when they reach a ClusterIP.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Service network: traffic to unallocated ClusterIPs is dropped.
    pub service_cidr: Option<Ipv4Net>,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            table: "skiff-proxy".into(),
            cluster_cidr: "10.244.0.0/16".parse().ok(),
            service_cidr: "10.96.0.0/12".parse().ok(),
        }
    }
}

/// A set or map of the table that elements go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetName {
    /// One of the shared sets / maps of the skeleton (`SET_*`, `MAP_*`).
    Shared(&'static str),
    /// `endpoints-N`: `offset + index : ip . port`.
    Endpoints(u16),
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetName::Shared(name) => f.write_str(name),
            SetName::Endpoints(shard) => write!(f, "endpoints-{shard}"),
        }
    }
}

/// The single rule of a chain that picks one endpoint of its group at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch {
    pub protocol: Protocol,
    /// Number of endpoints (> 0).
    pub modulus: u32,
    /// First key of the group in its map.
    pub offset: u32,
    pub shard: u16,
}

impl Dispatch {
    fn rule(&self) -> String {
        let offset = match self.offset {
            0 => String::new(),
            k => format!(" offset {k}"),
        };
        format!(
            "meta l4proto {} dnat ip to numgen random mod {}{offset} map @{}",
            self.protocol.as_str(),
            self.modulus,
            SetName::Endpoints(self.shard)
        )
    }
}

/// A chain owned by one service: its name and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
    /// Set when the chain's only rule is this endpoint dispatch (then `rules` is its text).
    pub dispatch: Option<Dispatch>,
}

/// A set owned by one service (affinity): its name and declaration body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    pub name: String,
    pub decl: String,
}

/// An element of one of the shared sets / maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub set: SetName,
    pub key: String,
    pub data: Option<String>,
}

/// Everything one Service contributes to the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fragment {
    pub sets: Vec<SetDecl>,
    pub chains: Vec<Chain>,
    pub elements: Vec<Element>,
}

/// Which block of endpoint-map keys each dispatch chain owns. A chain keeps its block for its lifetime, so an
/// endpoint change never moves other chains' keys; blocks of deleted chains are reused (lowest first).
#[derive(Debug, Clone, Default)]
pub struct EndpointGroups {
    ids: HashMap<String, u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl EndpointGroups {
    fn id(&mut self, chain: &str) -> u32 {
        if let Some(&id) = self.ids.get(chain) {
            return id;
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                self.next += 1;
                self.next - 1
            }
        };
        self.ids.insert(chain.to_string(), id);
        id
    }

    fn release(&mut self, chain: &str) {
        if let Some(id) = self.ids.remove(chain) {
            self.free.insert(id);
        }
    }

    /// Keep only the groups of these chains.
    fn retain(&mut self, live: &HashSet<&str>) {
        let gone: Vec<String> = self
            .ids
            .keys()
            .filter(|c| !live.contains(c.as_str()))
            .cloned()
            .collect();
        for c in gone {
            self.release(&c);
        }
    }
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

fn v4_endpoints(eps: &[Endpoint]) -> Vec<(Ipv4Addr, u16)> {
    eps.iter()
        .filter_map(|e| v4(&e.ip).map(|ip| (ip, e.port)))
        .collect()
}

fn affinity_set(id: &str, ep: (Ipv4Addr, u16)) -> String {
    format!("affinity-{id}__{}/{}", ep.0, ep.1)
}

/// Affinity services: rules choosing one endpoint uniformly (rule i matches with probability 1/(n-i)), each
/// remembering the client in the endpoint's set, after rules sending remembered clients back to their endpoint.
fn affinity_cascade(
    p: &ServicePortModel,
    id: &str,
    eps: &[(Ipv4Addr, u16)],
    rules: &mut Vec<String>,
) {
    let proto = p.name.protocol.as_str();
    for &ep in eps {
        let set = affinity_set(id, ep);
        rules.push(format!(
            "ip saddr @{set} update @{set} {{ ip saddr }} meta l4proto {proto} dnat to {}:{}",
            ep.0, ep.1
        ));
    }
    let n = eps.len();
    for (i, &ep) in eps.iter().enumerate() {
        let pick = if n - i > 1 {
            format!("numgen random mod {} == 0 ", n - i)
        } else {
            String::new()
        };
        let set = affinity_set(id, ep);
        rules.push(format!(
            "{pick}update @{set} {{ ip saddr }} meta l4proto {proto} dnat to {}:{}",
            ep.0, ep.1
        ));
    }
}

/// Builds one service's fragment; `groups` hands out the endpoint-map key blocks.
struct FragmentBuilder<'a> {
    f: Fragment,
    groups: &'a mut EndpointGroups,
}

impl FragmentBuilder<'_> {
    fn element(&mut self, set: SetName, key: String, data: Option<String>) {
        self.f.elements.push(Element { set, key, data });
    }

    /// A chain that ends by picking one of `eps` (non-empty): `prefix` rules first, then the choice. Without
    /// affinity and without prefix rules, the chain is a dispatch chain; with prefix rules, the choice moves to
    /// a dispatch chain of its own (`pick_chain`) so that an endpoint change never touches the prefix.
    fn choosing_chain(
        &mut self,
        p: &ServicePortModel,
        name: String,
        prefix: Vec<String>,
        pick_chain: Option<String>,
        eps: &[(Ipv4Addr, u16)],
    ) {
        let id = p.name.to_string();
        let mut rules = prefix;
        if p.affinity_timeout.is_some() {
            affinity_cascade(p, &id, eps, &mut rules);
            self.f.chains.push(Chain {
                name,
                rules,
                dispatch: None,
            });
            return;
        }
        match pick_chain {
            Some(pick) if !rules.is_empty() => {
                rules.push(format!("goto {pick}"));
                self.f.chains.push(Chain {
                    name,
                    rules,
                    dispatch: None,
                });
                self.dispatch_chain(p, pick, eps);
            }
            _ => self.dispatch_chain(p, name, eps),
        }
    }

    fn dispatch_chain(&mut self, p: &ServicePortModel, name: String, eps: &[(Ipv4Addr, u16)]) {
        let group = self.groups.id(&name);
        let eps = &eps[..eps.len().min(GROUP_CAPACITY as usize)];
        let d = Dispatch {
            protocol: p.name.protocol,
            modulus: eps.len() as u32,
            offset: group.saturating_mul(GROUP_CAPACITY),
            shard: (group % ENDPOINT_SHARDS) as u16,
        };
        for (i, ep) in eps.iter().enumerate() {
            self.element(
                SetName::Endpoints(d.shard),
                (d.offset + i as u32).to_string(),
                Some(format!("{} . {}", ep.0, ep.1)),
            );
        }
        self.f.chains.push(Chain {
            name,
            rules: vec![d.rule()],
            dispatch: Some(d),
        });
    }

    fn port(&mut self, p: &ServicePortModel, cfg: &RenderConfig) {
        let id = p.name.to_string();
        let proto = p.name.protocol.as_str();
        let port = p.name.port;
        let cluster = v4_endpoints(&p.cluster_endpoints);
        let internal = v4_endpoints(p.internal_endpoints());
        let external = v4_endpoints(p.external_endpoints());
        let has_any = !cluster.is_empty();
        let svc_chain = format!("svc-{id}");
        let ext_chain = format!("ext-{id}");
        let cluster_chain = format!("cluster-{id}");
        // Without endpoints: reject at once (TCP reset / ICMP unreachable); but when endpoints exist elsewhere
        // and a Local policy hides them, drop, as upstream.
        let no_ep = |local: bool| -> String {
            if local && has_any {
                "drop".into()
            } else {
                "goto reject-chain".into()
            }
        };
        let shared = SetName::Shared;

        for ip in p.cluster_ips.iter().filter_map(v4) {
            self.element(shared(SET_CLUSTER_IPS), ip.to_string(), None);
            let key = format!("{ip} . {proto} . {port}");
            if internal.is_empty() {
                self.element(
                    shared(MAP_NO_ENDPOINT_SERVICES),
                    key,
                    Some(no_ep(p.internal_local)),
                );
            } else {
                self.element(
                    shared(MAP_SERVICE_IPS),
                    key,
                    Some(format!("goto {svc_chain}")),
                );
            }
        }
        let ext_ips: Vec<Ipv4Addr> = p
            .external_ips
            .iter()
            .chain(&p.load_balancer_ips)
            .filter_map(v4)
            .collect();
        let ext_live = p.externally_reachable() && !external.is_empty();
        for ip in &ext_ips {
            let key = format!("{ip} . {proto} . {port}");
            if ext_live {
                self.element(
                    shared(MAP_SERVICE_IPS),
                    key,
                    Some(format!("goto {ext_chain}")),
                );
            } else {
                self.element(
                    shared(MAP_NO_ENDPOINT_SERVICES),
                    key,
                    Some(no_ep(p.external_local)),
                );
            }
        }
        if let Some(np) = p.node_port {
            let key = format!("{proto} . {np}");
            if ext_live {
                self.element(
                    shared(MAP_SERVICE_NODEPORTS),
                    key,
                    Some(format!("goto {ext_chain}")),
                );
            } else {
                self.element(
                    shared(MAP_NO_ENDPOINT_NODEPORTS),
                    key,
                    Some(no_ep(p.external_local)),
                );
            }
        }

        let mut used: Vec<(Ipv4Addr, u16)> = Vec::new();
        if !internal.is_empty() {
            self.choosing_chain(p, svc_chain.clone(), Vec::new(), None, &internal);
            used.extend(&internal);
        }
        if ext_live {
            // Where traffic goes when it may use any endpoint of the cluster.
            let cluster_target = if p.internal_local {
                self.choosing_chain(p, cluster_chain.clone(), Vec::new(), None, &cluster);
                used.extend(&cluster);
                cluster_chain
            } else {
                svc_chain
            };
            if p.external_local {
                let mut prefix = Vec::new();
                if let Some(cidr) = cfg.cluster_cidr {
                    // Pods reaching an external address of the service are not "external": any endpoint will do.
                    prefix.push(format!("ip saddr {cidr} goto {cluster_target}"));
                }
                // Traffic from the node itself cannot keep its source IP (the reply would not come back).
                prefix.push("fib saddr type local jump mark-for-masquerade".into());
                prefix.push(format!("fib saddr type local goto {cluster_target}"));
                let local_chain = format!("local-{id}");
                self.choosing_chain(p, ext_chain, prefix, Some(local_chain), &external);
                used.extend(&external);
            } else {
                self.f.chains.push(Chain {
                    name: ext_chain,
                    rules: vec![
                        "jump mark-for-masquerade".into(),
                        format!("goto {cluster_target}"),
                    ],
                    dispatch: None,
                });
            }
        }
        used.sort();
        used.dedup();
        if let Some(t) = p.affinity_timeout {
            for ep in &used {
                self.f.sets.push(SetDecl {
                    name: affinity_set(&id, *ep),
                    decl: format!("{{ type ipv4_addr ; flags dynamic,timeout ; timeout {t}s ; }}"),
                });
            }
        }
    }
}

/// The fragment of one Service, with endpoint blocks from `groups`.
pub fn service_fragment(
    svc: &ServiceModel,
    cfg: &RenderConfig,
    groups: &mut EndpointGroups,
) -> Fragment {
    let mut b = FragmentBuilder {
        f: Fragment::default(),
        groups,
    };
    for p in &svc.ports {
        b.port(p, cfg);
    }
    b.f
}

/// The static skeleton: shared sets and maps, base chains and dispatch. Declarations and rules are separate
/// so that all chains exist before any rule jumps to them.
fn base(cfg: &RenderConfig) -> (Vec<String>, Vec<String>) {
    let t = &cfg.table;
    let mut decl = vec![
        format!("add set ip {t} {SET_CLUSTER_IPS} {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"),
        format!("add map ip {t} {MAP_SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"),
        format!("add map ip {t} {MAP_SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"),
        format!("add map ip {t} {MAP_NO_ENDPOINT_SERVICES} {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"services without usable endpoints: reject or drop\" ; }}"),
        format!("add map ip {t} {MAP_NO_ENDPOINT_NODEPORTS} {{ type inet_proto . inet_service : verdict ; comment \"node ports without usable endpoints: reject or drop\" ; }}"),
    ];
    let hooks = [
        ("filter-input", "filter hook input priority -110"),
        ("filter-forward", "filter hook forward priority -110"),
        ("filter-output", "filter hook output priority -110"),
        ("filter-output-post-dnat", "filter hook output priority -90"),
        ("nat-prerouting", "nat hook prerouting priority -100"),
        ("nat-output", "nat hook output priority -100"),
        ("nat-postrouting", "nat hook postrouting priority 100"),
    ];
    for (name, hook) in hooks {
        decl.push(format!("add chain ip {t} {name} {{ type {hook} ; }}"));
    }
    for name in [
        "endpoints-check",
        "cluster-ips-check",
        "reject-chain",
        "services",
        "mark-for-masquerade",
        "masquerading",
    ] {
        decl.push(format!("add chain ip {t} {name}"));
    }
    let mut rules = Vec::new();
    let mut r = |chain: &str, rule: &str| rules.push(format!("add rule ip {t} {chain} {rule}"));
    r("filter-input", "ct state new jump endpoints-check");
    r("filter-forward", "ct state new jump endpoints-check");
    // Hairpin: an endpoint reaching itself through a service leaves on the interface it came in on. It must be
    // masqueraded, or it would answer itself directly. (`fib … oif` is not allowed in postrouting, so mark here.)
    r(
        "filter-forward",
        "ct state new ct status dnat fib daddr . iif oif exists jump mark-for-masquerade comment \"hairpin\"",
    );
    r("filter-forward", "ct state new jump cluster-ips-check");
    r("filter-output", "ct state new jump endpoints-check");
    r(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    );
    r("nat-prerouting", "jump services");
    r("nat-output", "jump services");
    r("nat-postrouting", "jump masquerading");
    r(
        "endpoints-check",
        &format!("ip daddr . meta l4proto . th dport vmap @{MAP_NO_ENDPOINT_SERVICES}"),
    );
    r(
        "endpoints-check",
        &format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{MAP_NO_ENDPOINT_NODEPORTS}"),
    );
    r(
        "cluster-ips-check",
        &format!(
            "ip daddr @{SET_CLUSTER_IPS} goto reject-chain comment \"unused port of a ClusterIP\""
        ),
    );
    if let Some(cidr) = cfg.service_cidr {
        r(
            "cluster-ips-check",
            &format!("ip daddr {cidr} drop comment \"unallocated ClusterIP\""),
        );
    }
    r("reject-chain", "meta l4proto tcp reject with tcp reset");
    r("reject-chain", "reject with icmp type port-unreachable");
    if let Some(cidr) = cfg.cluster_cidr {
        // Off-cluster sources reaching a ClusterIP are masqueraded so that replies come back through this node.
        r(
            "services",
            &format!("ip daddr @{SET_CLUSTER_IPS} ip saddr != {cidr} jump mark-for-masquerade"),
        );
    }
    r(
        "services",
        &format!("ip daddr . meta l4proto . th dport vmap @{MAP_SERVICE_IPS}"),
    );
    r(
        "services",
        &format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{MAP_SERVICE_NODEPORTS}"),
    );
    r(
        "mark-for-masquerade",
        &format!("meta mark set meta mark | {MASQUERADE_MARK:#x}"),
    );
    r(
        "masquerading",
        &format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
    );
    r(
        "masquerading",
        &format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
    );
    r("masquerading", "masquerade fully-random");
    (decl, rules)
}

fn element_text(e: &Element) -> String {
    match &e.data {
        Some(d) => format!("{} : {}", e.key, d),
        None => e.key.clone(),
    }
}

/// Declaration of one endpoint map.
fn shard_decl(table: &str, shard: u16) -> String {
    format!(
        "add map ip {table} {} {{ typeof numgen random mod 1 : ip daddr . th dport ; comment \"endpoint groups: offset + index : endpoint\" ; }}",
        SetName::Endpoints(shard)
    )
}

/// What is installed in the kernel (or about to be), as far as diffs need it: reference-counted shared elements,
/// endpoint key blocks and declared endpoint maps. Services' fragments are not kept: the caller recomputes the
/// installed one from the model it installed (fragments are a pure function of model and key blocks), which
/// keeps the agent small at 10,000 services. `full` and `update` keep it in step with the changes they return.
#[derive(Debug, Default)]
pub struct Program {
    cfg: Option<RenderConfig>,
    /// Shared elements: per (set, key), how many services contribute each value. Two services may claim the
    /// same key (e.g. the same externalIP and port): the smallest value wins, deterministically, and the other
    /// takes over when the winner goes, instead of failing the whole transaction with "File exists".
    /// A small sorted vector per key (almost always one value): a BTreeMap per key cost ~0.5 KB × 110,000
    /// keys at 10,000 services. Endpoint-map elements are not counted: their keys belong to one chain.
    elements: HashMap<(SetName, String), Counts>,
    groups: EndpointGroups,
    /// Endpoint maps that exist in the table.
    shards: BTreeSet<u16>,
}

/// A change in how many services claim one value of a key.
type ElementDelta = (Option<String>, i64);

/// Values claimed for one key, sorted, with their counts (all > 0).
type Counts = Vec<(Option<String>, usize)>;

fn bump(m: &mut Counts, data: &Option<String>, d: i64) {
    match m.binary_search_by(|(k, _)| k.cmp(data)) {
        Ok(i) => {
            let n = (m[i].1 as i64 + d).max(0) as usize;
            if n == 0 {
                m.remove(i);
            } else {
                m[i].1 = n;
            }
        }
        Err(i) => {
            if d > 0 {
                // Almost always the only value: no room for more (a default Vec would hold four).
                m.reserve_exact(1);
                m.insert(i, (data.clone(), d as usize));
            }
        }
    }
}

fn installed(v: Option<&Counts>, set: SetName, key: &str) -> Option<Element> {
    v.and_then(|m| m.first()).map(|(d, _)| Element {
        set,
        key: key.to_string(),
        data: d.clone(),
    })
}

fn shards_of(elements: &[Element]) -> impl Iterator<Item = u16> + '_ {
    elements.iter().filter_map(|e| match e.set {
        SetName::Endpoints(s) => Some(s),
        SetName::Shared(_) => None,
    })
}

/// Elements added per `add element` command: large enough to keep the script short, small enough for nft.
const ELEMENT_BATCH: usize = 1000;

/// One incremental change of the table, in the order it must be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub new_shards: Vec<u16>,
    pub new_sets: Vec<SetDecl>,
    pub new_chains: Vec<Chain>,
    /// Chains whose rules are replaced (flushed and refilled).
    pub changed_chains: Vec<Chain>,
    pub deleted_elements: Vec<Element>,
    pub added_elements: Vec<Element>,
    pub gone_chains: Vec<String>,
    pub gone_sets: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }

    /// Whether the change only moves endpoints: element updates and rewritten dispatch chains, nothing created
    /// or deleted. That is the shape `netlink` encodes directly.
    pub fn moves_endpoints_only(&self) -> bool {
        self.new_shards.is_empty()
            && self.new_sets.is_empty()
            && self.new_chains.is_empty()
            && self.gone_chains.is_empty()
            && self.gone_sets.is_empty()
            && self.changed_chains.iter().all(|c| c.dispatch.is_some())
    }

    /// The change as an `nft -f` script (one transaction).
    pub fn script(&self, cfg: &RenderConfig) -> String {
        let t = &cfg.table;
        let mut out = String::new();
        // 1. New objects exist before anything refers to them.
        for shard in &self.new_shards {
            out.push_str(&shard_decl(t, *shard));
            out.push('\n');
        }
        for s in &self.new_sets {
            let _ = writeln!(out, "add set ip {t} {} {}", s.name, s.decl);
        }
        for c in &self.new_chains {
            let _ = writeln!(out, "add chain ip {t} {}", c.name);
        }
        // 2. Rewrite changed chains, fill new ones.
        for c in &self.changed_chains {
            let _ = writeln!(out, "flush chain ip {t} {}", c.name);
        }
        for c in self.new_chains.iter().chain(&self.changed_chains) {
            for r in &c.rules {
                let _ = writeln!(out, "add rule ip {t} {} {r}", c.name);
            }
        }
        // 3. Element diffs: deletions first, so a key whose value changed is re-added cleanly.
        write_elements(&mut out, t, "delete", &self.deleted_elements);
        write_elements(&mut out, t, "add", &self.added_elements);
        // 4. Gone chains: empty them all first (one may jump to another), then delete; then their sets.
        for c in &self.gone_chains {
            let _ = writeln!(out, "flush chain ip {t} {c}");
        }
        for c in &self.gone_chains {
            let _ = writeln!(out, "delete chain ip {t} {c}");
        }
        for s in &self.gone_sets {
            let _ = writeln!(out, "delete set ip {t} {s}");
        }
        out
    }
}

impl Program {
    pub fn new() -> Program {
        Program::default()
    }

    /// The fragment of one service, with its endpoint blocks (stable while its chains exist).
    pub fn fragment(&mut self, svc: &ServiceModel, cfg: &RenderConfig) -> Fragment {
        service_fragment(svc, cfg, &mut self.groups)
    }

    /// All fragments of a model.
    pub fn fragments(
        &mut self,
        model: &ProxyModel,
        cfg: &RenderConfig,
    ) -> BTreeMap<ServiceKey, Fragment> {
        model
            .services
            .iter()
            .map(|(k, s)| (k.clone(), self.fragment(s, cfg)))
            .collect()
    }

    /// Replace everything: the script recreates the table from scratch in one transaction. The fragments must
    /// come from this program's `fragment`.
    pub fn full(
        &mut self,
        cfg: &RenderConfig,
        fragments: BTreeMap<ServiceKey, Fragment>,
    ) -> String {
        let mut out = String::new();
        self.full_into(cfg, fragments, &mut out);
        out
    }

    /// `full`, written into `out` as it is rendered (the caller may stream it to `nft`).
    pub fn full_into(
        &mut self,
        cfg: &RenderConfig,
        fragments: BTreeMap<ServiceKey, Fragment>,
        out: &mut dyn Write,
    ) {
        let t = &cfg.table;
        let _ = writeln!(out, "add table ip {t}");
        let _ = writeln!(out, "delete table ip {t}");
        let _ = writeln!(
            out,
            "add table ip {t} {{ comment \"Kubernetes Services (skiff-proxy)\" ; }}"
        );
        let (decl, rules) = base(cfg);
        for l in decl {
            let _ = writeln!(out, "{l}");
        }
        self.shards = fragments
            .values()
            .flat_map(|f| shards_of(&f.elements))
            .collect();
        for shard in &self.shards {
            let _ = writeln!(out, "{}", shard_decl(t, *shard));
        }
        self.elements.clear();
        let mut order: Vec<(SetName, String)> = Vec::new();
        let mut endpoint_elements: Vec<&Element> = Vec::new();
        for f in fragments.values() {
            for s in &f.sets {
                let _ = writeln!(out, "add set ip {t} {} {}", s.name, s.decl);
            }
            for c in &f.chains {
                let _ = writeln!(out, "add chain ip {t} {}", c.name);
            }
            for e in &f.elements {
                if let SetName::Endpoints(_) = e.set {
                    endpoint_elements.push(e);
                    continue;
                }
                let k = (e.set, e.key.clone());
                let m = self.elements.entry(k.clone()).or_insert_with(|| {
                    order.push(k);
                    Vec::new()
                });
                bump(m, &e.data, 1);
            }
        }
        let mut order: Vec<Element> = order
            .iter()
            .filter_map(|(set, key)| installed(self.elements.get(&(*set, key.clone())), *set, key))
            .collect();
        order.extend(endpoint_elements.into_iter().cloned());
        for l in rules {
            let _ = writeln!(out, "{l}");
        }
        for f in fragments.values() {
            for c in &f.chains {
                for r in &c.rules {
                    let _ = writeln!(out, "add rule ip {t} {} {r}", c.name);
                }
            }
        }
        write_elements(out, t, "add", &order);
        let live: HashSet<&str> = fragments
            .values()
            .flat_map(|f| f.chains.iter().map(|c| c.name.as_str()))
            .collect();
        self.groups.retain(&live);
        self.cfg = Some(cfg.clone());
    }

    /// Whether `update` can be used (a full sync happened with this configuration).
    pub fn is_synced_with(&self, cfg: &RenderConfig) -> bool {
        self.cfg.as_ref() == Some(cfg)
    }

    /// Forget what is installed, so that the next sync is a full one (after a failed transaction).
    pub fn invalidate(&mut self) {
        self.cfg = None;
    }

    /// Move services from their installed fragments to new ones (`(installed, new)`, both from `fragment`;
    /// None: no such service). Returns the change doing exactly that (empty when nothing changed), or None when
    /// it needs a full sync (an affinity set's declaration changed, which nftables cannot alter in place).
    pub fn update(&mut self, changes: Vec<(Option<Fragment>, Option<Fragment>)>) -> Option<Diff> {
        self.cfg.as_ref()?;
        let mut diff = Diff::default();
        let mut delta: HashMap<Element, i64> = HashMap::new();
        let empty = Fragment::default();
        for (old, new) in &changes {
            let old = old.as_ref().unwrap_or(&empty);
            let new = new.as_ref().unwrap_or(&empty);
            if old == new {
                continue;
            }
            let old_sets: HashMap<&str, &str> = old
                .sets
                .iter()
                .map(|s| (s.name.as_str(), s.decl.as_str()))
                .collect();
            let new_set_names: HashSet<&str> = new.sets.iter().map(|s| s.name.as_str()).collect();
            for s in &new.sets {
                match old_sets.get(s.name.as_str()) {
                    None => diff.new_sets.push(s.clone()),
                    Some(d) if *d != s.decl => return None,
                    Some(_) => {}
                }
            }
            for s in &old.sets {
                if !new_set_names.contains(s.name.as_str()) {
                    diff.gone_sets.push(s.name.clone());
                }
            }
            let old_chains: HashMap<&str, &[String]> = old
                .chains
                .iter()
                .map(|c| (c.name.as_str(), c.rules.as_slice()))
                .collect();
            let new_names: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
            for c in &new.chains {
                match old_chains.get(c.name.as_str()) {
                    None => diff.new_chains.push(c.clone()),
                    Some(rules) if *rules != c.rules.as_slice() => {
                        diff.changed_chains.push(c.clone())
                    }
                    Some(_) => {}
                }
            }
            for c in &old.chains {
                if !new_names.contains(c.name.as_str()) {
                    diff.gone_chains.push(c.name.clone());
                }
            }
            for s in shards_of(&new.elements) {
                if self.shards.insert(s) {
                    diff.new_shards.push(s);
                }
            }
            // Endpoint-map keys belong to this service's chains alone: a plain diff (a changed value is a
            // deletion and an addition of the same key).
            let is_endpoint = |e: &&Element| matches!(e.set, SetName::Endpoints(_));
            let old_eps: HashSet<&Element> = old.elements.iter().filter(is_endpoint).collect();
            let new_eps: HashSet<&Element> = new.elements.iter().filter(is_endpoint).collect();
            for e in old
                .elements
                .iter()
                .filter(|e| !new_eps.contains(e) && is_endpoint(e))
            {
                diff.deleted_elements.push(e.clone());
            }
            for e in new
                .elements
                .iter()
                .filter(|e| !old_eps.contains(e) && is_endpoint(e))
            {
                diff.added_elements.push(e.clone());
            }
            for (elements, d) in [(&old.elements, -1), (&new.elements, 1)] {
                for e in elements.iter().filter(|e| !is_endpoint(e)) {
                    *delta.entry(e.clone()).or_insert(0) += d;
                }
            }
        }
        let mut per_key: BTreeMap<(SetName, String), Vec<ElementDelta>> = BTreeMap::new();
        for (e, d) in delta {
            if d != 0 {
                per_key.entry((e.set, e.key)).or_default().push((e.data, d));
            }
        }
        for ((set, key), changes) in per_key {
            let k = (set, key);
            let before = installed(self.elements.get(&k), set, &k.1);
            let m = self.elements.entry(k.clone()).or_default();
            for (data, d) in changes {
                bump(m, &data, d);
            }
            let after = installed(Some(m), set, &k.1);
            if m.is_empty() {
                self.elements.remove(&k);
            }
            if before != after {
                if let Some(b) = before {
                    diff.deleted_elements.push(b);
                }
                if let Some(a) = after {
                    diff.added_elements.push(a);
                }
            }
        }
        for c in &diff.gone_chains {
            self.groups.release(c);
        }
        Some(diff)
    }
}

fn write_elements(out: &mut dyn Write, table: &str, verb: &str, elements: &[Element]) {
    // Group per set, keeping first-seen order (deterministic for golden tests).
    let mut sets: Vec<SetName> = Vec::new();
    let mut per: HashMap<SetName, Vec<&Element>> = HashMap::new();
    for e in elements {
        per.entry(e.set)
            .or_insert_with(|| {
                sets.push(e.set);
                Vec::new()
            })
            .push(e);
    }
    for set in sets {
        for chunk in per[&set].chunks(ELEMENT_BATCH) {
            let items: Vec<String> = chunk
                .iter()
                .map(|e| {
                    if verb == "delete" {
                        e.key.clone()
                    } else {
                        element_text(e)
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "{verb} element ip {table} {set} {{ {} }}",
                items.join(", ")
            );
        }
    }
}

/// The full script for a model (what `nft -f -` gets on the first sync).
pub fn render_full(model: &ProxyModel, cfg: &RenderConfig) -> String {
    let mut program = Program::new();
    let fragments = program.fragments(model, cfg);
    program.full(cfg, fragments)
}

/// The lines the full script emits for one service (declarations, rules, elements), for reading and tests.
pub fn render_service(
    svc: &ServiceModel,
    cfg: &RenderConfig,
    groups: &mut EndpointGroups,
) -> String {
    let f = service_fragment(svc, cfg, groups);
    let t = &cfg.table;
    let mut out = String::new();
    for s in &f.sets {
        let _ = writeln!(out, "add set ip {t} {} {}", s.name, s.decl);
    }
    for c in &f.chains {
        let _ = writeln!(out, "add chain ip {t} {}", c.name);
    }
    for c in &f.chains {
        for r in &c.rules {
            let _ = writeln!(out, "add rule ip {t} {} {r}", c.name);
        }
    }
    let mut seen = HashSet::new();
    let els: Vec<Element> = f
        .elements
        .iter()
        .filter(|e| seen.insert((*e).clone()))
        .cloned()
        .collect();
    write_elements(&mut out, t, "add", &els);
    out
}
