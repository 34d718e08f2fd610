//! Create and update (PUT) with defaulting, validation, allocation and CAS on the stored revision.

use super::*;

pub(super) struct WriteOpts {
    pub(super) dry_run: bool,
    pub(super) manager: String,
    pub(super) validation: String,
}

impl WriteOpts {
    pub(super) fn from_query(q: &Query, default_manager: &str) -> ApiResult<Self> {
        let dry_run = match q.get("dryRun").map(|s| s.as_str()) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dryRun value: {other}. Supported values are All"
                )))
            }
        };
        let validation = q
            .get("fieldValidation")
            .cloned()
            .unwrap_or_else(|| "Warn".into());
        if !matches!(validation.as_str(), "Strict" | "Warn" | "Ignore") {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict (got {validation})"
            )));
        }
        let manager = q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| default_manager.to_string());
        Ok(Self {
            dry_run,
            manager,
            validation,
        })
    }
}

/// fieldValidation: Strict → 400 listing unknown fields; Warn → warnings; Ignore → nothing.
pub(super) fn check_fields(
    res: &Resource,
    obj: &Value,
    opts: &WriteOpts,
) -> ApiResult<Vec<String>> {
    // A field of the wrong JSON type cannot be decoded at all: 400 whatever fieldValidation says (upstream).
    if let Some(e) = validation::decode_error(res.gk(), obj) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = res.kind,
            v = res.version
        )));
    }
    if opts.validation == "Ignore" {
        return Ok(Vec::new());
    }
    let unknown = validation::unknown_fields(res.gk(), obj);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if opts.validation == "Strict" {
        let msg = format!("strict decoding error: {}", msgs.join(", "));
        return Err(ApiError::bad_request(msg));
    }
    Ok(msgs)
}

pub(super) fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let av = res.api_version();
    match obj.get("apiVersion").and_then(|v| v.as_str()) {
        None | Some("") => {
            obj["apiVersion"] = json!(av);
        }
        Some(a) if a == av => {}
        Some(a) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({a}) does not match the expected API version ({av})"
            )))
        }
    }
    match obj.get("kind").and_then(|v| v.as_str()) {
        None | Some("") => {
            obj["kind"] = json!(res.kind);
        }
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
    }
    Ok(())
}

pub(super) fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let causes = validation::validate(res.gk(), obj, old);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res.group,
            res.kind,
            name_of(obj),
            &causes,
        ))
    }
}

pub(super) fn is_service(res: &Resource) -> bool {
    res.group.is_empty() && res.kind == "Service"
}

pub(super) async fn namespace_exists(ctx: &Ctx, ns: &str) -> ApiResult<Option<Value>> {
    let nsr = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    match ctx.store.get(&nsr.key(None, ns)).await? {
        Some(kv) => Ok(Some(from_kv(&kv)?)),
        None => Ok(None),
    }
}

pub(super) fn random_suffix() -> String {
    const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CH[rand::random_range(0..CH.len())] as char)
        .collect()
}

/// Create `obj` (already decoded). Returns the stored object and warnings.
pub(super) async fn create(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
    q: &Query,
) -> ApiResult<(Value, Vec<String>)> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    check_type(res, &mut obj)?;
    let warnings = check_fields(res, &obj, &opts)?;
    create_prepared(ctx, res, ns, obj, &opts, None)
        .await
        .map(|v| (v, warnings))
}

