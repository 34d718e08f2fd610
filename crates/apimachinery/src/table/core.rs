//! Cells of core (v1) kinds whose printers do more than read fields: Services' addresses, Endpoints, Pods' STATUS, Nodes, Events.

use super::*;

/// Load-balancer ingress points: IPs or hostnames, deduplicated and sorted (upstream uses a string set).
pub(super) fn load_balancer_ips(obj: &Value) -> String {
    let mut set: Vec<String> = arr(obj, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            let ip = s(i, &["ip"]);
            let host = s(i, &["hostname"]);
            if !ip.is_empty() {
                Some(ip.to_string())
            } else if !host.is_empty() {
                Some(host.to_string())
            } else {
                None
            }
        })
        .collect();
    set.sort();
    set.dedup();
    set.join(",")
}

pub(super) fn service_external_ip(obj: &Value) -> String {
    let ext: Vec<&str> = arr(obj, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(obj, &["spec", "type"]) {
        "ClusterIP" | "NodePort" => {
            if ext.is_empty() {
                "<none>".into()
            } else {
                ext.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ips(obj);
            if !ext.is_empty() {
                let mut results: Vec<&str> = Vec::new();
                if !lb.is_empty() {
                    results.extend(lb.split(','));
                }
                results.extend(ext);
                return results.join(",");
            }
            if lb.is_empty() {
                "<pending>".into()
            } else {
                lb
            }
        }
        "ExternalName" => s(obj, &["spec", "externalName"]).into(),
        _ => "<unknown>".into(),
    }
}

pub(super) fn format_endpoints(obj: &Value) -> String {
    let subsets = arr(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let max = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0;
    for ss in subsets {
        let addrs = arr(ss, &["addresses"]);
        let ports = arr(ss, &["ports"]);
        if ports.is_empty() {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(s(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(join_host_port(s(a, &["ip"]), i(p, &["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - max)
    } else {
        ret
    }
}

pub(super) fn pod_cells(pod: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total = arr(pod, &["spec", "containers"]).len();
    let mut ready = 0;
    let ts = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut last_restartable_init_restart: Option<jiff::Timestamp> = None;
    let phase = s(pod, &["status", "phase"]);
    let mut reason = or(s(pod, &["status", "reason"]), phase).to_string();
    for c in arr(pod, &["status", "conditions"]) {
        if s(c, &["type"]) == "PodScheduled" && s(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let init_specs = arr(pod, &["spec", "initContainers"]);
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| s(c, &["name"]) == name && s(c, &["restartPolicy"]) == "Always")
    };
    total += init_specs
        .iter()
        .filter(|c| s(c, &["restartPolicy"]) == "Always")
        .count();
    let later = |a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut initializing = false;
    let init_statuses = arr(pod, &["status", "initContainerStatuses"]);
    for (idx, c) in init_statuses.iter().enumerate() {
        restarts += i(c, &["restartCount"]);
        let term_date = ts(get(
            c,
            &["lastTerminationState", "terminated", "finishedAt"],
        ));
        last_restart = later(last_restart, term_date);
        let cname = s(c, &["name"]);
        if restartable(cname) {
            restartable_init_restarts += i(c, &["restartCount"]);
            last_restartable_init_restart = later(last_restartable_init_restart, term_date);
        }
        let terminated = get(c, &["state", "terminated"]).filter(|v| v.is_object());
        let waiting_reason = s(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| i(t, &["exitCode"]) == 0) {
            continue;
        } else if restartable(cname) && get(c, &["started"]).and_then(Value::as_bool) == Some(true)
        {
            if get(c, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        } else if let Some(t) = terminated {
            let r = s(t, &["reason"]);
            reason = if r.is_empty() {
                let sig = i(t, &["signal"]);
                if sig != 0 {
                    format!("Init:Signal:{sig}")
                } else {
                    format!("Init:ExitCode:{}", i(t, &["exitCode"]))
                }
            } else {
                format!("Init:{r}")
            };
            initializing = true;
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
            initializing = true;
        } else {
            reason = format!("Init:{}/{}", idx, init_specs.len());
            initializing = true;
        }
        break;
    }
    let initialized = arr(pod, &["status", "conditions"])
        .iter()
        .any(|c| s(c, &["type"]) == "Initialized" && s(c, &["status"]) == "True");
    if !initializing || initialized {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for c in arr(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += i(c, &["restartCount"]);
            last_restart = later(
                last_restart,
                ts(get(
                    c,
                    &["lastTerminationState", "terminated", "finishedAt"],
                )),
            );
            let waiting_reason = s(c, &["state", "waiting", "reason"]);
            let terminated = get(c, &["state", "terminated"]).filter(|v| v.is_object());
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if i(t, &["signal"]) != 0 {
                    format!("Signal:{}", i(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", i(t, &["exitCode"]))
                };
            } else if get(c, &["ready"]).and_then(Value::as_bool) == Some(true)
                && get(c, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let ready_cond = arr(pod, &["status", "conditions"])
                .iter()
                .any(|c| s(c, &["type"]) == "Ready" && s(c, &["status"]) == "True");
            reason = if ready_cond {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let deleting = get(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    if deleting && s(pod, &["status", "reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => {
            format!(
                "{restarts} ({} ago)",
                human_duration(now.duration_since(t).as_secs_f64())
            )
        }
        _ => restarts.to_string(),
    };
    let pod_ip = arr(pod, &["status", "podIPs"])
        .first()
        .map(|p| s(p, &["ip"]))
        .filter(|x| !x.is_empty())
        .unwrap_or_else(|| s(pod, &["status", "podIP"]));
    let gates = arr(pod, &["spec", "readinessGates"]);
    let gates_str = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr(pod, &["status", "conditions"]);
        let trues = gates
            .iter()
            .filter(|g| {
                let t = s(g, &["conditionType"]);
                conds
                    .iter()
                    .find(|c| s(c, &["type"]) == t)
                    .is_some_and(|c| s(c, &["status"]) == "True")
            })
            .count();
        format!("{trues}/{}", gates.len())
    };
    vec![
        json!(s(pod, &["metadata", "name"])),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(translate_timestamp_since(
            get(pod, &["metadata", "creationTimestamp"]),
            now
        )),
        json!(or(pod_ip, "<none>")),
        json!(or(s(pod, &["spec", "nodeName"]), "<none>")),
        json!(or(s(pod, &["status", "nominatedNodeName"]), "<none>")),
        json!(gates_str),
    ]
}

pub(super) fn node_cells(obj: &Value, name: Value, age: Value) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    if let Some(c) = arr(obj, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| s(c, &["type"]) == "Ready")
    {
        status.push(if s(c, &["status"]) == "True" {
            "Ready".into()
        } else {
            "NotReady".into()
        });
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if get(obj, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = get(obj, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let addr = |t: &str| {
        arr(obj, &["status", "addresses"])
            .iter()
            .find(|a| s(a, &["type"]) == t)
            .map(|a| s(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |k: &str| or(s(obj, &["status", "nodeInfo", k]), "<unknown>").to_string();
    vec![
        name,
        json!(status.join(",")),
        json!(roles),
        age,
        json!(s(obj, &["status", "nodeInfo", "kubeletVersion"])),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// events.k8s.io/v1 Event → the core/v1 field names the printer uses (upstream converts both to one internal type).
pub(super) fn events_v1_to_core(ev: &Value) -> Value {
    let mut out = json!({"metadata": ev.get("metadata").cloned().unwrap_or(json!({}))});
    let copy = [
        ("regarding", "involvedObject"),
        ("note", "message"),
        ("reason", "reason"),
        ("type", "type"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
    ];
    for (from, to) in copy {
        if let Some(v) = ev.get(from) {
            out[to] = v.clone();
        }
    }
    out
}

pub(super) fn event_cells(ev: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let present = |p: &[&str]| {
        get(ev, p)
            .and_then(Value::as_str)
            .is_some_and(|x| !x.is_empty())
    };
    let first = if present(&["firstTimestamp"]) {
        translate_timestamp_since(get(ev, &["firstTimestamp"]), now)
    } else {
        translate_timestamp_since(get(ev, &["eventTime"]), now)
    };
    let mut last = if present(&["lastTimestamp"]) {
        translate_timestamp_since(get(ev, &["lastTimestamp"]), now)
    } else {
        first.clone()
    };
    let mut count = i(ev, &["count"]);
    if get(ev, &["series"]).is_some_and(Value::is_object) {
        last = translate_timestamp_since(get(ev, &["series", "lastObservedTime"]), now);
        count = i(ev, &["series", "count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = s(ev, &["involvedObject", "kind"]).to_lowercase();
    let oname = s(ev, &["involvedObject", "name"]);
    let target = if oname.is_empty() {
        kind
    } else {
        format!("{kind}/{oname}")
    };
    let component = or(
        s(ev, &["source", "component"]),
        s(ev, &["reportingComponent"]),
    );
    let host = or(s(ev, &["source", "host"]), s(ev, &["reportingInstance"]));
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last),
        json!(s(ev, &["type"])),
        json!(s(ev, &["reason"])),
        json!(target),
        json!(s(ev, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(s(ev, &["message"]).trim()),
        json!(first),
        json!(count),
        json!(s(ev, &["metadata", "name"])),
    ]
}
