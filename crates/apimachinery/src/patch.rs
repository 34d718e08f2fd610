//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7396), strategic merge patch.
//!
//! The strategic merge patch follows upstream's `k8s.io/apimachinery/pkg/util/strategicpatch` (`mergeMap` with
//! `MergeParallelList` and `IgnoreUnmatchedNulls`, as the API server applies it), driven by a table of the
//! `patchStrategy` / `patchMergeKey` struct tags of the k8s.io/api types Skiff serves (see [`field_meta`]).

use crate::GroupKind;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400 BadRequest upstream).
    #[error("{0}")]
    Malformed(String),
    /// The patch cannot be applied to this object (422 upstream, e.g. a failed `test` op).
    #[error("{0}")]
    Unprocessable(String),
}

pub fn apply_json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &ops.0).map_err(|e| PatchError::Unprocessable(e.to_string()))?;
    Ok(out)
}

pub fn apply_merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Malformed("Invalid JSON Patch".into()));
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Which type a JSON object in a served kind is, as far as patch strategies are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Root,
    ObjectMeta,
    PodTemplate,
    PodSpec,
    Container,
    PodStatus,
    ServiceSpec,
    NodeSpec,
    NodeStatus,
    WorkloadSpec,
    /// A status whose only strategic field is `conditions` (merge key `type`).
    ConditionsStatus,
    /// Everything else: maps merge, lists are atomic.
    Other,
}

/// The patch metadata of one field: the type of its value (or of its list elements), and, for lists,
/// whether they merge (`patchStrategy:"merge"`) and on which key (`patchMergeKey`; None for primitive lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMeta {
    pub ty: Ty,
    pub merge: bool,
    pub merge_key: Option<&'static str>,
}

fn plain(ty: Ty) -> FieldMeta {
    FieldMeta {
        ty,
        merge: false,
        merge_key: None,
    }
}
fn keyed(ty: Ty, key: &'static str) -> FieldMeta {
    FieldMeta {
        ty,
        merge: true,
        merge_key: Some(key),
    }
}

/// Upstream struct tags for the served kinds: `field` of an object of type `parent` within kind `gk`.
pub fn field_meta(gk: GroupKind<'_>, parent: Ty, field: &str) -> FieldMeta {
    use Ty::*;
    match (parent, field) {
        (Root, "metadata") => plain(ObjectMeta),
        (Root, "spec") => plain(match (gk.group, gk.kind) {
            ("", "Pod") => PodSpec,
            ("", "Service") => ServiceSpec,
            ("", "Node") => NodeSpec,
            ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => WorkloadSpec,
            _ => Other,
        }),
        (Root, "status") => plain(match (gk.group, gk.kind) {
            ("", "Pod") => PodStatus,
            ("", "Node") => NodeStatus,
            ("", "Service" | "Namespace") | ("apps", _) => ConditionsStatus,
            _ => Other,
        }),
        (Root, "template") if gk.kind == "PodTemplate" => plain(PodTemplate),
        (ObjectMeta, "finalizers") => FieldMeta {
            ty: Other,
            merge: true,
            merge_key: None,
        },
        (ObjectMeta, "ownerReferences") => keyed(Other, "uid"),
        (WorkloadSpec, "template") => plain(PodTemplate),
        (PodTemplate, "metadata") => plain(ObjectMeta),
        (PodTemplate, "spec") => plain(PodSpec),
        (PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            keyed(Container, "name")
        }
        (PodSpec, "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates") => {
            keyed(Other, "name")
        }
        (PodSpec, "hostAliases") => keyed(Other, "ip"),
        (PodSpec, "topologySpreadConstraints") => keyed(Other, "topologyKey"),
        (Container, "ports") => keyed(Other, "containerPort"),
        (Container, "env") => keyed(Other, "name"),
        (Container, "volumeMounts") => keyed(Other, "mountPath"),
        (Container, "volumeDevices") => keyed(Other, "devicePath"),
        (PodStatus, "conditions") => keyed(Other, "type"),
        (PodStatus, "podIPs" | "hostIPs") => keyed(Other, "ip"),
        (PodStatus, "resourceClaimStatuses") => keyed(Other, "name"),
        (ServiceSpec, "ports") => keyed(Other, "port"),
        (NodeSpec, "podCIDRs") => FieldMeta {
            ty: Other,
            merge: true,
            merge_key: None,
        },
        (NodeStatus, "conditions" | "addresses") => keyed(Other, "type"),
        (ConditionsStatus, "conditions") => keyed(Other, "type"),
        _ => plain(Other),
    }
}

