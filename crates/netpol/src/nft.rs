//! The nftables renderer (pure): model → `Ruleset` (named counters, sets, maps and chains) → an `nft -f`
//! script, either the whole table or the element/chain difference between two rulesets. One script is one
//! kernel transaction.
//!
//! Packet path, per new connection (replies are accepted by conntrack first):
//! - `egress-forward` / `egress-input` (forward and input hooks, priority 0: after the proxy's DNAT in
//!   prerouting, so the destination is the chosen pod): `ip saddr vmap @egress-pods` — an O(1) lookup of the
//!   source among this node's isolated pods, `goto isolated-egress-<policies>`.
//! - `ingress-forward` (forward hook, priority 1): `ip daddr vmap @ingress-pods` likewise for the destination.
//! - `isolated-<dir>-<ns>/<policy>[_<ns>/<policy>...]`: one chain per distinct set of isolating policies (not
//!   per pod): `jump` to each policy's chain, then count the denial on each policy's counter and drop.
//! - `<dir>-<ns>/<policy>`: one rule per (peer kind × port kind) of each policy rule, matching the rule's sets
//!   (`<dir>-<ns>/<policy>/<i>/{pods,cidrs,ports,named}`) and accepting.
//!
//! A base chain's `accept` ends only that chain, so a connection must pass both the egress and the ingress
//! chain. Traffic the node itself originates (the output hook: kubelet probes) is not policed, as upstream
//! requires. Chains and set declarations depend on the policies only; pods moving change elements only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::model::{Direction, Model, PeerSet, PortSet};

pub const TABLE: &str = "skiff-netpol";
pub const MAP_INGRESS: &str = "ingress-pods";
pub const MAP_EGRESS: &str = "egress-pods";

/// Longest chain/set/counter name we emit (the kernel allows 255 bytes); longer names end in a hash.
const MAX_NAME: usize = 200;
/// Elements per `add element` statement (keeps lines of a big script short).
const ELEMENTS_PER_LINE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    pub table: String,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            table: TABLE.to_string(),
        }
    }
}

/// A set or verdict map: `kind` is `set` or `map`, `spec` its declaration body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub kind: &'static str,
    pub spec: String,
    pub elements: BTreeSet<String>,
}

/// Everything dynamic in the table (the base chains and the two dispatch maps' declarations are the
/// skeleton; the maps' elements are here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub counters: BTreeSet<String>,
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Vec<String>>,
}

/// FNV-1a: a stable hash for shortening long names (std's hasher may change between releases).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn fit(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut cut = MAX_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{:016x}", &name[..cut], fnv(&name))
}

pub fn policy_chain(d: Direction, key: &str) -> String {
    fit(format!("{}-{key}", d.as_str()))
}

pub fn counter_name(d: Direction, key: &str) -> String {
    fit(format!("denied-{}-{key}", d.as_str()))
}

/// The chain for pods isolated by exactly these policies (keys `ns/name`, `_` cannot occur in them).
pub fn isolated_chain(d: Direction, keys: &[String]) -> String {
    fit(format!("isolated-{}-{}", d.as_str(), keys.join("_")))
}

fn rule_set(d: Direction, key: &str, rule: usize, what: &str) -> String {
    fit(format!("{}-{key}/{rule}/{what}", d.as_str()))
}

impl Ruleset {
    fn set(
        &mut self,
        name: String,
        spec: &str,
        elements: impl IntoIterator<Item = String>,
    ) -> String {
        self.sets.insert(
            name.clone(),
            Set {
                kind: "set",
                spec: spec.to_string(),
                elements: elements.into_iter().collect(),
            },
        );
        name
    }

