//! Randomized tests: the model never panics on any policy the API types can carry, its verdicts equal a
//! direct per-packet reading of the v1 spec (an independent reference written here), and rendering plus
//! diffing never panics and is empty between equal models.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use skiff_netpol::model::{policy_types, Local, Model, PodView, Protocol};
use skiff_netpol::nft::{self, RenderConfig};

const KEYS: [&str; 3] = ["app", "tier", "kubernetes.io/metadata.name"];
const VALUES: [&str; 4] = ["a", "b", "n0", "n1"];
const NS: [&str; 3] = ["n0", "n1", "n2"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn labels(rng: &mut StdRng) -> Value {
    let mut m = serde_json::Map::new();
    for _ in 0..rng.random_range(0..3) {
        m.insert(pick(rng, &KEYS[..2]).to_string(), json!(pick(rng, &VALUES)));
    }
    Value::Object(m)
}

fn selector(rng: &mut StdRng) -> Value {
    let mut s = json!({});
    if rng.random_bool(0.5) {
        let mut m = serde_json::Map::new();
        for _ in 0..rng.random_range(0..2) {
            m.insert(pick(rng, &KEYS).to_string(), json!(pick(rng, &VALUES)));
        }
        s["matchLabels"] = Value::Object(m);
    }
    if rng.random_bool(0.4) {
        let op = *pick(rng, &["In", "NotIn", "Exists", "DoesNotExist", "Bogus"]);
        let values: Vec<&str> = match op {
            "Exists" | "DoesNotExist" => vec![],
            _ => (0..rng.random_range(1..3))
                .map(|_| *pick(rng, &VALUES))
                .collect(),
        };
        s["matchExpressions"] =
            json!([{"key": pick(rng, &KEYS), "operator": op, "values": values}]);
    }
    s
}

fn peer(rng: &mut StdRng) -> Value {
    match rng.random_range(0..5) {
        0 => {
            let cidr = *pick(
                rng,
                &[
                    "10.0.0.0/8",
                    "10.0.1.0/24",
                    "10.0.0.3/32",
                    "0.0.0.0/0",
                    "bad",
                    "10.0.0.0/40",
                    "fd00::/8",
                ],
            );
            let except: Vec<&str> = (0..rng.random_range(0..3))
                .map(|_| *pick(rng, &["10.0.0.0/30", "10.0.1.0/25", "10.0.0.4/32", "nope"]))
                .collect();
            json!({"ipBlock": {"cidr": cidr, "except": except}})
        }
        1 => json!({"podSelector": selector(rng)}),
        2 => json!({"namespaceSelector": selector(rng)}),
        3 => json!({"podSelector": selector(rng), "namespaceSelector": selector(rng)}),
        _ => json!({}),
    }
}

fn port(rng: &mut StdRng) -> Value {
    let mut p = json!({});
    if rng.random_bool(0.7) {
        p["protocol"] = json!(pick(rng, &["TCP", "UDP", "SCTP", "ICMP"]));
    }
    match rng.random_range(0..4) {
        0 => {}
        1 => p["port"] = json!(pick(rng, &["http", "dns", "none"])),
        2 => p["port"] = json!(pick(rng, &[0, 1, 80, 81, 8080, 65535, 70000, -1])),
        _ => {
            p["port"] = json!(pick(rng, &[80, 81, 1000]));
            p["endPort"] = json!(pick(rng, &[79, 81, 2000, 99999]));
        }
    }
    p
}

fn list<F: FnMut(&mut StdRng) -> Value>(rng: &mut StdRng, mut f: F) -> Option<Value> {
    match rng.random_range(0..4) {
        0 => None,
        1 => Some(json!([])),
        _ => Some(Value::Array(
            (0..rng.random_range(1..3)).map(|_| f(rng)).collect(),
        )),
    }
}

fn random_policy(rng: &mut StdRng, i: usize) -> Option<NetworkPolicy> {
    let mut spec = json!({});
    if rng.random_bool(0.9) {
        spec["podSelector"] = selector(rng);
    }
    if let Some(rules) = list(rng, |rng| {
        let mut r = json!({});
        if let Some(v) = list(rng, peer) {
            r["from"] = v;
        }
        if let Some(v) = list(rng, port) {
            r["ports"] = v;
        }
        r
    }) {
        spec["ingress"] = rules;
    }
    if let Some(rules) = list(rng, |rng| {
        let mut r = json!({});
        if let Some(v) = list(rng, peer) {
            r["to"] = v;
        }
        if let Some(v) = list(rng, port) {
            r["ports"] = v;
        }
        r
    }) {
        spec["egress"] = rules;
    }
    if rng.random_bool(0.5) {
        let types: Vec<&str> = [("Ingress", 0.6), ("Egress", 0.5)]
            .iter()
            .filter(|(_, p)| rng.random_bool(*p))
            .map(|(t, _)| *t)
            .collect();
        spec["policyTypes"] = json!(types);
    }
    serde_json::from_value(
        json!({"metadata": {"namespace": pick(rng, &NS), "name": format!("p{i}")}, "spec": spec}),
    )
    .ok()
}

fn world(rng: &mut StdRng) -> (Vec<Pod>, Vec<Namespace>) {
    let pods = (0..6)
        .map(|i| {
            let ports: Vec<(&str, &str, u16)> =
                [("http", "TCP", 80 + i as u16), ("dns", "UDP", 53)]
                    .into_iter()
                    .filter(|_| rng.random_bool(0.6))
                    .collect();
            pod(
                pick::<&str>(rng, &NS),
                &format!("pod{i}"),
                &format!("10.0.{}.{}", i % 2, i + 1),
                labels(rng),
                &ports,
            )
        })
        .collect();
    let namespaces = NS.iter().map(|n| namespace(n, labels(rng))).collect();
    (pods, namespaces)
}

// ---- the reference: the spec read literally, per packet ----

fn sel_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" if !values.is_empty() => have.is_some_and(|h| values.contains(h)),
            "NotIn" if !values.is_empty() => have.is_none_or(|h| !values.contains(h)),
            "Exists" if values.is_empty() => have.is_some(),
            "DoesNotExist" if values.is_empty() => have.is_none(),
            _ => return false, // invalid: the selector selects nothing
        };
        if !ok {
            return false;
        }
    }
    true
}

