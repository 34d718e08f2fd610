//! nftables backend: the model rendered as one table (`ip skiff-proxy`), as a full script or as an incremental
//! diff. Pure: text in, text out; the caller pipes it into one `nft -f -` run (one atomic kernel transaction).
//!
//! Layout (see `base_script`): verdict maps keyed by `daddr . l4proto . dport` dispatch to one chain per service
//! port, so packet cost does not depend on the number of services. Endpoint choice is a cascade of
//! `numgen random mod (n-i) == 0 ... dnat` rules inside that chain (uniform, as iptables' statistic cascade):
//! measured on this kernel, per-service anonymous or named sets make a 10,000-service transaction quadratic in the
//! kernel (set name allocation and binding walk every set / the whole batch), while chains and rules are hashed.
//! Only services with `sessionAffinity: ClientIP` get sets (one per endpoint, as upstream kube-proxy).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use crate::model::{Endpoint, ProxyModel, ServiceKey, ServiceModel, ServicePortModel};

/// Packet mark bit meaning "masquerade this connection in postrouting" (kube-proxy's value).
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const SET_CLUSTER_IPS: &str = "cluster-ips";
pub const SET_HAIRPIN: &str = "hairpin";
pub const MAP_SERVICE_IPS: &str = "service-ips";
pub const MAP_SERVICE_NODEPORTS: &str = "service-nodeports";
pub const MAP_NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const MAP_NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

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

/// A chain owned by one service: its name and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
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
    pub set: &'static str,
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

/// The rules choosing one endpoint uniformly: rule i matches with probability 1/(n-i).
fn cascade(p: &ServicePortModel, id: &str, eps: &[(Ipv4Addr, u16)], rules: &mut Vec<String>) {
    let proto = p.name.protocol.as_str();
    let update = |ep: (Ipv4Addr, u16)| -> String {
        match p.affinity_timeout {
            Some(_) => {
                let set = affinity_set(id, ep);
                format!("update @{set} {{ ip saddr }} ")
            }
            None => String::new(),
        }
    };
    if p.affinity_timeout.is_some() {
        for &ep in eps {
            let set = affinity_set(id, ep);
            rules.push(format!(
                "ip saddr @{set} {}meta l4proto {proto} dnat to {}:{}",
                update(ep),
                ep.0,
                ep.1
            ));
        }
    }
    let n = eps.len();
    for (i, &ep) in eps.iter().enumerate() {
        let pick = if n - i > 1 {
            format!("numgen random mod {} == 0 ", n - i)
        } else {
            String::new()
        };
        rules.push(format!(
            "{pick}{}meta l4proto {proto} dnat to {}:{}",
            update(ep),
            ep.0,
            ep.1
        ));
    }
}

/// The fragment of one Service.
pub fn service_fragment(svc: &ServiceModel, cfg: &RenderConfig) -> Fragment {
    let mut f = Fragment::default();
    for p in &svc.ports {
        port_fragment(p, cfg, &mut f);
    }
    f
}

