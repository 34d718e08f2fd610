//! Upstream's NetworkPolicy conformance cases (test/e2e/network/netpol/network_policy.go), as data: the same
//! setup (namespaces x, y, z; pods a, b, c in each, labelled `pod: <name>`, serving 80 and 81 over TCP and
//! UDP with named ports `serve-<port>-<proto>`), the same policies and steps, and each step's expected 9×9
//! reachability table written as upstream writes it (`ExpectPeer`, `ExpectAllIngress`, ...). The pure model
//! tests and the end-to-end test on a real cluster both run these; loopback (a pod to itself) is not judged,
//! as upstream does not judge it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::model::Protocol;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// Container ports every pod serves: (name, protocol, port).
pub const SERVED: [(&str, &str, u16); 4] = [
    ("serve-80-tcp", "TCP", 80),
    ("serve-81-tcp", "TCP", 81),
    ("serve-80-udp", "UDP", 80),
    ("serve-81-udp", "UDP", 81),
];

/// Real names and addresses of the fixture (namespaces get unique names on a shared cluster).
#[derive(Debug, Clone)]
pub struct Env {
    /// Actual names of x, y, z.
    pub namespaces: [String; 3],
    /// "x/a" → pod IP.
    pub ips: BTreeMap<String, Ipv4Addr>,
}

impl Env {
    pub fn ns(&self, logical: &str) -> &str {
        let i = NAMESPACES.iter().position(|n| *n == logical).unwrap_or(0);
        &self.namespaces[i]
    }

    pub fn ip(&self, pod: &str) -> Ipv4Addr {
        self.ips.get(pod).copied().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// Index 0..9 of a logical pod ("y/b" → 4).
pub fn index(pod: &str) -> usize {
    let (ns, p) = pod.split_once('/').unwrap_or(("x", "a"));
    let n = NAMESPACES.iter().position(|x| *x == ns).unwrap_or(0);
    let q = PODS.iter().position(|x| *x == p).unwrap_or(0);
    n * 3 + q
}

pub fn pod_name(i: usize) -> String {
    format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3])
}

/// Upstream's `Peer`: a namespace and/or pod name; None matches any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub ns: Option<&'static str>,
    pub pod: Option<&'static str>,
}

impl Peer {
    fn matches(&self, i: usize) -> bool {
        self.ns.is_none_or(|n| n == NAMESPACES[i / 3]) && self.pod.is_none_or(|p| p == PODS[i % 3])
    }
}

pub const ANY: Peer = Peer {
    ns: None,
    pod: None,
};
pub const fn ns(n: &'static str) -> Peer {
    Peer {
        ns: Some(n),
        pod: None,
    }
}
pub const fn pod(n: &'static str, p: &'static str) -> Peer {
    Peer {
        ns: Some(n),
        pod: Some(p),
    }
}

/// A 9×9 table: `table[from][to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachability(pub [[bool; 9]; 9]);

impl Reachability {
    pub fn new(default: bool) -> Self {
        Reachability([[default; 9]; 9])
    }
    pub fn peer(mut self, from: Peer, to: Peer, v: bool) -> Self {
        for f in 0..9 {
            for t in 0..9 {
                if from.matches(f) && to.matches(t) {
                    self.0[f][t] = v;
                }
            }
        }
        self
    }
    pub fn all_ingress(self, to: &'static str, v: bool) -> Self {
        let (n, p) = to.split_once('/').unwrap_or(("x", "a"));
        self.peer(ANY, pod(n, p), v)
    }
    pub fn all_egress(self, from: &'static str, v: bool) -> Self {
        let (n, p) = from.split_once('/').unwrap_or(("x", "a"));
        self.peer(pod(n, p), ANY, v)
    }
    pub fn one(mut self, from: &str, to: &str, v: bool) -> Self {
        self.0[index(from)][index(to)] = v;
        self
    }

