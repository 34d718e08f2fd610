//! Golden tests of the pure rule model and its nftables rendering: exact script text per Service kind.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use skiff_proxy::model::{NodeContext, ProxyModel};
use skiff_proxy::nft::{self, Program, RenderConfig};

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        name: "node-1".into(),
        ips: vec!["172.30.0.2".parse().unwrap()],
    }
}

/// An EndpointSlice for `service` with (ip, node, ready, serving, terminating) endpoints and (name, port, proto) ports.
fn eps(
    service: &str,
    name: &str,
    endpoints: &[(&str, &str, bool, bool, bool)],
    ports: &[(&str, u16, &str)],
) -> EndpointSlice {
    slice(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(ip, node, r, s, t)| json!({
            "addresses": [ip], "nodeName": node,
            "conditions": {"ready": r, "serving": s, "terminating": t}
        })).collect::<Vec<_>>(),
        "ports": ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect::<Vec<_>>(),
    }))
}

fn render(services: &[Service], slices: &[EndpointSlice]) -> String {
    let model = ProxyModel::build(services, slices, &node());
    let cfg = RenderConfig::default();
    let mut groups = nft::EndpointGroups::default();
    model
        .services
        .values()
        .map(|s| nft::render_service(s, &cfg, &mut groups))
        .collect()
}

/// Compare with `tests/golden/<name>.nft` (reviewed by hand; `SKIFF_UPDATE_GOLDEN=1` rewrites it).
#[track_caller]
fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}.nft", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("SKIFF_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        panic!("{name}: rendered text differs from {path}\n--- actual ---\n{actual}\n--- expected ---\n{expected}");
    }
}

fn demoapp(extra_spec: serde_json::Value) -> Service {
    let mut spec = json!({
        "type": "ClusterIP", "clusterIP": "10.97.72.1", "clusterIPs": ["10.97.72.1"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}],
        "selector": {"app": "demoapp"},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    svc(json!({"metadata": {"name": "demoapp-svc", "namespace": "default"}, "spec": spec}))
}

fn demoapp_eps() -> EndpointSlice {
    eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[
            ("10.244.1.5", "node-1", true, true, false),
            ("10.244.2.7", "node-2", true, true, false),
        ],
        &[("http", 80, "TCP")],
    )
}

#[test]
fn full_script_cluster_ip_with_chosen_ip_and_two_endpoints() {
    let model = ProxyModel::build(&[demoapp(json!({}))], &[demoapp_eps()], &node());
    golden(
        "full_clusterip",
        &nft::render_full(&model, &RenderConfig::default()),
    );
}

#[test]
fn cluster_ip_four_endpoints_uniform_choice() {
    let s = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[
            ("10.244.1.5", "node-1", true, true, false),
            ("10.244.1.6", "node-1", true, true, false),
            ("10.244.2.7", "node-2", true, true, false),
            ("10.244.2.8", "node-2", true, true, false),
        ],
        &[("http", 80, "TCP")],
    );
    golden("clusterip_scaled", &render(&[demoapp(json!({}))], &[s]));
}

#[test]
fn multi_port_tcp_udp_sctp() {
    let service = svc(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "sig", "port": 9999, "protocol": "SCTP"},
        ]}
    }));
    let mut s = eps(
        "kube-dns",
        "kube-dns-1",
        &[("10.244.1.9", "node-1", true, true, false)],
        &[
            ("dns", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            ("sig", 9999, "SCTP"),
        ],
    );
    s.metadata.namespace = Some("kube-system".into());
    golden("multiport", &render(&[service], &[s]));
}

#[test]
fn named_target_port_resolves_per_endpoint() {
    let service = demoapp(
        json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]}),
    );
    let a = eps(
        "demoapp-svc",
        "demoapp-svc-a",
        &[("10.244.1.5", "node-1", true, true, false)],
        &[("http", 8080, "TCP")],
    );
    let b = eps(
        "demoapp-svc",
        "demoapp-svc-b",
        &[("10.244.2.7", "node-2", true, true, false)],
        &[("http", 9090, "TCP")],
    );
    golden("named_target_port", &render(&[service], &[a, b]));
}

#[test]
fn node_port() {
    let service = demoapp(json!({"type": "NodePort",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31399}]}));
    golden("nodeport", &render(&[service], &[demoapp_eps()]));
}