/// The metadata of the field at `path` (field names from the object's root; list indices omitted).
pub fn path_meta(gk: GroupKind<'_>, path: &[&str]) -> FieldMeta {
    let mut meta = plain(Ty::Root);
    for f in path {
        meta = field_meta(gk, meta.ty, f);
    }
    meta
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::Malformed(msg.into())
}

pub fn apply_strategic_merge_patch(
    gk: GroupKind<'_>,
    doc: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(bad("invalid JSON document"));
    };
    let original = match doc {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let mut merged = merge_map(gk, original, patch.clone(), Ty::Root)?;
    strip_directives(&mut merged);
    Ok(Value::Object(merged))
}

/// Directive keys in values that were taken from the patch wholesale would be dropped by upstream's typed decode.
fn strip_directives(m: &mut Map<String, Value>) {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        strip_value(v);
    }
}
fn strip_value(v: &mut Value) {
    match v {
        Value::Object(o) => strip_directives(o),
        Value::Array(a) => {
            // a `$patch: delete` element in a list taken wholesale deletes nothing: drop it
            a.retain(|x| x.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"));
            a.iter_mut().for_each(strip_value)
        }
        _ => {}
    }
}

fn discard_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(discard_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn merge_map(
    gk: GroupKind<'_>,
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: Ty,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.shift_remove(DIRECTIVE);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad(format!(
                "unknown patch type: {} in map: {}",
                display(d),
                Value::Object(patch.clone())
            ))),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(gk, &mut original, &mut patch, ty)?;

    for (key, mut pv) in patch {
        let (k, is_delete_list) = match key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            Some(k) => (k.to_string(), true),
            None if key.starts_with('$') => continue,
            None => (key, false),
        };
        if pv.is_null() {
            original.shift_remove(&k);
            continue;
        }
        let Some(ov) = original.get_mut(&k) else {
            if !is_delete_list {
                discard_nulls(&mut pv);
                original.insert(k, pv);
            }
            continue;
        };
        if !same_type(ov, &pv) {
            if !is_delete_list {
                discard_nulls(&mut pv);
                *ov = pv;
            }
            continue;
        }
        let meta = field_meta(gk, ty, &k);
        match (ov.take(), pv) {
            (Value::Object(o), Value::Object(p)) => {
                *ov = Value::Object(merge_map(gk, o, p, meta.ty)?)
            }
            (Value::Array(o), Value::Array(p)) => {
                *ov = if meta.merge || is_delete_list {
                    Value::Array(merge_slice(gk, o, p, meta, is_delete_list)?)
                } else {
                    Value::Array(p)
                }
            }
            (_, p) => *ov = p,
        }
    }
    Ok(original)
}

/// Go's `%v` of a scalar, for error messages.
fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(rk) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(list) = rk else {
        return Err(bad("invalid patch format of retainKeys"));
    };
    let keep: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE_PREFIX) || k.starts_with(SET_ORDER_PREFIX)
        {
            continue;
        }
        if !keep.contains(&k.as_str()) {
            return Err(bad("invalid patch format of retainKeys"));
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Map,
    Scalar,
}

