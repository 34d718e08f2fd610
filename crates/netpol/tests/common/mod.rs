//! Builders shared by the netpol tests.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use skiff_netpol::model::PodView;

/// A running pod with `labels` and named container ports `(name, protocol, port)`.
pub fn pod(ns: &str, name: &str, ip: &str, labels: Value, ports: &[(&str, &str, u16)]) -> Pod {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, p)| json!({"name": n, "protocol": proto, "containerPort": p}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

pub fn view(p: &Pod) -> PodView {
    PodView::from_pod(p).expect("a policed pod")
}

pub fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

pub fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .unwrap()
}
