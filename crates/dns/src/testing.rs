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
