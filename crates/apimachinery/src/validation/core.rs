//! Core (v1) kinds: Service, Pod spec, ConfigMap/Secret keys, and their update rules.

use super::*;

pub(super) fn is_headless(spec: &Value) -> bool {
    s(spec, "clusterIP") == "None"
}

pub(super) fn port_num(e: &mut Errs, v: Option<&Value>, path: &str) {
    let n = v.and_then(Value::as_i64).unwrap_or(0);
    for m in names::is_valid_port_num(n) {
        e.invalid(path, n.to_string(), &m);
    }
}

pub(super) fn port_num_or_name(e: &mut Errs, v: Option<&Value>, path: &str) {
    match v {
        Some(Value::String(name)) => {
            for m in names::is_valid_port_name(name) {
                e.invalid(path, format!("{name:?}"), &m);
            }
        }
        other => port_num(e, other, path),
    }
}

pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

pub(super) fn protocol(e: &mut Errs, v: &str, path: &str) {
    if v.is_empty() {
        e.required(path, "");
    } else if !PROTOCOLS.contains(&v) {
        e.not_supported(path, v, PROTOCOLS);
    }
}

pub(super) fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

pub(super) fn service(e: &mut Errs, spec: &Value) {
    let ty = s(spec, "type");
    let ports = arr(spec, "ports");
    let headless = is_headless(spec);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        e.required("spec.ports", "");
    }
    match ty {
        "LoadBalancer" | "NodePort" if headless => {
            e.invalid(
                "spec.clusterIPs[0]",
                "\"None\"".into(),
                &format!("may not be set to 'None' for {ty} services"),
            );
        }
        "ExternalName" => {
            if !arr(spec, "clusterIPs").is_empty() {
                e.forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                );
            }
            if !arr(spec, "ipFamilies").is_empty() {
                e.forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                );
            }
            if spec.get("ipFamilyPolicy").is_some_and(|v| !v.is_null()) {
                e.forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                );
            }
            let cname = s(spec, "externalName").trim_end_matches('.');
            if cname.is_empty() {
                e.required("spec.externalName", "");
            } else {
                for m in names::is_dns1123_subdomain(cname) {
                    e.invalid("spec.externalName", format!("{cname:?}"), &m);
                }
            }
        }
        _ => {}
    }
    if ty == "LoadBalancer" {
        for (i, p) in ports.iter().enumerate() {
            if p.get("port").and_then(Value::as_i64) == Some(10250) {
                e.invalid(
                    &format!("spec.ports[{i}]"),
                    "10250".into(),
                    "may not expose port 10250 externally since it is used by kubelet",
                );
            }
        }
    }
    let mut names_seen: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = s(p, "name");
        if ports.len() > 1 && name.is_empty() {
            e.required(&format!("{pp}.name"), "");
        } else if !name.is_empty() {
            for m in names::is_dns1123_label(name) {
                e.invalid(&format!("{pp}.name"), format!("{name:?}"), &m);
            }
            if names_seen.contains(&name) {
                e.duplicate(&format!("{pp}.name"), format!("{name:?}"));
            } else {
                names_seen.push(name);
            }
        }
        port_num(e, p.get("port"), &format!("{pp}.port"));
        protocol(e, s(p, "protocol"), &format!("{pp}.protocol"));
        if p.get("targetPort").is_some_and(|v| !v.is_null()) {
            port_num_or_name(e, p.get("targetPort"), &format!("{pp}.targetPort"));
        }
    }
    labels(e, spec.get("selector"), "spec.selector");
    let affinity = s(spec, "sessionAffinity");
    if affinity.is_empty() {
        e.required("spec.sessionAffinity", "");
    } else if !["ClientIP", "None"].contains(&affinity) {
        e.not_supported("spec.sessionAffinity", affinity, &["ClientIP", "None"]);
    }
    let has_config = spec
        .get("sessionAffinityConfig")
        .is_some_and(|v| !v.is_null());
    if affinity == "ClientIP" {
        let t = spec
            .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
            .and_then(Value::as_i64);
        match t {
            None => e.required("spec.sessionAffinityConfig.clientIP.timeoutSeconds", ""),
            Some(t) if !(1..=86400).contains(&t) => e.invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                t.to_string(),
                "must be greater than 0 and less than 86400",
            ),
            _ => {}
        }
    } else if affinity == "None" && has_config {
        e.forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        );
    }
    let cluster_ip = s(spec, "clusterIP");
    let ips = arr(spec, "clusterIPs");
    if let Some(first) = ips.first().and_then(Value::as_str) {
        if !cluster_ip.is_empty() && first != cluster_ip {
            e.invalid(
                "spec.clusterIPs",
                go_strings(spec.get("clusterIPs")),
                "first value must match `clusterIP`",
            );
        }
    }
    for (i, ip) in ips.iter().enumerate() {
        let ip = ip.as_str().unwrap_or_default();
        if ip == "None" && i == 0 {
            continue;
        }
        if !ip.is_empty() && !is_ip(ip) {
            e.invalid(
                &format!("spec.clusterIPs[{i}]"),
                format!("{ip:?}"),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
    }
    for (i, ip) in arr(spec, "externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or_default();
        if !is_ip(ip) {
            e.invalid(
                &format!("spec.externalIPs[{i}]"),
                format!("{ip:?}"),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
    }
    const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if ty.is_empty() {
        e.required("spec.type", "");
    } else if !TYPES.contains(&ty) {
        e.not_supported("spec.type", ty, TYPES);
    }
    for (i, p) in ports.iter().enumerate() {
        let np = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if np == 0 {
            continue;
        }
        if ty == "ClusterIP" {
            e.forbidden(
                &format!("spec.ports[{i}].nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            );
        } else if !(30000..=32767).contains(&np) && (ty == "NodePort" || ty == "LoadBalancer") {
            // upstream's node-port allocator rejects this with the default --service-node-port-range
            e.invalid(
                &format!("spec.ports[{i}].nodePort"),
                np.to_string(),
                "provided port is not in the valid range. The range of valid ports is 30000-32767",
            );
        }
    }
    let mut node_ports: Vec<(&str, i64)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let np = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if np == 0 {
            continue;
        }
        let key = (s(p, "protocol"), np);
        if node_ports.contains(&key) {
            e.duplicate(&format!("spec.ports[{i}].nodePort"), np.to_string());
        }
        node_ports.push(key);
    }
    let mut seen: Vec<(&str, i64)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let key = (
            s(p, "protocol"),
            p.get("port").and_then(Value::as_i64).unwrap_or(0),
        );
        if seen.contains(&key) {
            e.duplicate(
                &format!("spec.ports[{i}]"),
                format!(
                    "core.ServicePort{{Name:\"\", Protocol:{:?}, AppProtocol:(*string)(nil), Port:{}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    key.0, key.1
                ),
            );
        }
        seen.push(key);
    }
    let externally = ty == "LoadBalancer"
        || ty == "NodePort"
        || (ty == "ClusterIP" && !arr(spec, "externalIPs").is_empty());
    let etp = s(spec, "externalTrafficPolicy");
    if !externally {
        if !etp.is_empty() {
            e.invalid(
                "spec.externalTrafficPolicy",
                format!("{etp:?}"),
                "may only be set for externally-accessible services",
            );
        }
    } else if etp.is_empty() {
        e.required("spec.externalTrafficPolicy", "");
    } else if !["Cluster", "Local"].contains(&etp) {
        e.not_supported("spec.externalTrafficPolicy", etp, &["Cluster", "Local"]);
    }
    let itp = s(spec, "internalTrafficPolicy");
    if ty != "ExternalName" {
        if itp.is_empty() {
            e.required("spec.internalTrafficPolicy", "");
        } else if !["Cluster", "Local"].contains(&itp) {
            e.not_supported("spec.internalTrafficPolicy", itp, &["Cluster", "Local"]);
        }
    }
}

pub(super) fn service_update(e: &mut Errs, spec: &Value, old: &Value) {
    if s(spec, "type") == "ExternalName" || s(old, "type") == "ExternalName" {
        return;
    }
    if is_headless(spec) && is_headless(old) {
        return;
    }
    let new_ips = arr(spec, "clusterIPs");
    let old_ips = arr(old, "clusterIPs");
    let shown = go_strings(Some(
        spec.get("clusterIPs").unwrap_or(&Value::Array(Vec::new())),
    ));
    if new_ips.len() == old_ips.len() {
        for (i, ip) in old_ips.iter().enumerate() {
            if Some(ip) != new_ips.get(i) {
                e.invalid(
                    &format!("spec.clusterIPs[{i}]"),
                    shown.clone(),
                    "may not change once set",
                );
            }
        }
    } else if old_ips.len() > new_ips.len() {
        if new_ips.is_empty() {
            e.invalid(
                "spec.clusterIPs[0]",
                shown,
                "primary clusterIP can not be unset",
            );
        } else if new_ips.first() != old_ips.first() {
            e.invalid("spec.clusterIPs[0]", shown, "may not change once set");
        }
    } else if !old_ips.is_empty() && new_ips.first() != old_ips.first() {
        e.invalid("spec.clusterIPs[0]", shown, "may not change once set");
    }
}

pub(super) const RESTART_POLICIES: &[&str] = &["Always", "Never", "OnFailure"];
pub(super) const DNS_POLICIES: &[&str] =
    &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
pub(super) const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];

pub(super) fn pod_spec(e: &mut Errs, spec: &Value, path: &str) {
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        e.required(&format!("{path}.containers"), "");
    }
    let mut all_names: Vec<&str> = Vec::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in arr(spec, key).iter().enumerate() {
            let cp = format!("{path}.{key}[{i}]");
            let name = s(c, "name");
            if name.is_empty() {
                e.required(&format!("{cp}.name"), "");
            } else {
                for m in names::is_dns1123_label(name) {
                    e.invalid(&format!("{cp}.name"), format!("{name:?}"), &m);
                }
                if all_names.contains(&name) {
                    e.duplicate(&format!("{cp}.name"), format!("{name:?}"));
                } else {
                    all_names.push(name);
                }
            }
            if s(c, "image").trim().is_empty() {
                e.required(&format!("{cp}.image"), "");
            }
            let pull = s(c, "imagePullPolicy");
            if pull.is_empty() {
                e.required(&format!("{cp}.imagePullPolicy"), "");
            } else if !PULL_POLICIES.contains(&pull) {
                e.not_supported(&format!("{cp}.imagePullPolicy"), pull, PULL_POLICIES);
            }
            let mut port_names: Vec<&str> = Vec::new();
            for (j, p) in arr(c, "ports").iter().enumerate() {
                let pp = format!("{cp}.ports[{j}]");
                let pname = s(p, "name");
                if !pname.is_empty() {
                    for m in names::is_valid_port_name(pname) {
                        e.invalid(&format!("{pp}.name"), format!("{pname:?}"), &m);
                    }
                    if port_names.contains(&pname) {
                        e.duplicate(&format!("{pp}.name"), format!("{pname:?}"));
                    } else {
                        port_names.push(pname);
                    }
                }
                match p.get("containerPort").and_then(Value::as_i64) {
                    None | Some(0) => e.required(&format!("{pp}.containerPort"), ""),
                    v => port_num(
                        e,
                        v.map(Value::from).as_ref(),
                        &format!("{pp}.containerPort"),
                    ),
                }
                if let Some(hp) = p
                    .get("hostPort")
                    .and_then(Value::as_i64)
                    .filter(|h| *h != 0)
                {
                    port_num(e, Some(&Value::from(hp)), &format!("{pp}.hostPort"));
                }
                protocol(e, s(p, "protocol"), &format!("{pp}.protocol"));
            }
            let mut env_names = Vec::new();
            for (j, v) in arr(c, "env").iter().enumerate() {
                let n = s(v, "name");
                if n.is_empty() {
                    e.required(&format!("{cp}.env[{j}].name"), "");
                }
                env_names.push(n);
            }
        }
    }
    let rp = s(spec, "restartPolicy");
    if rp.is_empty() {
        e.required(&format!("{path}.restartPolicy"), "");
    } else if !RESTART_POLICIES.contains(&rp) {
        e.not_supported(&format!("{path}.restartPolicy"), rp, RESTART_POLICIES);
    }
    let dp = s(spec, "dnsPolicy");
    if dp.is_empty() {
        e.required(&format!("{path}.dnsPolicy"), "");
    } else if !DNS_POLICIES.contains(&dp) {
        e.not_supported(&format!("{path}.dnsPolicy"), dp, DNS_POLICIES);
    }
    let mut vol_names: Vec<&str> = Vec::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let n = s(v, "name");
        let vp = format!("{path}.volumes[{i}].name");
        if n.is_empty() {
            e.required(&vp, "");
        } else {
            for m in names::is_dns1123_label(n) {
                e.invalid(&vp, format!("{n:?}"), &m);
            }
            if vol_names.contains(&n) {
                e.duplicate(&vp, format!("{n:?}"));
            }
            vol_names.push(n);
        }
    }
    if let Some(ns) = spec.get("nodeSelector") {
        labels(e, Some(ns), &format!("{path}.nodeSelector"));
    }
}

