//! PATCH (JSON, merge, strategic merge, server-side apply), the scale subresource and pods/binding.

use super::*;

pub(super) fn to_scale(v: &Value) -> Value {
    let m = meta(v);
    let selector = v["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|ml| {
            ml.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": v["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": v["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

pub(super) async fn scale_write(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    cur: KeyValue,
    scale: &Value,
    opts: &WriteOpts,
) -> ApiResult<Option<Value>> {
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let mut obj = from_kv(&cur)?;
    obj["spec"]["replicas"] = json!(replicas);
    match finish_update(ctx, res, ns, name, &cur, obj, None, opts, false).await? {
        UpdateOutcome::Written(v) => Ok(Some(to_scale(&v))),
        // `cur` changed under us; the caller decides whether to retry
        UpdateOutcome::Stale => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn patch_obj(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    h: &HeaderMap,
    q: &Query,
    body: &[u8],
) -> ApiResult<(Value, u16, Vec<String>)> {
    let mt = media_type(h);
    let default_manager = if mt == "application/apply-patch+yaml" {
        ""
    } else {
        "unknown"
    };
    let opts = WriteOpts::from_query(q, default_manager)?;
    let patch_doc: Value = match mt.as_str() {
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let ssa = mt == "application/apply-patch+yaml";
    if ssa && opts.manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml requires fieldManager to be set",
        ));
    }
    let force = qbool(q, "force");
    let gk = res.gk();
    let now = now_rfc3339();
    let mut warnings = Vec::new();
    let explicit_rv = patch_sets_resource_version(&mt, &patch_doc);
    for _attempt in 0..UPDATE_ATTEMPTS {
        let cur = match ctx.store.get(&res.key(ns, name)).await? {
            Some(kv) => kv,
            None if ssa && sub.is_none() => {
                let mut applied = patch_doc.clone();
                check_type(res, &mut applied)?;
                warnings = check_fields(res, &applied, &opts)?;
                let body_name = name_of(&applied).to_string();
                if body_name != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({name})"
                    )));
                }
                let obj = apply::server_side_apply(gk, None, &applied, &opts.manager, force, &now)
                    .map_err(apply_err(res, name, None))?;
                let v = create_prepared(ctx, res, ns, obj, &opts, Some(())).await?;
                return Ok((v, 201, warnings));
            }
            None => return Err(ApiError::not_found(res.group, res.plural, name)),
        };
        let live = from_kv(&cur)?;
        if sub == Some("scale") {
            let scale = to_scale(&live);
            let patched = apply_patch_doc(
                &mt,
                GroupKind {
                    group: "autoscaling",
                    kind: "Scale",
                },
                &scale,
                &patch_doc,
            )?;
            let pinned = pinned_rv(explicit_rv, &patched);
            if !pinned.is_empty() && pinned != cur.mod_revision.to_string() {
                return Err(ApiError::stale(res.group, res.plural, name));
            }
            match scale_write(ctx, res, ns, name, cur, &patched, &opts).await? {
                Some(v) => return Ok((v, 200, warnings)),
                None if pinned.is_empty() => continue,
                None => return Err(ApiError::stale(res.group, res.plural, name)),
            }
        }
        let new = if ssa {
            let mut applied = patch_doc.clone();
            check_type(res, &mut applied)?;
            warnings = check_fields(res, &applied, &opts)?;
            apply::server_side_apply(gk, Some(&live), &applied, &opts.manager, force, &now)
                .map_err(apply_err(res, name, Some(&live)))?
        } else {
            let new = apply_patch_doc(&mt, gk, &live, &patch_doc)?;
            warnings = check_fields(res, &new, &opts)?;
            new
        };
        let pinned = pinned_rv(explicit_rv, &new);
        if !pinned.is_empty() && pinned != cur.mod_revision.to_string() {
            return Err(ApiError::stale(res.group, res.plural, name));
        }
        match finish_update(ctx, res, ns, name, &cur, new, sub, &opts, ssa).await? {
            UpdateOutcome::Written(v) => return Ok((v, 200, warnings)),
            UpdateOutcome::Stale if pinned.is_empty() => continue,
            UpdateOutcome::Stale => return Err(ApiError::stale(res.group, res.plural, name)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// Whether the patch itself names a resourceVersion (a precondition, upstream: 409 when stale). The patched
/// object always carries the live one, which must not count: without it the patch is retried on conflict.
pub(super) fn patch_sets_resource_version(mt: &str, doc: &Value) -> bool {
    if mt == "application/json-patch+json" {
        doc.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op["path"]
                    .as_str()
                    .is_some_and(|p| p == "/metadata/resourceVersion" || p == "/metadata")
            })
        })
    } else {
        doc.pointer("/metadata/resourceVersion")
            .is_some_and(|v| !v.is_null())
    }
}

