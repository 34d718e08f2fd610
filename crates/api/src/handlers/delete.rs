//! DELETE of one object and of collections: preconditions, graceful deletion, finalizers, propagation policies, namespace contents.

use super::*;

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeleteOptions {
    #[serde(default)]
    pub(super) dry_run: Vec<String>,
    pub(super) grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub(super) preconditions: Option<Preconditions>,
    pub(super) propagation_policy: Option<String>,
    pub(super) orphan_dependents: Option<bool>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Preconditions {
    pub(super) uid: Option<String>,
    pub(super) resource_version: Option<String>,
}

pub(super) fn delete_options(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut o: DeleteOptions = if body.iter().all(|b| b.is_ascii_whitespace()) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    if q.get("dryRun").is_some_and(|v| v == "All") {
        o.dry_run.push("All".into());
    }
    if let Some(p) = q.get("propagationPolicy").filter(|p| !p.is_empty()) {
        o.propagation_policy = Some(p.clone());
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        o.grace_period_seconds = Some(g);
    }
    Ok(o)
}

pub(super) const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

pub(super) async fn delete(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    body: &[u8],
) -> ApiResult<Value> {
    let opts = delete_options(q, body)?;
    delete_one(ctx, res, ns, name, &opts).await
}

pub(super) async fn delete_one(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let dry = opts.dry_run.iter().any(|d| d == "All");
    let is_ns = res.group.is_empty() && res.kind == "Namespace";
    if is_ns && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    for _ in 0..8 {
        let cur = get_kv(ctx, res, ns, name).await?;
        let obj = from_kv(&cur)?;
        if let Some(p) = &opts.preconditions {
            let uid = meta(&obj)["uid"].as_str().unwrap_or("");
            if let Some(u) = p.uid.as_deref().filter(|u| *u != uid) {
                return Err(ApiError::conflict(
                    res.group,
                    res.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {u}, UID in object meta: {uid}"
                    ),
                ));
            }
            let rv = cur.mod_revision.to_string();
            if let Some(r) = p.resource_version.as_deref().filter(|r| *r != rv) {
                return Err(ApiError::conflict(res.group, res.plural, name, &format!("Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {rv}")));
            }
        }
        if dry {
            return Ok(obj);
        }
        // Foreground / Orphan propagation: the garbage collector (controllers) finishes the deletion once the
        // dependents are gone / released, then removes this finalizer.
        let propagation_finalizer = match opts.propagation_policy.as_deref() {
            Some("Foreground") if !is_ns => Some("foregroundDeletion"),
            Some("Orphan") if !is_ns => Some("orphan"),
            _ if opts.orphan_dependents == Some(true) && !is_ns => Some("orphan"),
            _ => None,
        };
        let mut obj = obj;
        let mut added_finalizer = false;
        if let Some(f) = propagation_finalizer {
            let m = meta_mut(&mut obj);
            let list = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                if !a.iter().any(|x| x == f) {
                    a.push(json!(f));
                    added_finalizer = true;
                }
            }
        }
        let has_finalizers = meta(&obj)["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        // Pods bound to a node terminate gracefully: the kubelet deletes them (grace 0) once stopped.
        let graceful_pod = res.group.is_empty()
            && res.kind == "Pod"
            && obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && opts.grace_period_seconds != Some(0);
        let already_terminating = meta(&obj)["deletionTimestamp"].is_string();
        if has_finalizers || (graceful_pod && !already_terminating) {
            if already_terminating && !added_finalizer {
                return Ok(obj);
            }
            let grace = opts
                .grace_period_seconds
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(if graceful_pod { 30 } else { 0 });
            let mut new = obj.clone();
            let when = jiff::Timestamp::now()
                + jiff::SignedDuration::from_secs(if has_finalizers && !graceful_pod {
                    0
                } else {
                    grace
                });
            let m = meta_mut(&mut new);
            if !already_terminating {
                m.insert(
                    "deletionTimestamp".into(),
                    json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            m.remove("resourceVersion");
            match ctx
                .store
                .update(&res.key(ns, name), to_stored(&new), cur.mod_revision)
                .await
            {
                Ok(kv) => return Ok(with_rv(new, kv.mod_revision)),
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(res, name, e)),
            }
        }
        if is_ns {
            delete_namespace_contents(ctx, name).await?;
        }
        match ctx
            .store
            .delete(&res.key(ns, name), Some(cur.mod_revision))
            .await
        {
            Ok(kv) => {
                if is_service(res) {
                    let owner = format!("{}/{name}", ns.unwrap_or(""));
                    ctx.alloc.release(&held_by(&obj), &owner).await;
                }
                return Ok(with_rv(obj, kv.mod_revision));
            }
            Err(skiff_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(res, name, e)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// What upstream's namespace controller does, done synchronously: remove every namespaced object in it.
pub(super) async fn delete_namespace_contents(ctx: &Ctx, ns: &str) -> ApiResult<()> {
    for r in registry::RESOURCES.iter().filter(|r| r.namespaced) {
        let items = ctx
            .store
            .list(&r.ns_prefix(Some(ns)), ListOptions::default())
            .await?;
        for kv in items.items {
            match ctx.store.delete(&kv.key, None).await {
                Ok(deleted) => {
                    if let (true, Ok(v)) = (
                        is_service(r),
                        serde_json::from_slice::<Value>(&deleted.value),
                    ) {
                        let owner =
                            format!("{ns}/{}", v["metadata"]["name"].as_str().unwrap_or(""));
                        ctx.alloc.release(&held_by(&v), &owner).await;
                    }
                }
                Err(skiff_store::Error::NotFound(_)) => {}
                Err(e) => return Err(ApiError::from(e)),
            }
        }
    }
    Ok(())
}

pub(super) async fn delete_collection(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    body: &[u8],
) -> ApiResult<Response<Body>> {
    let opts = delete_options(q, body)?;
    let filters = Filters::from_query(q, res)?;
    let (items, rev, _, _) = list_filtered(ctx, &res.ns_prefix(ns), &filters, None, 0).await?;
    let mut deleted = Vec::new();
    for v in items {
        let name = name_of(&v).to_string();
        let ns = meta(&v)["namespace"].as_str().map(|s| s.to_string());
        match delete_one(ctx, res, ns.as_deref(), &name, &opts).await {
            Ok(d) => deleted.push(d),
            Err(e) if e.code == 404 || e.code == 403 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_resp(
        200,
        &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted}),
    ))
}
