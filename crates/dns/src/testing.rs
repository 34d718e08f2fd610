//! Fixtures shared by tests, benchmarks and the benchmark server: Kubernetes objects built from JSON (as the
//! API would send them) and a rendering of DNS messages in dig-like text for golden comparisons.

use std::fmt::Write as _;

use hickory_proto::op::Message;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use crate::convert::{service_spec, slice_spec};
use crate::model::SnapshotBuilder;

/// A Service object as JSON → typed.
pub fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).unwrap_or_default()
}

pub fn slice(value: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(value).unwrap_or_else(|_| EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Vec::new(),
        metadata: Default::default(),
        ports: None,
    })
}

pub fn add_service(b: &mut SnapshotBuilder, value: serde_json::Value) {
    if let Some(spec) = service_spec(&service(value)) {
        b.apply_service(spec);
    }
}

pub fn add_slice(b: &mut SnapshotBuilder, value: serde_json::Value) {
    if let Some(spec) = slice_spec(&slice(value)) {
        b.apply_slice(spec);
    }
}

/// `n_services` ClusterIP + headless services (every tenth headless) in 10 namespaces, each with an
/// EndpointSlice of `endpoints_per` ready endpoints. Names: `svc-<i>.ns-<i % 10>`.
pub fn synthetic(b: &mut SnapshotBuilder, n_services: usize, endpoints_per: usize) {
    for ns in 0..10 {
        b.apply_namespace(&format!("ns-{ns}"));
    }
    for i in 0..n_services {
        let ns = format!("ns-{}", i % 10);
        let name = format!("svc-{i}");
        let headless = i % 10 == 9;
        let cluster_ip = if headless {
            "None".to_string()
        } else {
            format!("10.{}.{}.{}", 96 + (i >> 16) % 16, (i >> 8) & 255, i & 255)
        };
        add_service(
            b,
            json!({"metadata": {"name": name, "namespace": ns},
                   "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
        );
        let endpoints: Vec<serde_json::Value> = (0..endpoints_per)
            .map(|j| {
                let k = i * endpoints_per + j;
                json!({"addresses": [format!("10.{}.{}.{}", 128 + (k >> 16) % 64, (k >> 8) & 255, k & 255)],
                       "conditions": {"ready": true}})
            })
            .collect();
        add_slice(
            b,
            json!({"metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                                "labels": {"kubernetes.io/service-name": name}},
                   "addressType": "IPv4", "endpoints": endpoints,
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        );
    }
}

/// dig-like text of a message: header line, then sections with one record per line.
pub fn render(m: &Message) -> String {
    let mut out = String::new();
    let md = &m.metadata;
    let mut flags = Vec::new();
    if md.authoritative {
        flags.push("aa");
    }
    if md.truncation {
        flags.push("tc");
    }
    if md.recursion_desired {
        flags.push("rd");
    }
    if md.recursion_available {
        flags.push("ra");
    }
    let _ = writeln!(out, "status: {}, flags: {}", rcode_text(m), flags.join(" "));
    for q in &m.queries {
        let _ = writeln!(
            out,
            ";QUESTION {} {} {}",
            q.name(),
            q.query_class(),
            q.query_type()
        );
    }
    for (title, records) in [
        ("ANSWER", &m.answers),
        ("AUTHORITY", &m.authorities),
        ("ADDITIONAL", &m.additionals),
    ] {
        if records.is_empty() {
            continue;
        }
        let _ = writeln!(out, ";{title}");
        for r in records.iter() {
            let _ = writeln!(out, "{r}");
        }
    }
    out
}

fn rcode_text(m: &Message) -> String {
    let code = u16::from(m.metadata.response_code);
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}"),
    }
}

/// The cluster the golden tests use: namespaces default, prod, kube-system; default/web (ClusterIP, named and
/// unnamed port, one endpoint), default/db (headless, two ready + one not-ready endpoint), default/empty
/// (headless, none), default/ext (ExternalName www.example.com), default/alias (ExternalName to web.prod),
/// prod/web (dual-stack ClusterIP), prod/mysql (headless, StatefulSet hostnames mysql-0/1), kube-system/kube-dns.
/// Synced, serial 12345, TTL 5.
pub fn example_cluster() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new("cluster.local", 5);
    for ns in ["default", "prod", "kube-system"] {
        b.apply_namespace(ns);
    }
    add_service(
        &mut b,
        json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}, {"port": 8080, "protocol": "TCP"}]}}),
    );
    add_slice(
        &mut b,
        json!({"metadata": {"name": "web-x1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.3"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "db", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"name": "mysql", "port": 3306}]}}),
    );
    add_slice(
        &mut b,
        json!({"metadata": {"name": "db-a", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.5"]},
            {"addresses": ["10.244.3.7"], "conditions": {"ready": false}}],
        "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}]}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "empty", "namespace": "default"},
        "spec": {"clusterIP": "None"}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "www.example.com"}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "alias", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "Web.Prod.svc.cluster.local."}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "web", "namespace": "prod"},
        "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::30"],
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "mysql", "namespace": "prod"},
        "spec": {"clusterIP": "None", "ports": [{"name": "mysql", "port": 3306}]}}),
    );
    add_slice(
        &mut b,
        json!({"metadata": {"name": "mysql-1", "namespace": "prod",
            "labels": {"kubernetes.io/service-name": "mysql"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.10"], "hostname": "mysql-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.11"], "hostname": "mysql-1", "conditions": {"ready": true}}],
        "ports": [{"name": "mysql", "port": 3306, "protocol": "TCP"}]}),
    );
    b.set_serial(12345);
    b.set_synced(true);
    b
}

/// `example_cluster` plus default/big, a headless service with 100 ready endpoints (its A answer needs more than
/// 512 bytes: truncation over UDP).
pub fn example_cluster_with_big_headless() -> SnapshotBuilder {
    let mut b = example_cluster();
    add_service(
        &mut b,
        json!({"metadata": {"name": "big", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}),
    );
    let endpoints: Vec<_> = (0..100)
        .map(|i| json!({"addresses": [format!("10.244.9.{i}")], "conditions": {"ready": true}}))
        .collect();
    add_slice(
        &mut b,
        json!({"metadata": {"name": "big-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    );
    b
}