/// The resourceVersion a patch pins (empty when it pins none).
pub(super) fn pinned_rv(explicit: bool, patched: &Value) -> String {
    if !explicit {
        return String::new();
    }
    meta(patched)["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub(super) fn apply_patch_doc(
    mt: &str,
    gk: GroupKind<'_>,
    live: &Value,
    doc: &Value,
) -> ApiResult<Value> {
    let r = match mt {
        "application/json-patch+json" => patch::apply_json_patch(live, doc),
        "application/merge-patch+json" => patch::apply_merge_patch(live, doc),
        _ => patch::apply_strategic_merge_patch(gk, live, doc),
    };
    r.map_err(|e| match e {
        patch::PatchError::Malformed(m) => ApiError::bad_request(m),
        patch::PatchError::Unprocessable(m) => ApiError::new(422, "Invalid", m),
    })
}

pub(super) fn apply_err<'a>(
    res: &'a Resource,
    name: &'a str,
    live: Option<&'a Value>,
) -> impl Fn(apply::ApplyError) -> ApiError + 'a {
    move |e| match e {
        apply::ApplyError::Conflicts(cs) => {
            // upstream names Update managers with their apiVersion (`... using apps/v1: .spec.replicas`)
            let msg = apply::conflict_message(&cs, live);
            let causes: Vec<Value> = cs
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                .collect();
            let mut e = ApiError::new(409, "Conflict", msg);
            e.details = Some(
                json!({"name": name, "group": res.group, "kind": res.plural, "causes": causes}),
            );
            e
        }
        apply::ApplyError::Invalid(m) => ApiError::bad_request(m),
    }
}

/// What upstream's binding REST does to the pod besides spec.nodeName (`setPodHostAndAnnotations`): copy the
/// Binding's annotations and mark the pod `PodScheduled=True` (a condition already True keeps its transition
/// time, as `UpdatePodCondition`).
pub(super) fn set_pod_scheduled(pod: &mut Value, binding: &Value, now: &str) {
    if let Some(ann) = binding["metadata"]["annotations"].as_object() {
        let m = meta_mut(pod);
        let pa = m.entry("annotations").or_insert_with(|| json!({}));
        if !pa.is_object() {
            *pa = json!({});
        }
        for (k, v) in ann {
            pa[k] = v.clone();
        }
    }
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let mut cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(conds) = status["conditions"].as_array_mut() {
        match conds.iter_mut().find(|c| c["type"] == "PodScheduled") {
            Some(c) => {
                if c["status"] == "True" && c["lastTransitionTime"].is_string() {
                    cond["lastTransitionTime"] = c["lastTransitionTime"].clone();
                }
                *c = cond;
            }
            None => conds.push(cond),
        }
    }
}

/// `POST pods/{name}/binding` (the scheduler): set spec.nodeName once.
pub(super) async fn bind_pod(
    ctx: &Ctx,
    res: &'static Resource,
    ns: &str,
    name: &str,
    binding: &Value,
    q: &Query,
) -> ApiResult<Response<Body>> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            &[Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: "target.name".into(),
            }],
        ));
    }
    for _ in 0..8 {
        let cur = get_kv(ctx, res, Some(ns), name).await?;
        let mut pod = from_kv(&cur)?;
        if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is already assigned to node \"{n}\""),
            ));
        }
        if meta(&pod)["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        set_pod_scheduled(&mut pod, binding, &now_rfc3339());
        if opts.dry_run {
            break;
        }
        match ctx
            .store
            .update(&res.key(Some(ns), name), to_stored(&pod), cur.mod_revision)
            .await
        {
            Ok(_) => break,
            Err(skiff_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(res, name, e)),
        }
    }
    Ok(json_resp(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