fn element_kind(lists: &[&[Value]]) -> Result<Option<Kind>, PatchError> {
    let mut kind = None;
    for l in lists {
        for v in l.iter() {
            let k = match v {
                Value::Array(_) => {
                    return Err(PatchError::Unprocessable(
                        "lists of lists are not supported".into(),
                    ))
                }
                Value::Object(_) => Kind::Map,
                _ => Kind::Scalar,
            };
            match kind {
                None => kind = Some(k),
                Some(prev) if prev != k => {
                    return Err(PatchError::Unprocessable(
                        "list element types are not identical".into(),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(kind)
}

/// The value an element is identified by: its merge key for maps, itself for scalars.
fn ident<'a>(v: &'a Value, key: Option<&str>, kind: Kind) -> Option<&'a Value> {
    match (kind, key) {
        (Kind::Map, Some(k)) => v.get(k),
        (Kind::Map, None) => None,
        (Kind::Scalar, _) => Some(v),
    }
}

fn index_in(list: &[Value], v: &Value, key: Option<&str>, kind: Kind) -> Option<usize> {
    let want = ident(v, key, kind);
    list.iter().position(|x| ident(x, key, kind) == want)
}

fn no_merge_key(m: &Value, key: &str) -> PatchError {
    bad(format!(
        "map: {m} does not contain declared merge key: {key}"
    ))
}

fn merge_set_element_order(
    gk: GroupKind<'_>,
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: Ty,
) -> Result<(), PatchError> {
    let order_keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER_PREFIX))
        .cloned()
        .collect();
    for key in order_keys {
        let Some(Value::Array(order)) = patch.shift_remove(&key) else {
            return Err(bad("invalid patch format of setElementOrder list"));
        };
        let field = key[SET_ORDER_PREFIX.len()..].to_string();
        let orig_list = match original.get(&field) {
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(bad(format!("invalid value for {field}: not a list"))),
            None => None,
        };
        let patch_list = match patch.get(&field) {
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(bad(format!("invalid value for {field}: not a list"))),
            None => None,
        };
        let meta = field_meta(gk, ty, &field);
        let merge_key = meta.merge_key;
        validate_patch_with_set_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let orig_vals = orig_list.clone().unwrap_or_default();
        let merged = match (orig_list, patch_list.clone()) {
            (Some(o), None) => o,
            (None, Some(p)) => p,
            (Some(o), Some(p)) => {
                if meta.merge {
                    merge_slice(gk, o, p, meta, false)?
                } else {
                    p
                }
            }
            (None, None) => continue,
        };
        let Some(kind) = element_kind(&[&orig_vals, patch_list.as_deref().unwrap_or(&[])])? else {
            original.insert(field.clone(), Value::Array(merged));
            patch.shift_remove(&field);
            continue;
        };
        let key_for = if kind == Kind::Map { merge_key } else { None };
        if kind == Kind::Map && key_for.is_none() {
            // an atomic list of maps: upstream has no key to partition by, the patch list simply wins
            original.insert(field.clone(), Value::Array(merged));
            patch.shift_remove(&field);
            continue;
        }
        let (patch_items, server_only) = partition(merged, &order, key_for, kind)?;
        let both =
            normalize_element_order(patch_items, server_only, &order, &orig_vals, key_for, kind)?;
        original.insert(field.clone(), Value::Array(both));
        patch.shift_remove(&field);
    }
    Ok(())
}

fn validate_patch_with_set_order(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&str>,
) -> Result<(), PatchError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = if key.is_some() {
        patch_list
            .iter()
            .filter(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"))
            .collect()
    } else {
        patch_list.iter().collect()
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        if non_delete[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        let eq = match key {
            None => non_delete[pi] == &order[si],
            Some(k) => {
                let a = non_delete[pi]
                    .get(k)
                    .ok_or_else(|| no_merge_key(non_delete[pi], k))?;
                let b = order[si]
                    .get(k)
                    .ok_or_else(|| no_merge_key(&order[si], k))?;
                a == b
            }
        };
        if eq {
            pi += 1;
        }
        si += 1;
    }
    if pi < non_delete.len() && si >= order.len() {
        return Err(bad(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

fn partition(
    merged: Vec<Value>,
    by: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut in_patch = Vec::new();
    let mut server_only = Vec::new();
    for v in merged {
        if kind == Kind::Map {
            let k = key.unwrap_or_default();
            if v.get(k).is_none() {
                return Err(no_merge_key(&v, k));
            }
        }
        if index_in(by, &v, key, kind).is_some() {
            in_patch.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((in_patch, server_only))
}

/// Upstream's `normalizeSliceOrder`: a stable insertion sort by position in `order` (Go's SliceStable is an
/// insertion sort for short lists; its comparator treats unknown items as "less", which we keep).
fn normalize_slice_order(
    mut to_sort: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Vec<Value> {
    let mut to_delete = Vec::new();
    if kind == Kind::Map {
        let (keep, del): (Vec<Value>, Vec<Value>) = to_sort
            .into_iter()
            .partition(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"));
        to_sort = keep;
        to_delete = del;
    }
    let less =
        |a: &Value, b: &Value| match (index_in(order, a, key, kind), index_in(order, b, key, kind))
        {
            (Some(i), Some(j)) => i < j,
            _ => true,
        };
    for i in 1..to_sort.len() {
        let mut j = i;
        while j > 0 && less(&to_sort[j], &to_sort[j - 1]) {
            to_sort.swap(j, j - 1);
            j -= 1;
        }
    }
    to_sort.extend(to_delete);
    to_sort
}

fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Result<Vec<Value>, PatchError> {
    let patch = normalize_slice_order(patch, patch_order, key, kind);
    let server_only = normalize_slice_order(server_only, server_order, key, kind);
    Ok(merge_sorted_slice(
        server_only,
        patch,
        server_order,
        key,
        kind,
    ))
}

/// Upstream's `mergeSortedSlice`: interleave server-only items (`left`) into the patch items (`right`) using the
/// live order where both are known.
fn merge_sorted_slice(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let li = index_in(server_order, l, key, kind);
                let ri = index_in(server_order, r, key, kind);
                if matches!((li, ri), (Some(a), Some(b)) if a < b) {
                    out.extend(left.next());
                } else {
                    out.extend(right.next());
                }
            }
        }
    }
    out
}

fn merge_slice(
    gk: GroupKind<'_>,
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: FieldMeta,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let Some(kind) = element_kind(&[&original, &patch])? else {
        return Ok(original);
    };
    if kind == Kind::Scalar {
        if is_delete_list {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.contains(v))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::new();
        for v in original.iter().chain(patch.iter()) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (p, s) = partition(merged, &patch, None, kind)?;
        return normalize_element_order(p, s, &patch, &original, None, kind);
    }
    let Some(key) = meta.merge_key else {
        return Err(bad("cannot merge lists without merge key for type map"));
    };
    // special elements: `$patch: delete` removes by key, `$patch: replace` replaces the whole list
    let mut original = original;
    let mut plain_patch = Vec::new();
    let mut replace = false;
    for v in patch {
        match v.get(DIRECTIVE) {
            None => plain_patch.push(v),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let Some(kv) = v.get(key) else {
                        return Err(no_merge_key(&v, key));
                    };
                    original.retain(|o| o.get(key) != Some(kv));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(bad("merging lists cannot yet be specified in the patch"))
                }
                _ => {
                    return Err(bad(format!(
                        "unknown patch type: {} in map: {v}",
                        display(d)
                    )))
                }
            },
        }
    }
    if replace {
        return Ok(plain_patch);
    }
    let mut merged = original.clone();
    for pv in &plain_patch {
        let Some(kv) = pv.get(key) else {
            return Err(no_merge_key(pv, key));
        };
        match merged.iter().position(|o| o.get(key) == Some(kv)) {
            Some(i) => {
                let o = match merged[i].take() {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                let p = pv.as_object().cloned().unwrap_or_default();
                merged[i] = Value::Object(merge_map(gk, o, p, meta.ty)?);
            }
            None => merged.push(pv.clone()),
        }
    }
    let (p, s) = partition(merged, &plain_patch, Some(key), kind)?;
    normalize_element_order(p, s, &plain_patch, &original, Some(key), kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SVC: GroupKind<'static> = GroupKind {
        group: "",
        kind: "Service",
    };
    const DEPLOY: GroupKind<'static> = GroupKind {
        group: "apps",
        kind: "Deployment",
    };
    const POD: GroupKind<'static> = GroupKind {
        group: "",
        kind: "Pod",
    };

    fn smp(gk: GroupKind<'_>, doc: Value, patch: Value) -> Value {
        match apply_strategic_merge_patch(gk, &doc, &patch) {
            Ok(v) => v,
            Err(e) => panic!("patch failed: {e}"),
        }
    }

    #[test]
    fn kubectl_apply_service_update() {
        let live = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "demoapp-svc", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "old"}},
            "spec": {"clusterIP": "10.97.72.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}],
                     "selector": {"app": "demoapp"}, "type": "ClusterIP", "sessionAffinity": "None"}});
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "new"}, "labels": {"tier": "web"}},
            "spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": 9090}], "selector": {"tier": "web"}}});
        assert_eq!(
            smp(SVC, live, patch),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "demoapp-svc", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "new"}, "labels": {"tier": "web"}},
                "spec": {"clusterIP": "10.97.72.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090}],
                         "selector": {"app": "demoapp", "tier": "web"}, "type": "ClusterIP", "sessionAffinity": "None"}})
        );
    }

    #[test]
    fn set_element_order_adds_and_deletes_ports() {
        let live = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}});
        // kubectl apply: remove 443, add 8080 before 80
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 8080}, {"port": 80}],
            "ports": [{"port": 8080, "protocol": "TCP"}, {"$patch": "delete", "port": 443}]}});
        assert_eq!(
            smp(SVC, live, patch),
            json!({"spec": {"ports": [{"port": 8080, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]}})
        );
    }

    #[test]
    fn containers_merge_by_name_and_nested_keys() {
        let live = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}], "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "s:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]}}}});
        assert_eq!(
            smp(DEPLOY, live, patch),
            json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "a:2", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "side", "image": "s:1"}]}}}})
        );
    }

    #[test]
    fn primitive_lists_replace_unless_merge_strategy() {
        let live = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"externalIPs": ["1.1.1.1", "2.2.2.2"]}});
        let patch =
            json!({"metadata": {"finalizers": ["c"]}, "spec": {"externalIPs": ["3.3.3.3"]}});
        assert_eq!(
            smp(SVC, live.clone(), patch),
            json!({"metadata": {"finalizers": ["c", "a", "b"]}, "spec": {"externalIPs": ["3.3.3.3"]}})
        );
        let del = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(
            smp(SVC, live, del),
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"externalIPs": ["1.1.1.1", "2.2.2.2"]}})
        );
        let order = json!({"metadata": {"$setElementOrder/finalizers": ["b", "x", "a"], "finalizers": ["x"]}});
        assert_eq!(
            smp(SVC, json!({"metadata": {"finalizers": ["a", "b"]}}), order),
            json!({"metadata": {"finalizers": ["b", "x", "a"]}})
        );
    }

    #[test]
    fn null_deletes_and_directives() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"selector": {"app": "x"}, "sessionAffinity": "None"}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": null}}, "spec": {"sessionAffinity": null, "new": {"k": null, "v": 1}}});
        assert_eq!(
            smp(SVC, live.clone(), patch),
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"selector": {"app": "x"}, "new": {"v": 1}}})
        );
        let replace = json!({"spec": {"selector": {"$patch": "replace", "tier": "web"}}});
        assert_eq!(
            smp(SVC, live.clone(), replace)["spec"]["selector"],
            json!({"tier": "web"})
        );
        let delete = json!({"metadata": {"labels": {"$patch": "delete"}}});
        assert_eq!(
            smp(SVC, live.clone(), delete)["metadata"]["labels"],
            json!({})
        );
        let bad_dir = json!({"metadata": {"$patch": "bogus"}});
        assert!(matches!(
            apply_strategic_merge_patch(SVC, &live, &bad_dir),
            Err(PatchError::Malformed(_))
        ));
        let list_replace = json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}});
        let with_ports = json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}});
        assert_eq!(
            smp(SVC, with_ports, list_replace),
            json!({"spec": {"ports": [{"port": 1}]}})
        );
    }

    #[test]
    fn retain_keys_clears_other_union_members() {
        let live = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        assert_eq!(
            smp(DEPLOY, live.clone(), patch),
            json!({"spec": {"strategy": {"type": "Recreate"}}})
        );
        let bad_patch =
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}});
        assert_eq!(
            apply_strategic_merge_patch(DEPLOY, &live, &bad_patch)
                .unwrap_err()
                .to_string(),
            "invalid patch format of retainKeys"
        );
    }

    #[test]
    fn pod_volumes_and_mounts() {
        let live = json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}});
        let patch = json!({"spec": {"volumes": [{"name": "cfg", "configMap": {"name": "x"}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]}]}});
        assert_eq!(
            smp(POD, live, patch),
            json!({"spec": {"volumes": [{"name": "cfg", "configMap": {"name": "x"}}, {"name": "data", "emptyDir": {}}],
                "containers": [{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]}]}})
        );
        let missing_key = json!({"spec": {"containers": [{"image": "x"}]}});
        assert_eq!(
            apply_strategic_merge_patch(
                POD,
                &json!({"spec": {"containers": [{"name": "c"}]}}),
                &missing_key
            )
            .unwrap_err()
            .to_string(),
            "map: {\"image\":\"x\"} does not contain declared merge key: name"
        );
    }

    #[test]
    fn json_and_merge_patch() {
        let doc = json!({"spec": {"replicas": 1, "paused": true}});
        assert_eq!(
            apply_merge_patch(&doc, &json!({"spec": {"replicas": 4, "paused": null}})).unwrap(),
            json!({"spec": {"replicas": 4}})
        );
        let ops = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}, {"op": "add", "path": "/metadata", "value": {"name": "x"}}]);
        assert_eq!(
            apply_json_patch(&doc, &ops).unwrap(),
            json!({"spec": {"replicas": 3, "paused": true}, "metadata": {"name": "x"}})
        );
        let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert!(matches!(
            apply_json_patch(&doc, &failing),
            Err(PatchError::Unprocessable(_))
        ));
        assert!(matches!(
            apply_json_patch(&doc, &json!({"op": "x"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply_merge_patch(&doc, &json!([1])),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn kubectl_apply_deployment_update() {
        let live = json!({"metadata": {"name": "demoapp", "finalizers": ["a"]}, "spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.0", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}});
        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "demoapp"}, {"name": "sidecar"}],
            "containers": [{"name": "demoapp", "image": "ikubernetes/demoapp:v1.1"}, {"name": "sidecar", "image": "busybox"}]}}}});
        assert_eq!(
            smp(DEPLOY, live, patch),
            json!({"metadata": {"name": "demoapp", "finalizers": ["a"]}, "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "demoapp", "image": "ikubernetes/demoapp:v1.1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "busybox"}]}}}})
        );
        // directives inside a value the live object lacks are not stored
        let fresh = json!({"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80}, {"$patch": "delete", "port": 81}]}});
        assert_eq!(
            smp(SVC, json!({"metadata": {}}), fresh),
            json!({"metadata": {}, "spec": {"ports": [{"port": 80}]}})
        );
    }

    #[test]
    fn merge_key_table() {
        assert_eq!(
            path_meta(DEPLOY, &["spec", "template", "spec", "containers", "ports"]).merge_key,
            Some("containerPort")
        );
        assert_eq!(path_meta(SVC, &["spec", "ports"]).merge_key, Some("port"));
        assert_eq!(
            path_meta(POD, &["metadata", "ownerReferences"]).merge_key,
            Some("uid")
        );
        assert!(!path_meta(POD, &["spec", "tolerations"]).merge);
        assert_eq!(
            path_meta(
                GroupKind {
                    group: "",
                    kind: "Node"
                },
                &["status", "addresses"]
            )
            .merge_key,
            Some("type")
        );
    }
}
