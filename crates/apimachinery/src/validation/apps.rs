//! apps/v1 workloads: Deployment, ReplicaSet, StatefulSet, DaemonSet.

use super::*;

pub(super) fn non_negative(e: &mut Errs, v: Option<&Value>, path: &str) {
    if let Some(n) = v.and_then(Value::as_i64) {
        if n < 0 {
            e.invalid(path, n.to_string(), "must be greater than or equal to 0");
        }
    }
}

pub(super) fn workload(e: &mut Errs, kind: &str, spec: &Value) {
    let selector = spec.get("selector").filter(|s| !s.is_null());
    match selector {
        None => e.required("spec.selector", ""),
        Some(sel) => {
            label_selector(e, sel, "spec.selector");
            let empty = sel
                .get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
                && arr(sel, "matchExpressions").is_empty();
            if empty {
                let what = match kind {
                    "Deployment" => "deployment",
                    "ReplicaSet" => "replicaset",
                    "StatefulSet" => "statefulset",
                    _ => "daemonset",
                };
                e.invalid(
                    "spec.selector",
                    go_label_selector(Some(sel)),
                    &format!("empty selector is invalid for {what}"),
                );
            }
        }
    }
    if kind != "DaemonSet" {
        non_negative(e, spec.get("replicas"), "spec.replicas");
    }
    non_negative(e, spec.get("minReadySeconds"), "spec.minReadySeconds");
    non_negative(
        e,
        spec.get("revisionHistoryLimit"),
        "spec.revisionHistoryLimit",
    );
    let Some(tmpl) = spec.get("template").filter(|t| t.is_object()) else {
        e.required("spec.template", "");
        return;
    };
    let tlabels = tmpl.pointer("/metadata/labels");
    if let Some(sel) = selector {
        if let Ok(ls) = crate::selector::LabelSelector::from_json(sel) {
            if !ls.is_empty() && !ls.matches(tlabels) {
                e.invalid(
                    "spec.template.metadata.labels",
                    go_map(tlabels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    object_meta(
        e,
        tmpl.get("metadata").unwrap_or(&Value::Null),
        "spec.template.metadata",
        None,
    );
    let ps = tmpl.get("spec").unwrap_or(&Value::Null);
    pod_spec(e, ps, "spec.template.spec");
    let rp = s(ps, "restartPolicy");
    if !rp.is_empty() && rp != "Always" {
        e.not_supported("spec.template.spec.restartPolicy", rp, &["Always"]);
    }
    if kind == "Deployment" {
        let st = s(spec.get("strategy").unwrap_or(&Value::Null), "type");
        if !st.is_empty() && !["Recreate", "RollingUpdate"].contains(&st) {
            e.not_supported("spec.strategy.type", st, &["Recreate", "RollingUpdate"]);
        }
        if st == "Recreate"
            && spec
                .pointer("/strategy/rollingUpdate")
                .is_some_and(|v| !v.is_null())
        {
            e.forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            );
        }
    }
}

/// StatefulSet updates may only change replicas, ordinals, template, updateStrategy,
/// persistentVolumeClaimRetentionPolicy and minReadySeconds (upstream's `ValidateStatefulSetUpdate`).
pub(super) fn statefulset_update(e: &mut Errs, spec: &Value, old: &Value) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                m.shift_remove(k);
            }
        }
        v
    };
    if strip(spec) != strip(old) {
        e.forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        );
    }
}