struct Ref<'a> {
    pods: &'a [Pod],
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((a, l)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u32>()) else {
        return false;
    };
    if l > 32 {
        return false;
    }
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    u32::from(ip) & mask == u32::from(a) & mask
}

impl Ref<'_> {
    fn pod_at(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(&ip.to_string()))
    }
    fn labels(p: &Pod) -> BTreeMap<String, String> {
        p.metadata.labels.clone().unwrap_or_default()
    }
    fn selects(&self, pol: &NetworkPolicy, p: &Pod) -> bool {
        p.metadata.namespace == pol.metadata.namespace
            && pol
                .spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .is_none_or(|s| sel_matches(s, &Self::labels(p)))
    }
    fn peer_admits(&self, pol: &NetworkPolicy, peer: &NetworkPolicyPeer, ip: Ipv4Addr) -> bool {
        if let Some(b) = &peer.ip_block {
            return in_cidr(ip, &b.cidr) && !b.except.iter().flatten().any(|e| in_cidr(ip, e));
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return false;
        }
        let Some(p) = self.pod_at(ip) else {
            return false;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let ns_ok = match &peer.namespace_selector {
            None => Some(&ns) == pol.metadata.namespace.as_ref(),
            Some(s) => {
                let mut l = self.ns_labels.get(&ns).cloned().unwrap_or_default();
                l.entry("kubernetes.io/metadata.name".into())
                    .or_insert(ns.clone());
                sel_matches(s, &l)
            }
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| sel_matches(s, &Self::labels(p)))
    }
    fn port_admits(
        &self,
        p: &NetworkPolicyPort,
        dst: Ipv4Addr,
        proto: Protocol,
        port: u16,
    ) -> bool {
        if Protocol::parse(p.protocol.as_deref()) != Some(proto) {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                *n >= 1 && end <= 65535 && *n <= end && (*n..=end).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => self.pod_at(dst).is_some_and(|pod| {
                pod.spec
                    .iter()
                    .flat_map(|s| &s.containers)
                    .flat_map(|c| c.ports.iter().flatten())
                    .any(|cp| {
                        cp.name.as_deref() == Some(name)
                            && Protocol::parse(cp.protocol.as_deref()) == Some(proto)
                            && cp.container_port == i32::from(port)
                    })
            }),
        }
    }
    /// Whether `end`'s isolation in this direction admits the connection (peer = the other end).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn direction_ok(
        &self,
        policies: &[NetworkPolicy],
        end: Ipv4Addr,
        peer: Ipv4Addr,
        dst: Ipv4Addr,
        proto: Protocol,
        port: u16,
        ingress: bool,
    ) -> bool {
        let Some(me) = self.pod_at(end) else {
            return true;
        };
        let mut isolated = false;
        for pol in policies {
            let (i, e) = policy_types(pol);
            if !(if ingress { i } else { e }) || !self.selects(pol, me) {
                continue;
            }
            isolated = true;
            let spec = pol.spec.clone().unwrap_or_default();
            let rules: Vec<(
                Option<Vec<NetworkPolicyPeer>>,
                Option<Vec<NetworkPolicyPort>>,
            )> = if ingress {
                spec.ingress
                    .into_iter()
                    .flatten()
                    .map(|r| (r.from, r.ports))
                    .collect()
            } else {
                spec.egress
                    .into_iter()
                    .flatten()
                    .map(|r| (r.to, r.ports))
                    .collect()
            };
            for (peers, ports) in rules {
                let peers_ok = peers.as_ref().is_none_or(|v| {
                    v.is_empty() || v.iter().any(|p| self.peer_admits(pol, p, peer))
                });
                let ports_ok = ports.as_ref().is_none_or(|v| {
                    v.is_empty() || v.iter().any(|p| self.port_admits(p, dst, proto, port))
                });
                if peers_ok && ports_ok {
                    return true;
                }
            }
        }
        !isolated
    }
}