    /// Pairs (from, to) where `observed` differs, loopback excluded.
    pub fn mismatches(&self, observed: &Reachability) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for f in 0..9 {
            for t in 0..9 {
                if f != t && self.0[f][t] != observed.0[f][t] {
                    out.push((f, t));
                }
            }
        }
        out
    }

    /// Upstream's truth-table printout: rows are clients, columns servers; `.` marks loopback.
    pub fn render(&self) -> String {
        let mut out = String::from("      ");
        for t in 0..9 {
            let _ = write!(out, "{:>4}", pod_name(t));
        }
        out.push('\n');
        for f in 0..9 {
            let _ = write!(out, "{:>6}", pod_name(f));
            for t in 0..9 {
                let c = if f == t {
                    "."
                } else if self.0[f][t] {
                    "X"
                } else {
                    "-"
                };
                let _ = write!(out, "{c:>4}");
            }
            out.push('\n');
        }
        out
    }
}

/// What a step does to the cluster before checking.
pub enum Action {
    /// Create (or replace, if it exists) a policy in a logical namespace; built from the environment.
    Apply(&'static str, fn(&Env) -> Value),
    DeleteAllPolicies,
    /// Set (Some) or remove (None) a label on a logical namespace.
    LabelNamespace(&'static str, &'static str, Option<&'static str>),
    /// Set a label on a logical pod ("x/b").
    LabelPod(&'static str, &'static str, &'static str),
}

pub struct Check {
    pub protocol: Protocol,
    pub port: u16,
    pub expect: Reachability,
}

pub struct Step {
    pub actions: Vec<Action>,
    pub checks: Vec<Check>,
}

pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

/// A policy as upstream's `GenNetworkPolicyWithNameAndPodSelector` + `SetSpecIngressRules` /
/// `SetSpecEgressRules` build it: policyTypes list exactly the directions given.
pub fn policy(
    name: &str,
    selector: Value,
    ingress: Option<Vec<Value>>,
    egress: Option<Vec<Value>>,
) -> Value {
    let mut spec = json!({"podSelector": selector});
    let mut types = Vec::new();
    if let Some(rules) = ingress {
        types.push("Ingress");
        spec["ingress"] = Value::Array(rules);
    }
    if let Some(rules) = egress {
        types.push("Egress");
        spec["egress"] = Value::Array(rules);
    }
    spec["policyTypes"] = json!(types);
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// `{"matchLabels": {k: v, ...}}`.
pub fn labels(pairs: &[(&str, &str)]) -> Value {
    let m: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({ "matchLabels": m })
}

fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
}

const NS_LABEL: &str = "kubernetes.io/metadata.name";

fn check(protocol: Protocol, port: u16, expect: Reachability) -> Check {
    Check {
        protocol,
        port,
        expect,
    }
}

fn tcp(port: u16, expect: Reachability) -> Check {
    check(Protocol::Tcp, port, expect)
}

fn step(actions: Vec<Action>, checks: Vec<Check>) -> Step {
    Step { actions, checks }
}

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case { name, steps }
}

use Action::*;

const T: bool = true;
const F: bool = false;

fn r() -> Reachability {
    Reachability::new(true)
}

/// The 42 TCP cases of upstream's suite, plus one for `endPort`.
pub fn tcp_cases() -> Vec<Case> {
    vec![
        case("should support a 'default-deny-ingress' policy", vec![step(
            vec![Apply("x", |_| policy("deny-ingress", json!({}), Some(vec![]), None))],
            vec![tcp(80, r().peer(ANY, ns("x"), F))],
        )]),
        case("should support a 'default-deny-all' policy", vec![step(
            vec![Apply("x", |_| policy("deny-all", json!({}), Some(vec![]), Some(vec![])))],
            vec![tcp(80, r().peer(ANY, ns("x"), F).peer(ns("x"), ANY, F))],
        )]),
        case("should enforce policy to allow traffic from pods within server namespace based on PodSelector", vec![step(
            vec![Apply("x", |_| policy("x-a-allows-x-b", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"podSelector": labels(&[("pod", "b")])}]})]), None))],
            vec![tcp(80, r().all_ingress("x/a", F).one("x/b", "x/a", T))],
        )]),
        case("should enforce policy to allow ingress traffic for a target", vec![step(
            vec![
                Apply("x", |_| policy("deny-all", json!({}), Some(vec![]), None)),
                Apply("x", |_| policy("allow-all-to-a", labels(&[("pod", "a")]),
                    Some(vec![json!({"from": [{"podSelector": {}, "namespaceSelector": {}}]})]), None)),
            ],
            vec![tcp(80, r().all_ingress("x/a", T).all_ingress("x/b", F).all_ingress("x/c", F))],
        )]),
        case("should enforce policy to allow ingress traffic from pods in all namespaces", vec![step(
            vec![Apply("x", |_| policy("allow-from-another-ns", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"namespaceSelector": {"matchLabels": {}}}]})]), None))],
            vec![tcp(80, r())],
        )]),
        case("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-ns-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}]})]), None))],
            vec![tcp(80, r().peer(ns("x"), pod("x", "a"), F).peer(ns("z"), pod("x", "a"), F))],
        )]),
        case("should enforce policy based on PodSelector with MatchExpressions", vec![step(
            vec![Apply("x", |_| policy("x-a-allows-x-b", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"podSelector": expr("pod", "In", &["b"])}]})]), None))],
            vec![tcp(80, r().all_ingress("x/a", F).one("x/b", "x/a", T))],
        )]),
        case("should enforce policy based on NamespaceSelector with MatchExpressions", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-match-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"namespaceSelector": expr(NS_LABEL, "In", &[e.ns("y")])}]})]), None))],
            vec![tcp(80, r().peer(ns("x"), pod("x", "a"), F).peer(ns("z"), pod("x", "a"), F))],
        )]),
        case("should enforce policy based on PodSelector or NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-match-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [
                    {"namespaceSelector": expr(NS_LABEL, "NotIn", &[e.ns("x")])},
                    {"podSelector": labels(&[("pod", "b")])},
                ]})]), None))],
            vec![tcp(80, r().one("x/a", "x/a", F).one("x/c", "x/a", F))],
        )]),
        case("should enforce policy based on PodSelector and NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-podselector-and-nsselector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{
                    "namespaceSelector": expr(NS_LABEL, "NotIn", &[e.ns("x")]),
                    "podSelector": labels(&[("pod", "b")]),
                }]})]), None))],
            vec![tcp(80, r().all_ingress("x/a", F).one("y/b", "x/a", T).one("z/b", "x/a", T))],
        )]),
        case("should enforce policy based on Multiple PodSelectors and NamespaceSelectors", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-z-pod-b-c", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{
                    "namespaceSelector": expr(NS_LABEL, "NotIn", &[e.ns("x")]),
                    "podSelector": expr("pod", "In", &["b", "c"]),
                }]})]), None))],
            vec![tcp(80, r().peer(ns("x"), pod("x", "a"), F).one("y/a", "x/a", F).one("z/a", "x/a", F))],
        )]),
        case("should enforce policy based on any PodSelectors", vec![step(
            vec![Apply("x", |_| policy("allow-ns-x-pod-b-c", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [
                    {"podSelector": labels(&[("pod", "b")])},
                    {"podSelector": labels(&[("pod", "c")])},
                ]})]), None))],
            vec![tcp(80, r().all_ingress("x/a", F).one("x/b", "x/a", T).one("x/c", "x/a", T))],
        )]),
        case("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-pod-a-via-namespace-pod-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{
                    "namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))]),
                    "podSelector": labels(&[("pod", "a")]),
                }]})]), None))],
            vec![tcp(80, r().all_ingress("x/a", F).one("y/a", "x/a", T))],
        )]),
        case("should enforce policy based on Ports", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-ns-selector", labels(&[("pod", "a")]),
                Some(vec![json!({
                    "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                    "ports": [{"port": 81, "protocol": "TCP"}],
                })]), None))],
            vec![tcp(81, r().peer(ns("x"), pod("x", "a"), F).peer(ns("y"), pod("x", "a"), T).peer(ns("z"), pod("x", "a"), F))],
        )]),
        case("should enforce multiple, stacked policies with overlapping podSelectors", vec![
            step(
                vec![Apply("x", |e| policy("allow-client-a-via-ns-selector", labels(&[("pod", "a")]),
                    Some(vec![json!({
                        "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                        "ports": [{"port": 81, "protocol": "TCP"}],
                    })]), None))],
                vec![
                    tcp(81, r().peer(ns("x"), pod("x", "a"), F).peer(ns("y"), pod("x", "a"), T).peer(ns("z"), pod("x", "a"), F)),
                    tcp(80, r().all_ingress("x/a", F)),
                ],
            ),
            step(
                vec![Apply("x", |e| policy("allow-client-a-via-ns-selector-80", labels(&[("pod", "a")]),
                    Some(vec![json!({
                        "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                        "ports": [{"port": 80, "protocol": "TCP"}],
                    })]), None))],
                vec![tcp(80, r().peer(ns("x"), pod("x", "a"), F).peer(ns("y"), pod("x", "a"), T).peer(ns("z"), pod("x", "a"), F))],
            ),
        ]),
        case("should support allow-all policy", vec![step(
            vec![Apply("x", |_| policy("allow-all", labels(&[]), Some(vec![json!({})]), None))],
            vec![tcp(80, r()), tcp(81, r())],
        )]),
        case("should allow ingress access on one named port", vec![step(
            vec![Apply("x", |_| policy("allow-all", labels(&[]),
                Some(vec![json!({"ports": [{"port": "serve-81-tcp"}]})]), None))],
            vec![tcp(81, r()), tcp(80, r().peer(ANY, ns("x"), F))],
        )]),
        case("should allow ingress access from namespace on one named port", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-ns-selector-80", labels(&[("pod", "a")]),
                Some(vec![json!({
                    "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                    "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}],
                })]), None))],
            vec![
                tcp(80, r().peer(ns("x"), pod("x", "a"), F).peer(ns("z"), pod("x", "a"), F)),
                tcp(81, r().all_ingress("x/a", F)),
            ],
        )]),
        case("should allow egress access on one named port", vec![step(
            vec![Apply("x", |_| policy("allow-egress", labels(&[]), None,
                Some(vec![json!({"ports": [{"port": "serve-80-tcp"}]})])))],
            vec![tcp(80, r()), tcp(81, r().peer(ns("x"), ANY, F))],
        )]),
        case("should enforce updated policy", vec![
            step(
                vec![Apply("x", |_| policy("allow-all-mutate-to-deny-all", labels(&[]), Some(vec![json!({})]), None))],
                vec![tcp(81, r())],
            ),
            step(
                vec![Apply("x", |_| policy("allow-all-mutate-to-deny-all", labels(&[]), Some(vec![]), None))],
                vec![tcp(81, r().peer(ANY, ns("x"), F))],
            ),
        ]),
        case("should allow ingress access from updated namespace", vec![
            step(
                vec![Apply("x", |_| policy("allow-client-a-via-ns-selector", labels(&[("pod", "a")]),
                    Some(vec![json!({"from": [{"namespaceSelector": labels(&[("ns2", "updated")])}]})]), None))],
                vec![tcp(80, r().all_ingress("x/a", F))],
            ),
            step(
                vec![LabelNamespace("y", "ns2", Some("updated"))],
                vec![tcp(80, r().all_ingress("x/a", F).peer(ns("y"), ANY, T))],
            ),
        ]),
        case("should allow ingress access from updated pod", vec![
            step(
                vec![Apply("x", |_| policy("allow-client-a-via-pod-selector", labels(&[("pod", "a")]),
                    Some(vec![json!({"from": [{"podSelector": labels(&[("pod", "b"), ("pod2", "updated")])}]})]), None))],
                vec![tcp(80, r().all_ingress("x/a", F))],
            ),
            step(
                vec![LabelPod("x/b", "pod2", "updated")],
                vec![tcp(80, r().all_ingress("x/a", F).one("x/b", "x/a", T))],
            ),
        ]),
        case("should deny ingress from pods on other namespaces", vec![step(
            vec![Apply("x", |_| policy("deny-empty-policy", json!({}),
                Some(vec![json!({"from": [{"podSelector": {"matchLabels": {}}}]})]), None))],
            vec![tcp(80, r().peer(ns("y"), ns("x"), F).peer(ns("z"), ns("x"), F))],
        )]),
        case("should deny ingress access to updated pod", vec![
            step(
                vec![Apply("x", |_| policy("deny-ingress-via-label-selector", labels(&[("target", "isolated")]), Some(vec![]), None))],
                vec![tcp(80, r())],
            ),
            step(
                vec![LabelPod("x/a", "target", "isolated")],
                vec![tcp(80, r().all_ingress("x/a", F))],
            ),
        ]),
        case("should deny egress from pods based on PodSelector", vec![step(
            vec![Apply("x", |_| policy("deny-egress-pod-a", labels(&[("pod", "a")]), None, Some(vec![])))],
            vec![tcp(80, r().all_egress("x/a", F))],
        )]),
        case("should deny egress from all pods in a namespace", vec![step(
            vec![Apply("x", |_| policy("deny-egress-ns-x", json!({}), None, Some(vec![])))],
            vec![tcp(80, r().peer(ns("x"), ANY, F))],
        )]),
        case("should work with Ingress, Egress specified together", vec![step(
            vec![Apply("x", |_| policy("allow-client-a-via-pod-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"podSelector": labels(&[("pod", "b")])}]})]),
                Some(vec![json!({"ports": [{"port": 80}]})])))],
            vec![
                tcp(80, r().all_ingress("x/a", F).one("x/b", "x/a", T)),
                tcp(81, r().all_ingress("x/a", F).all_egress("x/a", F).one("x/b", "x/a", T)),
            ],
        )]),
        case("should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", vec![step(
            vec![
                Apply("x", |e| policy("allow-to-ns-y-pod-a", labels(&[("pod", "a")]), None,
                    Some(vec![json!({"to": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))]), "podSelector": labels(&[("pod", "a")])}]})]))),
                Apply("y", |e| policy("allow-from-xa-on-ya-match-selector", labels(&[("pod", "a")]),
                    Some(vec![json!({"from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("x"))]), "podSelector": labels(&[("pod", "a")])}]})]), None)),
                Apply("y", |e| policy("allow-from-xa-on-yb-match-selector", labels(&[("pod", "b")]),
                    Some(vec![json!({"from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("x"))]), "podSelector": labels(&[("pod", "a")])}]})]), None)),
            ],
            vec![tcp(80, r()
                .peer(pod("x", "a"), ANY, F)
                .peer(ANY, pod("y", "a"), F)
                .peer(pod("x", "a"), pod("y", "a"), T)
                .peer(ANY, pod("y", "b"), F))],
        )]),
        case("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-to-ns-y-pod-a", labels(&[("pod", "a")]), None,
                Some(vec![json!({"to": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))]), "podSelector": labels(&[("pod", "a")])}]})])))],
            vec![tcp(80, r().all_egress("x/a", F).one("x/a", "y/a", T))],
        )]),
        case("should enforce ingress policy allowing any port traffic to a server on a specific protocol", vec![step(
            vec![Apply("x", |_| policy("allow-ingress-by-proto", labels(&[("pod", "a")]),
                Some(vec![json!({"ports": [{"protocol": "TCP"}]})]), None))],
            vec![tcp(80, r()), check(Protocol::Udp, 80, r().peer(ANY, pod("x", "a"), F))],
        )]),
        case("should enforce multiple ingress policies with ingress allow-all policy taking precedence", vec![
            step(
                vec![Apply("x", |_| policy("allow-ingress-port-80", labels(&[]), Some(vec![json!({"ports": [{"port": 80}]})]), None))],
                vec![tcp(81, r().peer(ANY, ns("x"), F))],
            ),
            step(
                vec![Apply("x", |_| policy("allow-ingress", labels(&[]), Some(vec![json!({})]), None))],
                vec![tcp(81, r())],
            ),
        ]),
        case("should enforce multiple egress policies with egress allow-all policy taking precedence", vec![
            step(
                vec![Apply("x", |_| policy("allow-egress-port-80", labels(&[]), None, Some(vec![json!({"ports": [{"port": 80}]})])))],
                vec![tcp(81, r().peer(ns("x"), ANY, F))],
            ),
            step(
                vec![Apply("x", |_| policy("allow-egress", labels(&[]), None, Some(vec![json!({})])))],
                vec![tcp(81, r())],
            ),
        ]),
        case("should stop enforcing policies after they are deleted", vec![
            step(
                vec![Apply("x", |_| policy("deny-all", json!({}), Some(vec![]), Some(vec![])))],
                vec![tcp(80, r().peer(ns("x"), ANY, F).peer(ANY, ns("x"), F))],
            ),
            step(vec![DeleteAllPolicies], vec![tcp(80, r())]),
        ]),
        case("should allow egress access to server in CIDR block", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-cidr-egress-rule", labels(&[("pod", "a")]), None,
                Some(vec![json!({"to": [{"ipBlock": {"cidr": format!("{}/32", e.ip("y/b"))}}]})])))],
            vec![tcp(80, r().all_egress("x/a", F).one("x/a", "y/b", T))],
        )]),
        case("should enforce except clause while egress access to server in CIDR block", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-cidr-egress-rule", labels(&[("pod", "a")]), None,
                Some(vec![json!({"to": [{"ipBlock": {"cidr": large_cidr(e.ip("x/b")), "except": [format!("{}/32", e.ip("x/b"))]}}]})])))],
            vec![tcp(80, r().one("x/a", "x/b", F))],
        )]),
        case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", vec![
            step(
                vec![Apply("x", |e| policy("allow-client-a-via-cidr-egress-rule", labels(&[("pod", "a")]), None,
                    Some(vec![json!({"to": [{"ipBlock": {"cidr": large_cidr(e.ip("x/b")), "except": [format!("{}/32", e.ip("x/b"))]}}]})])))],
                vec![tcp(80, r().one("x/a", "x/b", F))],
            ),
            step(
                vec![Apply("x", |e| policy("allow-client-a-via-cidr-egress-rule", labels(&[("pod", "a")]), None,
                    Some(vec![json!({"to": [{"ipBlock": {"cidr": format!("{}/32", e.ip("x/b"))}}]})])))],
                vec![tcp(80, r().all_egress("x/a", F).one("x/a", "x/b", T))],
            ),
        ]),
        case("should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", vec![
            step(
                vec![Apply("x", |_| policy("allow-egress-for-target", labels(&[("pod", "a")]), None, Some(vec![json!({})])))],
                vec![tcp(80, r())],
            ),
            step(
                vec![Apply("x", |_| policy("deny-ingress-via-label-selector", labels(&[("pod", "a")]), Some(vec![]), None))],
                vec![tcp(80, r().all_ingress("x/a", F))],
            ),
        ]),
        case("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", vec![step(
            vec![
                Apply("x", |_| policy("deny-ingress", json!({}), Some(vec![]), None)),
                Apply("x", |_| policy("allow-only-sctp-ingress-on-port-81", labels(&[("pod", "a")]),
                    Some(vec![json!({"ports": [{"port": 81, "protocol": "SCTP"}]})]), None)),
            ],
            vec![tcp(81, r().peer(ANY, ns("x"), F))],
        )]),
        case("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", vec![step(
            vec![Apply("x", |_| policy("allow-only-sctp-ingress-on-port-80", labels(&[("pod", "a")]),
                Some(vec![json!({"ports": [{"port": 80, "protocol": "SCTP"}]})]), None))],
            vec![tcp(81, r().all_ingress("x/a", F))],
        )]),
        case("should not allow access by TCP when a policy specifies only UDP", vec![step(
            vec![Apply("x", |_| policy("allow-only-udp-ingress-on-port-81", labels(&[("pod", "a")]),
                Some(vec![json!({"ports": [{"port": 81, "protocol": "UDP"}]})]), None))],
            vec![tcp(81, r().all_ingress("x/a", F))],
        )]),
        case("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", vec![step(
            vec![Apply("x", |e| policy("allow-client-a-via-ns-selector-for-immutable-ns-label", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}]})]), None))],
            vec![tcp(80, r().peer(ns("x"), pod("x", "a"), F).peer(ns("z"), pod("x", "a"), F))],
        )]),
        case("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-match-selector-for-immutable-ns-label", labels(&[("pod", "a")]), None,
                Some(vec![json!({"to": [{"namespaceSelector": expr(NS_LABEL, "NotIn", &[e.ns("y")])}]})])))],
            vec![tcp(80, r().peer(pod("x", "a"), ns("y"), F))],
        )]),
        // Not in today's upstream file (its endPort cases were folded away); kept because endPort is API.
        case("should enforce ingress policy on a port range (endPort)", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-ports-80-81", labels(&[("pod", "a")]),
                Some(vec![json!({
                    "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                    "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}],
                })]), None))],
            vec![
                tcp(80, r().all_ingress("x/a", F).peer(ns("y"), pod("x", "a"), T)),
                tcp(81, r().all_ingress("x/a", F).peer(ns("y"), pod("x", "a"), T)),
            ],
        )]),
    ]
}