    fn peer_matches(&mut self, d: Direction, key: &str, i: usize, peers: &PeerSet) -> Vec<String> {
        let field = match d {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        let mut out = Vec::new();
        if peers.selects_pods {
            let set = self.set(
                rule_set(d, key, i, "pods"),
                "type ipv4_addr ;",
                peers.pods.iter().map(|ip| ip.to_string()),
            );
            out.push(format!("ip {field} @{set}"));
        }
        if peers.has_blocks {
            let set = self.set(
                rule_set(d, key, i, "cidrs"),
                "type ipv4_addr ; flags interval ;",
                peers.blocks.iter().map(|r| r.to_string()),
            );
            out.push(format!("ip {field} @{set}"));
        }
        out
    }

    fn port_matches(&mut self, d: Direction, key: &str, i: usize, ports: &PortSet) -> Vec<String> {
        let mut out = Vec::new();
        if ports.has_numeric {
            let set = self.set(
                rule_set(d, key, i, "ports"),
                "type inet_proto . inet_service ; flags interval ;",
                ports.numeric.iter().map(|r| {
                    if r.first == r.last {
                        format!("{} . {}", r.protocol, r.first)
                    } else {
                        format!("{} . {}-{}", r.protocol, r.first, r.last)
                    }
                }),
            );
            out.push(format!("meta l4proto . th dport @{set}"));
        }
        if ports.has_named {
            let set = self.set(
                rule_set(d, key, i, "named"),
                "type ipv4_addr . inet_proto . inet_service ;",
                ports
                    .named
                    .iter()
                    .map(|t| format!("{} . {} . {}", t.ip, t.protocol, t.port)),
            );
            out.push(format!("ip daddr . meta l4proto . th dport @{set}"));
        }
        out
    }
}

/// The ruleset for a model.
pub fn render(model: &Model) -> Ruleset {
    let mut rs = Ruleset::default();
    for p in &model.policies {
        let key = p.key();
        for d in [Direction::Ingress, Direction::Egress] {
            let Some(rules) = p.rules(d) else { continue };
            rs.counters.insert(counter_name(d, &key));
            let mut chain = Vec::new();
            for (i, rule) in rules.iter().enumerate() {
                let peers = match &rule.peers {
                    None => vec![String::new()],
                    Some(set) => rs.peer_matches(d, &key, i, set),
                };
                let ports = match &rule.ports {
                    None => vec![String::new()],
                    Some(set) => rs.port_matches(d, &key, i, set),
                };
                for peer in &peers {
                    for port in &ports {
                        let m: Vec<&str> = [peer.as_str(), port.as_str()]
                            .into_iter()
                            .filter(|s| !s.is_empty())
                            .collect();
                        let mut r = m.join(" ");
                        if !r.is_empty() {
                            r.push(' ');
                        }
                        let _ = write!(r, "accept comment \"rule {i}\"");
                        chain.push(r);
                    }
                }
            }
            rs.chains.insert(policy_chain(d, &key), chain);
        }
    }
    for (d, isolated, map) in [
        (Direction::Ingress, &model.ingress, MAP_INGRESS),
        (Direction::Egress, &model.egress, MAP_EGRESS),
    ] {
        let mut elements = BTreeSet::new();
        for (ip, policies) in isolated {
            let keys: Vec<String> = policies.iter().map(|&i| model.policies[i].key()).collect();
            let name = isolated_chain(d, &keys);
            if !rs.chains.contains_key(&name) {
                let mut rules: Vec<String> = keys
                    .iter()
                    .map(|k| format!("jump {}", policy_chain(d, k)))
                    .collect();
                if policies.iter().any(|&i| model.policies[i].log_denied) {
                    rules.push(format!(
                        "log prefix \"skiff-netpol denied {} \" group {LOG_GROUP}",
                        d.as_str()
                    ));
                }
                let counters: Vec<String> = keys
                    .iter()
                    .map(|k| format!("counter name \"{}\"", counter_name(d, k)))
                    .collect();
                rules.push(format!("{} drop", counters.join(" ")));
                rs.chains.insert(name.clone(), rules);
            }
            elements.insert(format!("{ip} : goto {name}"));
        }
        rs.sets.insert(
            map.to_string(),
            Set {
                kind: "map",
                spec: "type ipv4_addr : verdict ;".to_string(),
                elements,
            },
        );
    }
    rs
}

/// NFLOG group denied packets of `skiff.dev/log-denied` policies are sent to.
pub const LOG_GROUP: u16 = 7465;

fn skeleton(t: &str, out: &mut String) {
    let chains = [
        ("egress-forward", "forward", 0, "saddr", MAP_EGRESS),
        ("egress-input", "input", 0, "saddr", MAP_EGRESS),
        ("ingress-forward", "forward", 1, "daddr", MAP_INGRESS),
    ];
    for (name, hook, prio, _, _) in chains {
        let _ = writeln!(
            out,
            "add chain inet {t} {name} {{ type filter hook {hook} priority {prio} ; }}"
        );
    }
    for (name, _, _, field, map) in chains {
        let _ = writeln!(
            out,
            "add rule inet {t} {name} ct state established,related accept"
        );
        let _ = writeln!(out, "add rule inet {t} {name} ip {field} vmap @{map}");
    }
}

fn write_elements<'a>(
    out: &mut String,
    t: &str,
    verb: &str,
    set: &str,
    elements: impl Iterator<Item = &'a String>,
) {
    let elements: Vec<&String> = elements.collect();
    for chunk in elements.chunks(ELEMENTS_PER_LINE) {
        let _ = write!(out, "{verb} element inet {t} {set} {{ ");
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(e);
        }
        out.push_str(" }\n");
    }
}