#[test]
fn model_matches_the_spec_read_per_packet_and_never_panics() {
    let cfg = RenderConfig::default();
    let mut prev = nft::Ruleset::default();
    let mut checked = 0usize;
    for seed in 0..400u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (pods, namespaces) = world(&mut rng);
        let policies: Vec<NetworkPolicy> = (0..rng.random_range(0..5))
            .filter_map(|i| random_policy(&mut rng, i))
            .collect();
        let views: Vec<PodView> = pods.iter().filter_map(PodView::from_pod).collect();
        let model = Model::build(&policies, &views, &namespaces, Local::All);
        let reference = Ref {
            pods: &pods,
            ns_labels: namespaces
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        };
        let ips: Vec<Ipv4Addr> = views
            .iter()
            .map(|v| v.ip)
            .chain(["192.0.2.1".parse().unwrap()])
            .collect();
        for &src in &ips {
            for &dst in &ips {
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [53u16, 80, 81, 85, 1000, 1500] {
                        let got = model.evaluate(src, dst, proto, port).allowed();
                        let want = reference
                            .direction_ok(&policies, src, dst, dst, proto, port, false)
                            && reference.direction_ok(&policies, dst, src, dst, proto, port, true);
                        assert_eq!(
                            got,
                            want,
                            "seed {seed}: {src} → {dst} {proto}/{port}\npolicies: {}",
                            serde_json::to_string_pretty(&policies).unwrap()
                        );
                        checked += 1;
                    }
                }
            }
        }
        let rs = nft::render(&model);
        let _ = nft::full_script(&rs, &cfg);
        let _ = nft::diff_script(&prev, &rs, &cfg);
        assert_eq!(nft::diff_script(&rs, &rs, &cfg), "");
        prev = rs;
    }
    assert!(checked > 100_000, "{checked}");
}