fn load_balancer(etp: &str) -> Service {
    let mut s = demoapp(
        json!({"type": "LoadBalancer", "externalTrafficPolicy": etp, "healthCheckNodePort": 32000,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31399}]}),
    );
    s.metadata.annotations = Some(
        [(
            "skiff.dev/loadbalancer-node".to_string(),
            "node-1".to_string(),
        )]
        .into(),
    );
    s.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "172.30.0.200"}]}}))
            .unwrap(),
    );
    s
}

#[test]
fn load_balancer_cluster_policy() {
    let service = load_balancer("Cluster");
    let model = ProxyModel::build(std::slice::from_ref(&service), &[demoapp_eps()], &node());
    let m = &model.services[&("default".to_string(), "demoapp-svc".to_string())];
    // This node is the one named in the annotation: it announces the address; no health check for Cluster.
    assert_eq!(
        m.announce_ips,
        vec!["172.30.0.200".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(m.health_check, None);
    let other = NodeContext {
        name: "node-2".into(),
        ips: vec![],
    };
    let model2 = ProxyModel::build(std::slice::from_ref(&service), &[demoapp_eps()], &other);
    assert!(model2.services.values().all(|m| m.announce_ips.is_empty()));
    golden("loadbalancer", &render(&[service], &[demoapp_eps()]));
}

#[test]
fn external_ips() {
    let service = demoapp(json!({"externalIPs": ["172.30.0.100"]}));
    golden("external_ips", &render(&[service], &[demoapp_eps()]));
}

#[test]
fn external_traffic_policy_local_with_local_endpoint() {
    let service = load_balancer("Local");
    let model = ProxyModel::build(std::slice::from_ref(&service), &[demoapp_eps()], &node());
    let hc = model
        .services
        .values()
        .next()
        .and_then(|m| m.health_check.clone());
    assert_eq!(
        hc,
        Some(skiff_proxy::model::HealthCheck {
            port: 32000,
            local_endpoints: 1
        })
    );
    golden("etp_local", &render(&[service], &[demoapp_eps()]));
}

#[test]
fn external_traffic_policy_local_without_local_endpoint_drops() {
    let service = load_balancer("Local");
    let remote = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[("10.244.2.7", "node-2", true, true, false)],
        &[("http", 80, "TCP")],
    );
    let model = ProxyModel::build(
        std::slice::from_ref(&service),
        std::slice::from_ref(&remote),
        &node(),
    );
    let hc = model
        .services
        .values()
        .next()
        .and_then(|m| m.health_check.clone());
    assert_eq!(
        hc,
        Some(skiff_proxy::model::HealthCheck {
            port: 32000,
            local_endpoints: 0
        })
    );
    golden("etp_local_none", &render(&[service], &[remote]));
}

#[test]
fn internal_traffic_policy_local() {
    let service = demoapp(json!({"internalTrafficPolicy": "Local"}));
    golden("itp_local", &render(&[service], &[demoapp_eps()]));
    let remote = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[("10.244.2.7", "node-2", true, true, false)],
        &[("http", 80, "TCP")],
    );
    let service = demoapp(json!({"internalTrafficPolicy": "Local"}));
    golden("itp_local_none", &render(&[service], &[remote]));
}

#[test]
fn session_affinity_client_ip() {
    let service = demoapp(json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}));
    golden("affinity", &render(&[service], &[demoapp_eps()]));
}

#[test]
fn no_endpoints_rejects() {
    let service = demoapp(json!({"type": "NodePort",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31399},
                  {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 31053}]}));
    let none = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[("10.244.2.7", "node-2", false, false, false)],
        &[("http", 80, "TCP")],
    );
    golden("no_endpoints", &render(&[service], &[none]));
}