fn port_fragment(p: &ServicePortModel, cfg: &RenderConfig, f: &mut Fragment) {
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
    // Without endpoints: reject at once (TCP reset / ICMP unreachable); but when endpoints exist elsewhere and
    // a Local policy hides them, drop, as upstream.
    let no_ep = |local: bool| -> String {
        if local && has_any {
            "drop".into()
        } else {
            "goto reject-chain".into()
        }
    };

    let mut used: Vec<(Ipv4Addr, u16)> = Vec::new();
    let mut el = |set: &'static str, key: String, data: Option<String>| {
        f.elements.push(Element { set, key, data });
    };
    for ip in p.cluster_ips.iter().filter_map(v4) {
        el(SET_CLUSTER_IPS, ip.to_string(), None);
        let key = format!("{ip} . {proto} . {port}");
        if internal.is_empty() {
            el(MAP_NO_ENDPOINT_SERVICES, key, Some(no_ep(p.internal_local)));
        } else {
            el(MAP_SERVICE_IPS, key, Some(format!("goto {svc_chain}")));
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
            el(MAP_SERVICE_IPS, key, Some(format!("goto {ext_chain}")));
        } else {
            el(MAP_NO_ENDPOINT_SERVICES, key, Some(no_ep(p.external_local)));
        }
    }
    if let Some(np) = p.node_port {
        let key = format!("{proto} . {np}");
        if ext_live {
            el(
                MAP_SERVICE_NODEPORTS,
                key,
                Some(format!("goto {ext_chain}")),
            );
        } else {
            el(
                MAP_NO_ENDPOINT_NODEPORTS,
                key,
                Some(no_ep(p.external_local)),
            );
        }
    }

    if !internal.is_empty() {
        let mut rules = Vec::new();
        if let Some(cidr) = cfg.cluster_cidr {
            rules.push(format!("ip saddr != {cidr} jump mark-for-masquerade"));
        }
        cascade(p, &id, &internal, &mut rules);
        used.extend(&internal);
        f.chains.push(Chain {
            name: svc_chain.clone(),
            rules,
        });
    }
    if ext_live {
        // Where traffic goes when it may use any endpoint of the cluster.
        let cluster_target = if p.internal_local {
            let mut rules = Vec::new();
            cascade(p, &id, &cluster, &mut rules);
            used.extend(&cluster);
            f.chains.push(Chain {
                name: cluster_chain.clone(),
                rules,
            });
            cluster_chain
        } else {
            svc_chain
        };
        let mut rules = Vec::new();
        if p.external_local {
            if let Some(cidr) = cfg.cluster_cidr {
                // Pods reaching an external address of the service are not "external": any endpoint will do.
                rules.push(format!("ip saddr {cidr} goto {cluster_target}"));
            }
            // Traffic from the node itself cannot keep its source IP (the reply would not come back).
            rules.push("fib saddr type local jump mark-for-masquerade".into());
            rules.push(format!("fib saddr type local goto {cluster_target}"));
            cascade(p, &id, &external, &mut rules);
            used.extend(&external);
        } else {
            rules.push("jump mark-for-masquerade".into());
            rules.push(format!("goto {cluster_target}"));
        }
        f.chains.push(Chain {
            name: ext_chain,
            rules,
        });
    }
    used.sort();
    used.dedup();
    for ep in &used {
        f.elements.push(Element {
            set: SET_HAIRPIN,
            key: format!("{} . {}", ep.0, ep.0),
            data: None,
        });
        if let Some(t) = p.affinity_timeout {
            f.sets.push(SetDecl {
                name: affinity_set(&id, *ep),
                decl: format!("{{ type ipv4_addr ; flags dynamic,timeout ; timeout {t}s ; }}"),
            });
        }
    }
}

/// The static skeleton: shared sets and maps, base chains and dispatch. Declarations and rules are separate
/// so that all chains exist before any rule jumps to them.
fn base(cfg: &RenderConfig) -> (Vec<String>, Vec<String>) {
    let t = &cfg.table;
    let mut decl = vec![
        format!("add set ip {t} {SET_CLUSTER_IPS} {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"),
        format!("add set ip {t} {SET_HAIRPIN} {{ type ipv4_addr . ipv4_addr ; comment \"endpoint . endpoint: a pod reaching itself through a service\" ; }}"),
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
        &format!(
            "ct status dnat ip saddr . ip daddr @{SET_HAIRPIN} masquerade comment \"hairpin\""
        ),
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

/// A fragment as remembered after installation: chain rules only as a hash (enough to tell a change), which
/// keeps the installed program small at 10,000 services.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stored {
    sets: Vec<SetDecl>,
    chains: Vec<(String, u64)>,
    elements: Vec<Element>,
}

fn rules_hash(rules: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

impl Stored {
    fn of(f: &Fragment) -> Stored {
        Stored {
            sets: f.sets.clone(),
            chains: f
                .chains
                .iter()
                .map(|c| (c.name.clone(), rules_hash(&c.rules)))
                .collect(),
            elements: f.elements.clone(),
        }
    }
}

/// What is installed in the kernel (or about to be): per-service fragments and reference-counted shared elements.
/// `full` and `update` keep it in step with the scripts they return.
#[derive(Debug, Default)]
pub struct Program {
    cfg: Option<RenderConfig>,
    fragments: HashMap<ServiceKey, Stored>,
    /// Shared elements: per (set, key), how many services contribute each value. Two services may claim the
    /// same key (e.g. the same externalIP and port): the smallest value wins, deterministically, and the other
    /// takes over when the winner goes, instead of failing the whole transaction with "File exists".
    /// A small sorted vector per key (almost always one value): a BTreeMap per key cost ~0.5 KB × 110,000
    /// keys at 10,000 services.
    elements: HashMap<(&'static str, String), Counts>,
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
                m.insert(i, (data.clone(), d as usize));
            }
        }
    }
}