pub(super) async fn create_prepared(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
    opts: &WriteOpts,
    ssa_done: Option<()>,
) -> ApiResult<Value> {
    let now = now_rfc3339();
    {
        let m = meta_mut(&mut obj);
        if let Some(ns) = ns {
            match m.get("namespace").and_then(|v| v.as_str()) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(ns));
                }
                Some(x) if x == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty());
        if !has_name {
            if let Some(g) = m
                .get("generateName")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
            {
                let n = format!("{g}{}", random_suffix());
                m.insert("name".into(), json!(n));
            }
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now));
        m.insert("generation".into(), json!(1));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    if name_of(&obj).is_empty() {
        return Err(ApiError::invalid(
            res.group,
            res.kind,
            "",
            &[Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    let name = name_of(&obj).to_string();
    if let Some(ns) = ns {
        match namespace_exists(ctx, ns).await? {
            None => return Err(ApiError::not_found("", "namespaces", ns)),
            Some(nsobj) if nsobj["metadata"]["deletionTimestamp"].is_string() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", res.group_resource()),
                ))
            }
            _ => {}
        }
    }
    if res.group.is_empty() && res.kind == "Namespace" {
        let m = meta_mut(&mut obj);
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
    }
    defaults::apply_defaults(res.gk(), &mut obj);
    validate(res, &obj, None)?;
    if ssa_done.is_none() {
        apply::record_update(res.gk(), None, &mut obj, &opts.manager, &now);
    }
    let key = res.key(ns, &name);
    if is_service(res) {
        let owner = format!("{}/{name}", ns.unwrap_or(""));
        let reserved = ctx
            .alloc
            .allocate(&mut obj, None, opts.dry_run, &owner)
            .await
            .map_err(|e| alloc_err(res, &name, e))?;
        if opts.dry_run {
            if ctx.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(res.group, res.plural, &name));
            }
            return Ok(obj);
        }
        match ctx.store.create(&key, to_stored(&obj)).await {
            Ok(kv) => Ok(with_rv(obj, kv.mod_revision)),
            Err(e) => {
                ctx.alloc.undo(reserved).await;
                Err(store_err(res, &name, e))
            }
        }
    } else {
        if opts.dry_run {
            if ctx.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(res.group, res.plural, &name));
            }
            return Ok(obj);
        }
        let kv = ctx
            .store
            .create(&key, to_stored(&obj))
            .await
            .map_err(|e| store_err(res, &name, e))?;
        Ok(with_rv(obj, kv.mod_revision))
    }
}

pub(super) fn alloc_err(res: &Resource, name: &str, e: AllocError) -> ApiError {
    match e {
        AllocError::Invalid(c) => ApiError::invalid(res.group, res.kind, name, &c),
        AllocError::Store(e) => ApiError::from(e),
    }
}

pub(super) fn store_err(res: &Resource, name: &str, e: skiff_store::Error) -> ApiError {
    match e {
        skiff_store::Error::AlreadyExists(_) => {
            ApiError::already_exists(res.group, res.plural, name)
        }
        skiff_store::Error::Conflict { .. } => ApiError::stale(res.group, res.plural, name),
        skiff_store::Error::NotFound(_) => ApiError::not_found(res.group, res.plural, name),
        other => ApiError::from(other),
    }
}

pub(super) fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
        o.remove("apiVersion");
        o.remove("kind");
    }
    v
}

pub(super) fn strip_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

pub(super) enum UpdateOutcome {
    Written(Value),
    /// The store's mod revision moved under us (only retried by callers that did not pin a resourceVersion).
    Stale,
}

