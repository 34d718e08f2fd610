//! Semantics of the pure model, case by case (networking.k8s.io/v1).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::*;
use serde_json::json;
use skiff_netpol::model::{Decision, Local, Model, PodView, Protocol};

const TCP: Protocol = Protocol::Tcp;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

struct World {
    pods: Vec<PodView>,
    namespaces: Vec<k8s_openapi::api::core::v1::Namespace>,
}

/// Namespaces `prod` (team=a) and `dev` (team=b); pods web (app=web, port http=8080) and db (app=db) in each.
fn world() -> World {
    let ports = [("http", "TCP", 8080), ("dns", "UDP", 53)];
    World {
        pods: vec![
            view(&pod(
                "prod",
                "web",
                "10.0.0.1",
                json!({"app": "web"}),
                &ports,
            )),
            view(&pod("prod", "db", "10.0.0.2", json!({"app": "db"}), &[])),
            view(&pod(
                "dev",
                "web",
                "10.0.1.1",
                json!({"app": "web"}),
                &[("http", "TCP", 9090)],
            )),
            view(&pod("dev", "db", "10.0.1.2", json!({"app": "db"}), &[])),
        ],
        namespaces: vec![
            namespace("prod", json!({"team": "a"})),
            namespace("dev", json!({"team": "b"})),
        ],
    }
}

fn build(w: &World, policies: &[k8s_openapi::api::networking::v1::NetworkPolicy]) -> Model {
    Model::build(policies, &w.pods, &w.namespaces, Local::All)
}

fn allowed(m: &Model, src: &str, dst: &str, proto: Protocol, port: u16) -> bool {
    m.evaluate(ip(src), ip(dst), proto, port).allowed()
}

#[test]
fn no_policy_allows_everything() {
    let w = world();
    let m = build(&w, &[]);
    assert!(m.ingress.is_empty() && m.egress.is_empty());
    assert!(allowed(&m, "10.0.0.1", "10.0.1.2", TCP, 1));
}

#[test]
fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
    let w = world();
    // No policyTypes, no egress rules: Ingress only.
    let m = build(&w, &[policy("prod", "p", json!({"podSelector": {}}))]);
    assert_eq!(m.ingress.len(), 2);
    assert!(m.egress.is_empty());
    // No policyTypes, egress rules: both.
    let m = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {}, "egress": [{}]}),
        )],
    );
    assert_eq!((m.ingress.len(), m.egress.len()), (2, 2));
    // Explicit Egress only: ingress stays open even with ingress rules written.
    let m = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
        )],
    );
    assert!(m.ingress.is_empty());
    assert!(!allowed(&m, "10.0.0.1", "10.0.1.1", TCP, 80));
    assert!(allowed(&m, "10.0.1.1", "10.0.0.1", TCP, 80));
}

#[test]
fn empty_rules_list_denies_and_empty_rule_allows_all() {
    let w = world();
    let deny = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []}),
        )],
    );
    assert!(!allowed(&deny, "10.0.0.1", "10.0.0.2", TCP, 5432));
    assert!(
        allowed(&deny, "10.0.0.2", "10.0.0.1", TCP, 8080),
        "web is not selected"
    );
    let all = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {}, "ingress": [{}]}),
        )],
    );
    assert!(allowed(&all, "10.0.1.2", "10.0.0.2", Protocol::Udp, 9));
    assert!(
        allowed(&all, "192.0.2.1", "10.0.0.2", Protocol::Sctp, 9),
        "any source, even off-cluster"
    );
    // `from: []` and `ports: []` are "any" too.
    let empty_lists = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [], "ports": []}]}),
        )],
    );
    assert!(allowed(&empty_lists, "192.0.2.1", "10.0.0.2", TCP, 1));
}

#[test]
fn pod_selector_peer_is_own_namespace_and_namespace_selector_and_both_mean_and() {
    let w = world();
    let only_pod = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        )],
    );
    assert!(allowed(&only_pod, "10.0.0.1", "10.0.0.2", TCP, 5432));
    assert!(
        !allowed(&only_pod, "10.0.1.1", "10.0.0.2", TCP, 5432),
        "dev/web is another namespace"
    );
    let only_ns = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
        )],
    );
    assert!(!allowed(&only_ns, "10.0.0.1", "10.0.0.2", TCP, 5432));
    assert!(allowed(&only_ns, "10.0.1.2", "10.0.0.2", TCP, 5432));
    let both = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        )],
    );
    assert!(allowed(&both, "10.0.1.1", "10.0.0.2", TCP, 5432));
    assert!(!allowed(&both, "10.0.1.2", "10.0.0.2", TCP, 5432));
    assert!(!allowed(&both, "10.0.0.1", "10.0.0.2", TCP, 5432));
    // The namespace's name label works although the Namespace object does not carry it.
    let by_name = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}]}]}),
        )],
    );
    assert!(allowed(&by_name, "10.0.1.2", "10.0.0.2", TCP, 5432));
}

#[test]
fn ip_block_with_except_and_union_with_selectors() {
    let w = world();
    let m = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}},
                {"podSelector": {"matchLabels": {"app": "web"}}},
            ]}]}),
        )],
    );
    assert!(allowed(&m, "192.168.2.9", "10.0.0.2", TCP, 1));
    assert!(!allowed(&m, "192.168.1.9", "10.0.0.2", TCP, 1));
    assert!(allowed(&m, "10.0.0.1", "10.0.0.2", TCP, 1));
    assert!(!allowed(&m, "10.0.1.1", "10.0.0.2", TCP, 1));
    let rule = &m.policies[0].ingress.as_ref().unwrap()[0];
    let blocks: Vec<String> = rule
        .peers
        .as_ref()
        .unwrap()
        .blocks
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(blocks, ["192.168.0.0/24", "192.168.2.0-192.168.255.255"]);
}