fn declare_set(out: &mut String, t: &str, name: &str, set: &Set) {
    let _ = writeln!(out, "add {} inet {t} {name} {{ {} }}", set.kind, set.spec);
}

/// The whole table, replacing whatever is there (counters start at zero).
pub fn full_script(rs: &Ruleset, cfg: &RenderConfig) -> String {
    let t = &cfg.table;
    let mut out = String::new();
    let _ = writeln!(out, "add table inet {t}");
    let _ = writeln!(out, "delete table inet {t}");
    let _ = writeln!(out, "add table inet {t}");
    for c in &rs.counters {
        let _ = writeln!(out, "add counter inet {t} {c}");
    }
    for (name, set) in &rs.sets {
        declare_set(&mut out, t, name, set);
    }
    for name in rs.chains.keys() {
        let _ = writeln!(out, "add chain inet {t} {name}");
    }
    skeleton(t, &mut out);
    for (name, rules) in &rs.chains {
        for r in rules {
            let _ = writeln!(out, "add rule inet {t} {name} {r}");
        }
    }
    for (name, set) in &rs.sets {
        write_elements(&mut out, t, "add", name, set.elements.iter());
    }
    out
}

/// The transaction that turns the table built from `old` into the one built from `new`; empty if equal.
/// Order matters inside one transaction: declare before use, unhook before delete.
pub fn diff_script(old: &Ruleset, new: &Ruleset, cfg: &RenderConfig) -> String {
    let t = &cfg.table;
    let mut out = String::new();
    for c in new.counters.difference(&old.counters) {
        let _ = writeln!(out, "add counter inet {t} {c}");
    }
    // A set's name determines its declaration (the suffix says its type), so a kept set is only re-filled.
    for (name, set) in &new.sets {
        if !old.sets.contains_key(name) {
            declare_set(&mut out, t, name, set);
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(out, "add chain inet {t} {name}");
        }
    }
    // Element removals first (an interval set must not hold overlapping ranges, a map one key once).
    for (name, set) in &new.sets {
        if let Some(prev) = old.sets.get(name) {
            write_elements(
                &mut out,
                t,
                "delete",
                name,
                prev.elements.difference(&set.elements),
            );
        }
    }
    // Changed chains are flushed and refilled; removed ones flushed so nothing refers to what goes next.
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(prev) if prev == rules => {}
            Some(_) => {
                let _ = writeln!(out, "flush chain inet {t} {name}");
                for r in rules {
                    let _ = writeln!(out, "add rule inet {t} {name} {r}");
                }
            }
            None => {
                for r in rules {
                    let _ = writeln!(out, "add rule inet {t} {name} {r}");
                }
            }
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            let _ = writeln!(out, "flush chain inet {t} {name}");
        }
    }
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            Some(prev) => write_elements(
                &mut out,
                t,
                "add",
                name,
                set.elements.difference(&prev.elements),
            ),
            None => write_elements(&mut out, t, "add", name, set.elements.iter()),
        }
    }
    for name in old.chains.keys() {
        if !new.chains.contains_key(name) {
            let _ = writeln!(out, "delete chain inet {t} {name}");
        }
    }
    for name in old.sets.keys() {
        if !new.sets.contains_key(name) {
            let _ = writeln!(out, "delete set inet {t} {name}");
        }
    }
    for c in old.counters.difference(&new.counters) {
        let _ = writeln!(out, "delete counter inet {t} {c}");
    }
    out
}