fn installed(v: Option<&Counts>, set: &'static str, key: &str) -> Option<Element> {
    v.and_then(|m| m.first()).map(|(d, _)| Element {
        set,
        key: key.to_string(),
        data: d.clone(),
    })
}

/// Elements added per `add element` command: large enough to keep the script short, small enough for nft.
const ELEMENT_BATCH: usize = 1000;

impl Program {
    pub fn new() -> Program {
        Program::default()
    }

    /// Replace everything: the script recreates the table from scratch in one transaction.
    pub fn full(
        &mut self,
        cfg: &RenderConfig,
        fragments: BTreeMap<ServiceKey, Fragment>,
    ) -> String {
        let t = &cfg.table;
        let mut out = String::new();
        let _ = writeln!(out, "add table ip {t}");
        let _ = writeln!(out, "delete table ip {t}");
        let _ = writeln!(
            out,
            "add table ip {t} {{ comment \"Kubernetes Services (skiff-proxy)\" ; }}"
        );
        let (decl, rules) = base(cfg);
        for l in decl {
            out.push_str(&l);
            out.push('\n');
        }
        self.elements.clear();
        let mut order: Vec<(&'static str, String)> = Vec::new();
        for f in fragments.values() {
            for s in &f.sets {
                let _ = writeln!(out, "add set ip {t} {} {}", s.name, s.decl);
            }
            for c in &f.chains {
                let _ = writeln!(out, "add chain ip {t} {}", c.name);
            }
            for e in &f.elements {
                let k = (e.set, e.key.clone());
                let m = self.elements.entry(k.clone()).or_insert_with(|| {
                    order.push(k);
                    Vec::new()
                });
                bump(m, &e.data, 1);
            }
        }
        let order: Vec<Element> = order
            .iter()
            .filter_map(|(set, key)| installed(self.elements.get(&(*set, key.clone())), set, key))
            .collect();
        for l in rules {
            out.push_str(&l);
            out.push('\n');
        }
        for f in fragments.values() {
            for c in &f.chains {
                for r in &c.rules {
                    let _ = writeln!(out, "add rule ip {t} {} {r}", c.name);
                }
            }
        }
        write_elements(&mut out, t, "add", &order);
        self.fragments = fragments
            .into_iter()
            .map(|(k, f)| (k, Stored::of(&f)))
            .collect();
        self.cfg = Some(cfg.clone());
        out
    }

    /// Whether `update` can be used (a full sync happened with this configuration).
    pub fn is_synced_with(&self, cfg: &RenderConfig) -> bool {
        self.cfg.as_ref() == Some(cfg)
    }

    /// Forget what is installed, so that the next sync is a full one (after a failed transaction).
    pub fn invalidate(&mut self) {
        self.cfg = None;
    }

    /// Number of services with installed fragments.
    pub fn len(&self) -> usize {
        self.fragments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fragments.is_empty()
    }

    /// Move the given services to their new fragments (None: service gone). Returns the script doing exactly
    /// that (empty when nothing changed), or None when the change needs a full sync (an affinity set's
    /// declaration changed, which nftables cannot alter in place).
    pub fn update(&mut self, changes: Vec<(ServiceKey, Option<Fragment>)>) -> Option<String> {
        let cfg = self.cfg.clone()?;
        let t = &cfg.table;
        let mut new_sets = Vec::new();
        let mut gone_sets = Vec::new();
        let mut new_chains: Vec<&Chain> = Vec::new();
        let mut changed_chains: Vec<&Chain> = Vec::new();
        let mut gone_chains: Vec<String> = Vec::new();
        let mut delta: HashMap<Element, i64> = HashMap::new();
        let empty_stored = Stored::default();
        let empty = Fragment::default();
        let mut stored: Vec<(ServiceKey, Option<Stored>)> = Vec::with_capacity(changes.len());
        for (key, new) in &changes {
            let old = self.fragments.get(key).unwrap_or(&empty_stored);
            let new_stored = new.as_ref().map(Stored::of);
            let unchanged = new_stored.as_ref().unwrap_or(&empty_stored) == old;
            stored.push((key.clone(), new_stored));
            if unchanged {
                continue;
            }
            let new = new.as_ref().unwrap_or(&empty);
            let old_sets: HashMap<&str, &str> = old
                .sets
                .iter()
                .map(|s| (s.name.as_str(), s.decl.as_str()))
                .collect();
            let new_set_names: HashMap<&str, &str> = new
                .sets
                .iter()
                .map(|s| (s.name.as_str(), s.decl.as_str()))
                .collect();
            for s in &new.sets {
                match old_sets.get(s.name.as_str()) {
                    None => new_sets.push(s),
                    Some(d) if *d != s.decl => return None,
                    Some(_) => {}
                }
            }
            for s in &old.sets {
                if !new_set_names.contains_key(s.name.as_str()) {
                    gone_sets.push(s.name.clone());
                }
            }
            let old_chains: HashMap<&str, u64> =
                old.chains.iter().map(|(n, h)| (n.as_str(), *h)).collect();
            let new_names: HashMap<&str, ()> =
                new.chains.iter().map(|c| (c.name.as_str(), ())).collect();
            for c in &new.chains {
                match old_chains.get(c.name.as_str()) {
                    None => new_chains.push(c),
                    Some(h) if *h != rules_hash(&c.rules) => changed_chains.push(c),
                    Some(_) => {}
                }
            }
            for (name, _) in &old.chains {
                if !new_names.contains_key(name.as_str()) {
                    gone_chains.push(name.clone());
                }
            }
            for e in &old.elements {
                *delta.entry(e.clone()).or_insert(0) -= 1;
            }
            for e in &new.elements {
                *delta.entry(e.clone()).or_insert(0) += 1;
            }
        }
        let mut out = String::new();
        // 1. New objects exist before anything refers to them.
        for s in &new_sets {
            let _ = writeln!(out, "add set ip {t} {} {}", s.name, s.decl);
        }
        for c in &new_chains {
            let _ = writeln!(out, "add chain ip {t} {}", c.name);
        }
        // 2. Rewrite changed chains, fill new ones.
        for c in &changed_chains {
            let _ = writeln!(out, "flush chain ip {t} {}", c.name);
        }
        for c in new_chains.iter().chain(&changed_chains) {
            for r in &c.rules {
                let _ = writeln!(out, "add rule ip {t} {} {r}", c.name);
            }
        }
        // 3. Element diffs: deletions first, so a key whose verdict changed is re-added cleanly.
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        let mut per_key: BTreeMap<(&'static str, String), Vec<ElementDelta>> = BTreeMap::new();
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
                    dels.push(b);
                }
                if let Some(a) = after {
                    adds.push(a);
                }
            }
        }
        write_elements(&mut out, t, "delete", &dels);
        write_elements(&mut out, t, "add", &adds);
        // 4. Gone chains: empty them all first (one may jump to another), then delete; then their sets.
        for c in &gone_chains {
            let _ = writeln!(out, "flush chain ip {t} {c}");
        }
        for c in &gone_chains {
            let _ = writeln!(out, "delete chain ip {t} {c}");
        }
        for s in &gone_sets {
            let _ = writeln!(out, "delete set ip {t} {s}");
        }
        for (key, new) in stored {
            match new {
                Some(f) => {
                    self.fragments.insert(key, f);
                }
                None => {
                    self.fragments.remove(&key);
                }
            }
        }
        Some(out)
    }
}