/// The common tail of PUT and PATCH: carry over server-owned fields, default, validate, allocate, write with
/// CAS on `cur`'s revision (or delete when the last finalizer of a deleting object went away).
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_update(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    cur: &KeyValue,
    mut new: Value,
    sub: Option<&str>,
    opts: &WriteOpts,
    ssa: bool,
) -> ApiResult<UpdateOutcome> {
    let old = from_kv(cur)?;
    let now = now_rfc3339();
    if sub == Some("status") {
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    } else if res.has(Sub::Status) {
        // Writes to the main resource cannot change status.
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    {
        let om = meta(&old).clone();
        let m = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match om.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    if res.group.is_empty() && res.kind == "Namespace" {
        let labels = meta_mut(&mut new)
            .entry("labels")
            .or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
    }
    // Keep allocated values an update omits and drop the ones a type change no longer uses (upstream's
    // PrepareForUpdate + patchAllocatedValues), before defaulting and validation.
    defaults::prepare_for_update(res.gk(), &mut new, &old);
    defaults::apply_defaults(res.gk(), &mut new);
    let old_gen = meta(&old)["generation"].as_i64().unwrap_or(1);
    let gen = if spec_part(&new) != spec_part(&old) {
        old_gen + 1
    } else {
        old_gen
    };
    meta_mut(&mut new).insert("generation".into(), json!(gen));
    validate(res, &new, Some(&old))?;
    if !ssa {
        apply::record_update(res.gk(), Some(&old), &mut new, &opts.manager, &now);
    }
    let key = res.key(ns, name);
    let deleting = meta(&new)["deletionTimestamp"].is_string()
        && meta(&new)["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let svc = is_service(res);
    let owner = format!("{}/{name}", ns.unwrap_or(""));
    let reserved = if svc {
        ctx.alloc
            .allocate(&mut new, Some(&old), opts.dry_run, &owner)
            .await
            .map_err(|e| alloc_err(res, name, e))?
    } else {
        Default::default()
    };
    if strip_volatile(&new) == strip_volatile(&old) && !deleting {
        // No-op update: nothing written, resourceVersion unchanged (as upstream).
        ctx.alloc.undo(reserved).await;
        return Ok(UpdateOutcome::Written(old));
    }
    if opts.dry_run {
        return Ok(UpdateOutcome::Written(with_rv(new, cur.mod_revision)));
    }
    if deleting {
        return match ctx.store.delete(&key, Some(cur.mod_revision)).await {
            Ok(kv) => {
                ctx.alloc.undo(reserved).await;
                if svc {
                    ctx.alloc.release(&held_by(&old), &owner).await;
                }
                Ok(UpdateOutcome::Written(with_rv(new, kv.mod_revision)))
            }
            Err(skiff_store::Error::Conflict { .. }) | Err(skiff_store::Error::NotFound(_)) => {
                ctx.alloc.undo(reserved).await;
                Ok(UpdateOutcome::Stale)
            }
            Err(e) => {
                ctx.alloc.undo(reserved).await;
                Err(store_err(res, name, e))
            }
        };
    }
    match ctx
        .store
        .update(&key, to_stored(&new), cur.mod_revision)
        .await
    {
        Ok(kv) => {
            if svc {
                ctx.alloc
                    .release_diff(&held_by(&old), &held_by(&new), &owner)
                    .await;
            }
            Ok(UpdateOutcome::Written(with_rv(new, kv.mod_revision)))
        }
        Err(e) => {
            // Give back what this attempt newly took.
            ctx.alloc.undo(reserved).await;
            match e {
                skiff_store::Error::Conflict { .. } => Ok(UpdateOutcome::Stale),
                skiff_store::Error::NotFound(_) => {
                    Err(ApiError::not_found(res.group, res.plural, name))
                }
                other => Err(store_err(res, name, other)),
            }
        }
    }
}

pub(super) async fn put(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    mut obj: Value,
    q: &Query,
) -> ApiResult<(Value, u16, Vec<String>)> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    if sub == Some("scale") {
        let rv = meta(&obj)["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for _attempt in 0..UPDATE_ATTEMPTS {
            let cur = get_kv(ctx, res, ns, name).await?;
            if !rv.is_empty() && rv != cur.mod_revision.to_string() {
                return Err(ApiError::stale(res.group, res.plural, name));
            }
            match scale_write(ctx, res, ns, name, cur, &obj, &opts).await? {
                Some(v) => return Ok((v, 200, Vec::new())),
                // without a resourceVersion the write is unconditional: re-read and retry
                None if rv.is_empty() => continue,
                None => return Err(ApiError::stale(res.group, res.plural, name)),
            }
        }
        return Err(ApiError::stale(res.group, res.plural, name));
    }
    check_type(res, &mut obj)?;
    let warnings = check_fields(res, &obj, &opts)?;
    let body_name = name_of(&obj).to_string();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta(&obj)["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // A PUT without a resourceVersion is an unconditional update (upstream's AllowUnconditionalUpdate): when
    // another writer gets in between our read and our CAS, re-read and write again. Only a PUT that pins a
    // resourceVersion that is no longer current gets 409.
    for _attempt in 0..UPDATE_ATTEMPTS {
        let cur = get_kv(ctx, res, ns, name).await?;
        if !rv.is_empty() && rv != cur.mod_revision.to_string() {
            return Err(ApiError::stale(res.group, res.plural, name));
        }
        match finish_update(ctx, res, ns, name, &cur, obj.clone(), sub, &opts, false).await? {
            UpdateOutcome::Written(v) => return Ok((v, 200, warnings)),
            UpdateOutcome::Stale if rv.is_empty() => continue,
            UpdateOutcome::Stale => return Err(ApiError::stale(res.group, res.plural, name)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// How often a write without a resourceVersion re-reads and retries after losing a CAS race (upstream's
/// GuaranteedUpdate loops until it wins; a bound keeps a pathological hot object from pinning a request).
pub(super) const UPDATE_ATTEMPTS: usize = 32;