#[test]
fn terminating_endpoints_used_when_none_ready() {
    let s = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[
            ("10.244.1.5", "node-1", false, true, true),
            ("10.244.2.7", "node-2", false, false, true),
            ("10.244.2.8", "node-2", false, true, false),
        ],
        &[("http", 80, "TCP")],
    );
    // Only the serving terminating endpoint is used; the non-serving one and the not-ready one are not.
    golden(
        "terminating",
        &render(&[demoapp(json!({}))], std::slice::from_ref(&s)),
    );
    let mut with_ready = s;
    with_ready.endpoints.push(
        serde_json::from_value(json!({"addresses": ["10.244.3.3"], "nodeName": "node-3",
        "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .unwrap(),
    );
    // A ready endpoint exists: terminating ones get no new connections.
    golden(
        "terminating_with_ready",
        &render(&[demoapp(json!({}))], &[with_ready]),
    );
}

#[test]
fn headless_and_external_name_are_ignored() {
    let headless = svc(json!({"metadata": {"name": "h", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
    let ext = svc(json!({"metadata": {"name": "e", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}}));
    let model = ProxyModel::build(&[headless, ext], &[], &node());
    assert!(model.services.is_empty());
    assert_eq!(render(&[], &[]), "");
}

#[test]
fn incremental_update_endpoint_change() {
    let cfg = RenderConfig::default();
    let key = ("default".to_string(), "demoapp-svc".to_string());
    let m1 = ProxyModel::build(&[demoapp(json!({}))], &[demoapp_eps()], &node());
    let mut program = Program::new();
    let f1 = program.fragments(&m1, &cfg);
    let installed = f1[&key].clone();
    program.full(&cfg, f1);
    // No change: nothing to do.
    let same = program.fragment(&m1.services[&key], &cfg);
    assert_eq!(
        program
            .update(vec![(Some(installed.clone()), Some(same))])
            .map(|d| d.is_empty()),
        Some(true)
    );
    // One endpoint replaced by another.
    let s2 = eps(
        "demoapp-svc",
        "demoapp-svc-abc",
        &[
            ("10.244.1.5", "node-1", true, true, false),
            ("10.244.2.9", "node-2", true, true, false),
        ],
        &[("http", 80, "TCP")],
    );
    let m2 = ProxyModel::build(&[demoapp(json!({}))], &[s2], &node());
    let f2 = program.fragment(&m2.services[&key], &cfg);
    let diff = program
        .update(vec![(Some(installed), Some(f2.clone()))])
        .unwrap();
    // Only endpoints moved: the proxy sends this over netlink.
    assert!(diff.moves_endpoints_only());
    let script = diff.script(&cfg);
    golden("update_endpoint", &script);
    // Service deleted: its chains and elements go.
    let script = program.update(vec![(Some(f2), None)]).unwrap().script(&cfg);
    golden("update_delete", &script);
}

#[test]
fn incremental_update_to_no_endpoints_and_back() {
    let cfg = RenderConfig::default();
    let key = ("default".to_string(), "demoapp-svc".to_string());
    let m1 = ProxyModel::build(&[demoapp(json!({}))], &[demoapp_eps()], &node());
    let mut program = Program::new();
    let f1 = program.fragments(&m1, &cfg);
    let installed = f1[&key].clone();
    program.full(&cfg, f1);
    let m0 = ProxyModel::build(&[demoapp(json!({}))], &[], &node());
    let f0 = program.fragment(&m0.services[&key], &cfg);
    let diff = program.update(vec![(Some(installed), Some(f0))]).unwrap();
    // The service chain goes: a structural change, applied through nft.
    assert!(!diff.moves_endpoints_only());
    golden("update_to_none", &diff.script(&cfg));
}

#[test]
fn conflicting_external_ip_claims_do_not_break_the_transaction() {
    let cfg = RenderConfig::default();
    let a = demoapp(json!({"externalIPs": ["172.30.0.100"]}));
    let mut b = demoapp(
        json!({"clusterIP": "10.97.72.2", "clusterIPs": ["10.97.72.2"], "externalIPs": ["172.30.0.100"]}),
    );
    b.metadata.name = Some("other".into());
    let mut b_eps = demoapp_eps();
    b_eps.metadata.name = Some("other-1".into());
    b_eps.metadata.labels = Some(
        [(
            "kubernetes.io/service-name".to_string(),
            "other".to_string(),
        )]
        .into(),
    );
    let model = ProxyModel::build(&[a, b], &[demoapp_eps(), b_eps], &node());
    let mut program = Program::new();
    let fragments = program.fragments(&model, &cfg);
    let installed = fragments[&("default".to_string(), "demoapp-svc".to_string())].clone();
    let full = program.full(&cfg, fragments);
    // The shared key appears once (the first value in order wins), so nft does not fail with "File exists".
    assert_eq!(
        full.matches("172.30.0.100 . tcp . 80 :").count(),
        1,
        "{full}"
    );
    // When the winner goes, the other service's claim takes over in the same transaction.
    let script = program
        .update(vec![(Some(installed), None)])
        .unwrap()
        .script(&cfg);
    golden("update_conflict_takeover", &script);
}
