//! networking.k8s.io/v1: NetworkPolicy and Ingress.

use super::*;

pub(super) fn network_policy(e: &mut Errs, spec: &Value) {
    label_selector(
        e,
        spec.get("podSelector").unwrap_or(&Value::Null),
        "spec.podSelector",
    );
    for dir in ["ingress", "egress"] {
        for (i, rule) in arr(spec, dir).iter().enumerate() {
            for (j, p) in arr(rule, "ports").iter().enumerate() {
                let pp = format!("spec.{dir}[{i}].ports[{j}]");
                let proto = s(p, "protocol");
                if !proto.is_empty() && !PROTOCOLS.contains(&proto) {
                    e.not_supported(&format!("{pp}.protocol"), proto, PROTOCOLS);
                }
                if p.get("port").is_some_and(|v| !v.is_null()) {
                    port_num_or_name(e, p.get("port"), &format!("{pp}.port"));
                }
            }
            let peers = if dir == "ingress" { "from" } else { "to" };
            for (j, peer) in arr(rule, peers).iter().enumerate() {
                let pp = format!("spec.{dir}[{i}].{peers}[{j}]");
                if let Some(cidr) = peer.pointer("/ipBlock/cidr").and_then(Value::as_str) {
                    if cidr.parse::<ipnet::IpNet>().is_err() {
                        e.invalid(
                            &format!("{pp}.ipBlock.cidr"),
                            format!("{cidr:?}"),
                            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                        );
                    }
                }
                if let Some(sel) = peer.get("podSelector") {
                    label_selector(e, sel, &format!("{pp}.podSelector"));
                }
                if let Some(sel) = peer.get("namespaceSelector") {
                    label_selector(e, sel, &format!("{pp}.namespaceSelector"));
                }
            }
        }
    }
    for (i, t) in arr(spec, "policyTypes").iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !["Egress", "Ingress"].contains(&t) {
            e.not_supported(&format!("spec.policyTypes[{i}]"), t, &["Egress", "Ingress"]);
        }
    }
}

pub(super) fn ingress_backend(e: &mut Errs, b: &Value, path: &str) {
    let has_res = b.get("resource").is_some_and(|v| !v.is_null());
    let svc = b.get("service").filter(|v| !v.is_null());
    match (has_res, svc) {
        (true, Some(_)) => e.invalid(
            path,
            "\"\"".into(),
            "cannot set both resource and service backends",
        ),
        (true, None) => {}
        (false, Some(svc)) => {
            let name = s(svc, "name");
            if name.is_empty() {
                e.required(&format!("{path}.service.name"), "");
            } else {
                for m in names::is_dns1035_label(name) {
                    e.invalid(&format!("{path}.service.name"), format!("{name:?}"), &m);
                }
            }
            let port = svc.get("port").unwrap_or(&Value::Null);
            let pname = s(port, "name");
            let pnum = port.get("number").and_then(Value::as_i64).unwrap_or(0);
            if !pname.is_empty() && pnum != 0 {
                e.invalid(
                    path,
                    "\"\"".into(),
                    "cannot set both port name & port number",
                );
            } else if !pname.is_empty() {
                for m in names::is_valid_port_name(pname) {
                    e.invalid(
                        &format!("{path}.service.port.name"),
                        format!("{pname:?}"),
                        &m,
                    );
                }
            } else if pnum != 0 {
                port_num(
                    e,
                    Some(&Value::from(pnum)),
                    &format!("{path}.service.port.number"),
                );
            } else {
                e.required(path, "port name or number is required");
            }
        }
        (false, None) => e.invalid(
            path,
            "\"\"".into(),
            "resource or service backend is required",
        ),
    }
}

pub(super) fn ingress(e: &mut Errs, spec: &Value) {
    let rules = arr(spec, "rules");
    let default_backend = spec.get("defaultBackend").filter(|v| !v.is_null());
    if rules.is_empty() && default_backend.is_none() {
        e.invalid(
            "spec",
            "\"\"".into(),
            "either `defaultBackend` or `rules` must be specified",
        );
    }
    if let Some(b) = default_backend {
        ingress_backend(e, b, "spec.defaultBackend");
    }
    for (i, r) in rules.iter().enumerate() {
        let host = s(r, "host");
        if !host.is_empty() {
            let h = host.strip_prefix("*.").unwrap_or(host);
            for m in names::is_dns1123_subdomain(h) {
                e.invalid(&format!("spec.rules[{i}].host"), format!("{host:?}"), &m);
            }
        }
        let Some(http) = r.get("http").filter(|v| !v.is_null()) else {
            continue;
        };
        let paths = arr(http, "paths");
        if paths.is_empty() {
            e.required(&format!("spec.rules[{i}].http.paths"), "");
        }
        for (j, p) in paths.iter().enumerate() {
            let pp = format!("spec.rules[{i}].http.paths[{j}]");
            let pt = s(p, "pathType");
            let path = s(p, "path");
            if pt.is_empty() {
                e.required(&format!("{pp}.pathType"), "pathType must be specified");
            } else if !["Exact", "ImplementationSpecific", "Prefix"].contains(&pt) {
                e.not_supported(
                    &format!("{pp}.pathType"),
                    pt,
                    &["Exact", "ImplementationSpecific", "Prefix"],
                );
            } else if (pt == "Exact" || pt == "Prefix") && !path.starts_with('/') {
                e.invalid(
                    &format!("{pp}.path"),
                    format!("{path:?}"),
                    "must be an absolute path",
                );
            }
            if pt == "ImplementationSpecific" && !path.is_empty() && !path.starts_with('/') {
                e.invalid(
                    &format!("{pp}.path"),
                    format!("{path:?}"),
                    "must be an absolute path",
                );
            }
            ingress_backend(
                e,
                p.get("backend").unwrap_or(&Value::Null),
                &format!("{pp}.backend"),
            );
        }
    }
}