#[test]
fn ports_protocols_ranges_and_named_ports_per_destination() {
    let w = world();
    let m = build(
        &w,
        &[
            policy(
                "prod",
                "range",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"ports": [{"port": 5000, "endPort": 5010}, {"protocol": "UDP"}]}]}),
            ),
            policy(
                "prod",
                "named",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}]}),
            ),
        ],
    );
    assert!(allowed(&m, "10.0.1.1", "10.0.0.2", TCP, 5000));
    assert!(allowed(&m, "10.0.1.1", "10.0.0.2", TCP, 5010));
    assert!(!allowed(&m, "10.0.1.1", "10.0.0.2", TCP, 5011));
    assert!(
        allowed(&m, "10.0.1.1", "10.0.0.2", Protocol::Udp, 7),
        "protocol without port: every port"
    );
    assert!(!allowed(&m, "10.0.1.1", "10.0.0.2", Protocol::Sctp, 5000));
    assert!(
        allowed(&m, "10.0.1.1", "10.0.0.1", TCP, 8080),
        "http resolves to 8080 on prod/web"
    );
    assert!(!allowed(&m, "10.0.1.1", "10.0.0.1", TCP, 9090));
    assert!(
        !allowed(&m, "10.0.1.1", "10.0.0.1", Protocol::Udp, 8080),
        "named ports keep their protocol"
    );
    assert!(allowed(&m, "10.0.1.1", "10.0.0.1", Protocol::Udp, 53));
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let w = world();
    let m = build(
        &w,
        &[policy(
            "prod",
            "out",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        )],
    );
    assert!(allowed(&m, "10.0.0.2", "10.0.0.1", TCP, 8080));
    assert!(
        allowed(&m, "10.0.0.2", "10.0.1.1", TCP, 9090),
        "dev/web names 9090 http"
    );
    assert!(!allowed(&m, "10.0.0.2", "10.0.1.1", TCP, 8080));
    assert!(
        !allowed(&m, "10.0.0.2", "192.0.2.1", TCP, 8080),
        "no pod there, so no named port"
    );
}

#[test]
fn a_port_no_pod_has_isolates_without_allowing() {
    let w = world();
    let m = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"ports": [{"port": "nonexistent"}]}]}),
        )],
    );
    for port in [1, 80, 8080, 5432] {
        assert!(!allowed(&m, "10.0.0.1", "10.0.0.2", TCP, port));
    }
}

#[test]
fn invalid_input_matches_nothing_and_never_panics() {
    let w = world();
    let m = build(
        &w,
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/33"}},
            {"ipBlock": {"cidr": "fd00::/8"}},
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Bogus"}]}},
            {},
        ], "ports": [{"port": 0}, {"port": 70000}, {"port": 90, "endPort": 80}, {"port": 80, "protocol": "ICMP"}]}]}),
        )],
    );
    assert!(m.ingress.contains_key(&ip("10.0.0.2")));
    assert!(!allowed(&m, "10.0.0.1", "10.0.0.2", TCP, 80));
    assert!(!allowed(&m, "10.0.0.1", "10.0.0.2", TCP, 85));
}

#[test]
fn union_of_policies_and_both_directions_must_allow() {
    let w = world();
    let m = build(
        &w,
        &[
            policy(
                "prod",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            ),
            policy(
                "prod",
                "web-in",
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 8080}]}]}),
            ),
            policy(
                "dev",
                "db-out",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}}]}]}),
            ),
        ],
    );
    // dev/db may send anywhere in the cluster; prod/web admits 8080 from anyone.
    assert!(allowed(&m, "10.0.1.2", "10.0.0.1", TCP, 8080));
    assert!(!allowed(&m, "10.0.1.2", "10.0.0.1", TCP, 8081));
    // prod/web's egress is denied by prod/deny even though dev/db would admit it.
    let v = m.evaluate(ip("10.0.0.1"), ip("10.0.1.2"), TCP, 80);
    assert!(!v.allowed());
    assert!(matches!(v.egress, Decision::Denied { .. }));
    assert_eq!(v.ingress, Decision::NotIsolated);
    assert!(
        !allowed(&m, "10.0.1.2", "192.0.2.1", TCP, 80),
        "dev/db egress is only to pods"
    );
}

#[test]
fn only_local_pods_are_programmed_but_peers_are_cluster_wide() {
    let w = world();
    let local: BTreeSet<Ipv4Addr> = [ip("10.0.0.2")].into();
    let m = Model::build(
        &[policy(
            "prod",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        )],
        &w.pods,
        &w.namespaces,
        Local::Ips(&local),
    );
    assert_eq!(
        m.ingress.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.0.0.2")]
    );
    let peers = &m.policies[0].ingress.as_ref().unwrap()[0]
        .peers
        .as_ref()
        .unwrap()
        .pods;
    assert_eq!(peers.len(), 4);
    // A policy selecting no local pod is not programmed at all.
    let m = Model::build(
        &[policy("dev", "p", json!({"podSelector": {}}))],
        &w.pods,
        &w.namespaces,
        Local::Ips(&local),
    );
    assert!(m.policies.is_empty());
}

#[test]
fn host_network_finished_and_addressless_pods_are_not_policed() {
    let mut p = pod("prod", "h", "172.30.0.2", json!({}), &[]);
    p.spec.as_mut().unwrap().host_network = Some(true);
    assert!(PodView::from_pod(&p).is_none());
    let mut p = pod("prod", "done", "10.0.0.9", json!({}), &[]);
    p.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert!(PodView::from_pod(&p).is_none());
    let mut p = pod("prod", "new", "10.0.0.9", json!({}), &[]);
    p.status = None;
    assert!(PodView::from_pod(&p).is_none());
}
