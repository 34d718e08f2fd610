//! Golden tests of the nftables rendering: the whole table and the differences that pod and policy changes
//! produce (`SKIFF_UPDATE_GOLDEN=1` rewrites the files; review them by hand).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::*;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use skiff_netpol::model::{Local, Model, PodView};
use skiff_netpol::nft::{self, RenderConfig};

#[track_caller]
fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}.nft", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("SKIFF_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(actual, expected, "golden file {path} differs");
}

fn pods() -> Vec<PodView> {
    let web = [("http", "TCP", 8080)];
    vec![
        view(&pod(
            "shop",
            "web-1",
            "10.244.0.5",
            json!({"app": "web"}),
            &web,
        )),
        view(&pod(
            "shop",
            "db-1",
            "10.244.0.6",
            json!({"app": "db"}),
            &[],
        )),
        view(&pod(
            "shop",
            "web-2",
            "10.244.1.5",
            json!({"app": "web"}),
            &web,
        )),
        view(&pod(
            "tools",
            "probe",
            "10.244.1.9",
            json!({"app": "probe"}),
            &[],
        )),
    ]
}

fn policies() -> Vec<NetworkPolicy> {
    vec![
        policy(
            "shop",
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "shop",
            "db-from-web",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}),
        ),
        policy(
            "shop",
            "web-in",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tools"}}},
                          {"ipBlock": {"cidr": "172.30.0.0/24", "except": ["172.30.0.128/25"]}}],
                 "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100, "protocol": "TCP"}]}
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]},
                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
        ),
    ]
}

fn model(policies: &[NetworkPolicy], pods: &[PodView]) -> Model {
    // This node runs the 10.244.0.0/24 pods.
    let local: BTreeSet<Ipv4Addr> = pods
        .iter()
        .map(|p| p.ip)
        .filter(|ip| ip.octets()[2] == 0)
        .collect();
    let namespaces = [namespace("shop", json!({})), namespace("tools", json!({}))];
    Model::build(policies, pods, &namespaces, Local::Ips(&local))
}

#[test]
fn full_table() {
    let rs = nft::render(&model(&policies(), &pods()));
    golden("full", &nft::full_script(&rs, &RenderConfig::default()));
}

#[test]
fn pod_churn_is_element_diffs_only() {
    let before = nft::render(&model(&policies(), &pods()));
    let mut more = pods();
    more.push(view(&pod(
        "shop",
        "web-3",
        "10.244.0.7",
        json!({"app": "web"}),
        &[("http", "TCP", 8081)],
    )));
    more.retain(|p| p.name != "web-2");
    let after = nft::render(&model(&policies(), &more));
    let diff = nft::diff_script(&before, &after, &RenderConfig::default());
    assert!(
        !diff.contains(" rule ") && !diff.contains(" chain "),
        "{diff}"
    );
    golden("pod_churn", &diff);
}

#[test]
fn policy_change_and_removal() {
    let before = nft::render(&model(&policies(), &pods()));
    let mut changed = policies();
    changed.remove(0);
    changed[0] = policy(
        "shop",
        "db-from-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}, {"port": 5433}]}]}),
    );
    let after = nft::render(&model(&changed, &pods()));
    golden(
        "policy_change",
        &nft::diff_script(&before, &after, &RenderConfig::default()),
    );
    assert_eq!(
        nft::diff_script(&after, &after, &RenderConfig::default()),
        ""
    );
}

#[test]
fn chain_names_say_namespace_and_policy_and_stay_short() {
    let rs = nft::render(&model(&policies(), &pods()));
    let names: Vec<&String> = rs.chains.keys().collect();
    assert!(
        names.iter().any(|n| *n == "ingress-shop/web-in"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| *n == "isolated-ingress-shop/default-deny_shop/web-in"),
        "{names:?}"
    );
    let long = "n".repeat(63);
    let p = policy(&long, &"p".repeat(253), json!({"podSelector": {}}));
    let pods = [view(&pod(&long, "x", "10.244.0.3", json!({}), &[]))];
    let m = Model::build(&[p], &pods, &[namespace(&long, json!({}))], Local::All);
    let rs = nft::render(&m);
    assert!(rs
        .chains
        .keys()
        .chain(rs.sets.keys())
        .chain(rs.counters.iter())
        .all(|n| n.len() <= 200));
}