fn write_elements(out: &mut String, table: &str, verb: &str, elements: &[Element]) {
    // Group per set, keeping first-seen order (deterministic for golden tests).
    let mut sets: Vec<&'static str> = Vec::new();
    let mut per: HashMap<&'static str, Vec<&Element>> = HashMap::new();
    for e in elements {
        per.entry(e.set)
            .or_insert_with(|| {
                sets.push(e.set);
                Vec::new()
            })
            .push(e);
    }
    for set in sets {
        for chunk in per[set].chunks(ELEMENT_BATCH) {
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

/// All fragments of a model.
pub fn fragments(model: &ProxyModel, cfg: &RenderConfig) -> BTreeMap<ServiceKey, Fragment> {
    model
        .services
        .iter()
        .map(|(k, s)| (k.clone(), service_fragment(s, cfg)))
        .collect()
}

/// The full script for a model (what `nft -f -` gets on the first sync).
pub fn render_full(model: &ProxyModel, cfg: &RenderConfig) -> String {
    Program::new().full(cfg, fragments(model, cfg))
}

/// The lines the full script emits for one service (declarations, rules, elements), for reading and tests.
pub fn render_service(svc: &ServiceModel, cfg: &RenderConfig) -> String {
    let f = service_fragment(svc, cfg);
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
    let mut seen = std::collections::HashSet::new();
    let els: Vec<Element> = f
        .elements
        .iter()
        .filter(|e| seen.insert((*e).clone()))
        .cloned()
        .collect();
    write_elements(&mut out, t, "add", &els);
    out
}