/// Pod updates may only change images, activeDeadlineSeconds, tolerations (additions) and the grace period
/// (upstream's `ValidatePodUpdate`). Binding a pod (nodeName "" → node) is allowed too, for schedulers that do
/// not use the binding subresource.
pub(super) fn pod_update(e: &mut Errs, spec: &Value, old: &Value) {
    fn normalized(spec: &Value, other: &Value) -> Value {
        let mut s = spec.clone();
        if let Some(m) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                m.shift_remove(k);
            }
            if other.get("nodeName").is_none_or(|n| n.as_str() == Some("")) {
                m.shift_remove("nodeName");
            }
            for key in ["containers", "initContainers"] {
                if let Some(cs) = m.get_mut(key).and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(c) = c.as_object_mut() {
                            c.shift_remove("image");
                        }
                    }
                }
            }
        }
        s
    }
    let mut new_n = normalized(spec, old);
    let mut old_n = normalized(old, old);
    if old.get("nodeName").is_none_or(|n| n.as_str() == Some("")) {
        if let (Some(a), Some(b)) = (new_n.as_object_mut(), old_n.as_object_mut()) {
            a.shift_remove("nodeName");
            b.shift_remove("nodeName");
        }
    }
    if new_n != old_n {
        e.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
}

pub(super) fn config_key(e: &mut Errs, key: &str, path: &str) {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
    if !ok {
        e.invalid(
            path,
            format!("{key:?}"),
            &names::regex_error(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                "[-._a-zA-Z0-9]+",
                &["key.name", "KEY_NAME", "key-name"],
            ),
        );
    } else if key.len() > 253 {
        e.invalid(path, format!("{key:?}"), &names::max_len_error(253));
    } else if key == "." || key == ".." || key.starts_with("..") {
        e.invalid(path, format!("{key:?}"), "must not be '.' or '..'");
    }
}