/// Upstream's `makeLargeCIDRForIP`: the /4 around an IPv4 address.
pub fn large_cidr(ip: Ipv4Addr) -> String {
    let masked = u32::from(ip) & 0xf000_0000;
    format!("{}/4", Ipv4Addr::from(masked))
}

/// Upstream's UDP cases.
pub fn udp_cases() -> Vec<Case> {
    let udp = |port, expect| check(Protocol::Udp, port, expect);
    vec![
        case("UDP: should support a 'default-deny-ingress' policy", vec![step(
            vec![Apply("x", |_| policy("deny-all", json!({}), Some(vec![]), None))],
            vec![udp(80, r().peer(ANY, ns("x"), F))],
        )]),
        case("UDP: should enforce policy based on Ports", vec![step(
            vec![Apply("x", |e| policy("allow-ingress-on-port-81-ns-x", labels(&[("pod", "a")]),
                Some(vec![json!({
                    "from": [{"namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))])}],
                    "ports": [{"port": 81, "protocol": "UDP"}],
                })]), None))],
            vec![udp(81, r().peer(ns("x"), pod("x", "a"), F).peer(ns("z"), pod("x", "a"), F))],
        )]),
        case("UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", vec![step(
            vec![Apply("x", |e| policy("allow-ns-y-pod-a-via-namespace-pod-selector", labels(&[("pod", "a")]),
                Some(vec![json!({"from": [{
                    "namespaceSelector": labels(&[(NS_LABEL, e.ns("y"))]),
                    "podSelector": labels(&[("pod", "a")]),
                }]})]), None))],
            vec![udp(80, r().all_ingress("x/a", F).one("y/a", "x/a", T))],
        )]),
    ]
}

/// The fixture in memory: what the cluster would hold after the actions so far, evaluated by the pure
/// model (what the data plane is rendered from).
pub struct Fixture {
    pub env: Env,
    pub policies: BTreeMap<(String, String), k8s_openapi::api::networking::v1::NetworkPolicy>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Fixture {
    /// Pods get 10.244.<ns>.<pod + 10>.
    pub fn new() -> Fixture {
        let env = Env {
            namespaces: NAMESPACES.map(String::from),
            ips: (0..9)
                .map(|i| {
                    (
                        pod_name(i),
                        Ipv4Addr::new(10, 244, (i / 3) as u8, (i % 3 + 10) as u8),
                    )
                })
                .collect(),
        };
        Fixture {
            namespace_labels: NAMESPACES
                .iter()
                .map(|n| (n.to_string(), BTreeMap::new()))
                .collect(),
            pod_labels: (0..9)
                .map(|i| {
                    (
                        pod_name(i),
                        BTreeMap::from([("pod".to_string(), PODS[i % 3].to_string())]),
                    )
                })
                .collect(),
            env,
            policies: BTreeMap::new(),
        }
    }

    pub fn apply(&mut self, action: &Action) {
        match action {
            Apply(ns, build) => {
                let mut v = build(&self.env);
                v["metadata"]["namespace"] = json!(self.env.ns(ns));
                if let Ok(p) =
                    serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(v)
                {
                    let key = (
                        self.env.ns(ns).to_string(),
                        p.metadata.name.clone().unwrap_or_default(),
                    );
                    self.policies.insert(key, p);
                }
            }
            DeleteAllPolicies => self.policies.clear(),
            LabelNamespace(ns, k, v) => {
                let labels = self.namespace_labels.entry(ns.to_string()).or_default();
                match v {
                    Some(v) => labels.insert(k.to_string(), v.to_string()),
                    None => labels.remove(*k),
                };
            }
            LabelPod(p, k, v) => {
                self.pod_labels
                    .entry(p.to_string())
                    .or_default()
                    .insert(k.to_string(), v.to_string());
            }
        }
    }

    pub fn pods(&self) -> Vec<crate::model::PodView> {
        (0..9)
            .map(|i| {
                let name = pod_name(i);
                crate::model::PodView {
                    namespace: self.env.namespaces[i / 3].clone(),
                    name: PODS[i % 3].to_string(),
                    ip: self.env.ip(&name),
                    labels: serde_json::to_value(&self.pod_labels[&name]).unwrap_or_default(),
                    named_ports: SERVED
                        .iter()
                        .filter_map(|(n, proto, port)| {
                            Some((n.to_string(), Protocol::parse(Some(proto))?, *port))
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub fn namespaces(&self) -> Vec<k8s_openapi::api::core::v1::Namespace> {
        (0..3)
            .map(|i| {
                let mut ns = k8s_openapi::api::core::v1::Namespace::default();
                ns.metadata.name = Some(self.env.namespaces[i].clone());
                ns.metadata.labels = Some(self.namespace_labels[NAMESPACES[i]].clone());
                ns
            })
            .collect()
    }

    pub fn model(&self) -> crate::model::Model {
        crate::model::Model::build(
            self.policies.values(),
            &self.pods(),
            &self.namespaces(),
            crate::model::Local::All,
        )
    }

    /// The table the model predicts for `protocol/port`.
    pub fn table(&self, protocol: Protocol, port: u16) -> Reachability {
        let model = self.model();
        let mut out = Reachability::new(false);
        for f in 0..9 {
            for t in 0..9 {
                let (src, dst) = (self.env.ip(&pod_name(f)), self.env.ip(&pod_name(t)));
                out.0[f][t] = model.evaluate(src, dst, protocol, port).allowed();
            }
        }
        out
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}
