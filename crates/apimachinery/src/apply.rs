//! Server-side apply (`application/apply-patch+yaml`) and `metadata.managedFields` bookkeeping.
//!
//! A subset of structured-merge-diff, driven by the same merge keys as the strategic merge patch
//! ([`crate::patch::field_meta`]):
//! - field sets are paths of `f:<field>`, `k:{<key fields>}` (lists with a merge key; Service and container
//!   ports are keyed by port + protocol as upstream), `v:<value>` (primitive lists with merge strategy) elements,
//!   serialized as FieldsV1 trees (`"."` marks a map / list / list item owned as a whole);
//! - Apply: conflicts with other managers on leaves whose value would change (force moves ownership),
//!   merge of the applied config onto the live object (keyed lists merge by key, other lists are atomic),
//!   and removal of fields this applier owned before, omits now, and no one else owns;
//! - Update: the writer takes over every changed leaf, removed fields leave every set.
//!
//! Not covered: `status` (never tracked), unions / `$retainKeys`-style discriminators, per-version conversion of
//! field sets, the `subresource` attribute, and structural schema knowledge beyond the merge-key table (string
//! maps are recognised by field name, e.g. labels / annotations / selector / data).

use crate::patch::{field_meta, Ty};
use crate::GroupKind;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// Field path as upstream prints it, e.g. `.spec.replicas`.
    pub field: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409 Conflict upstream: `Apply failed with N conflict(s): conflict with "mgr": .spec.replicas`.
    /// Use [`conflict_message`] for upstream's exact message.
    #[error("Apply failed with {} conflict(s)", .0.len())]
    Conflicts(Vec<Conflict>),
    #[error("{0}")]
    Invalid(String),
}

/// One path element in FieldsV1 spelling: `f:name`, `k:{"port":80,"protocol":"TCP"}`, `v:"x"`, `i:0`.
type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    set: FieldSet,
    /// Anything else upstream put in the entry (subresource, ...), kept as is.
    extra: Map<String, Value>,
}

/// Metadata fields upstream never tracks.
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// JSON objects that are string maps (granular keys) rather than structs.
fn is_string_map(gk: GroupKind<'_>, parent: Ty, field: &str) -> bool {
    match field {
        "labels" | "annotations" | "matchLabels" | "nodeSelector" | "data" | "binaryData"
        | "stringData" | "limits" | "requests" | "capacity" | "allocatable" | "overhead" => true,
        "selector" => {
            parent == Ty::ServiceSpec || (gk.group.is_empty() && gk.kind == "ReplicationController")
        }
        _ => false,
    }
}

/// Struct fields upstream marks `x-kubernetes-map-type: atomic`.
fn is_atomic_struct(parent: Ty, field: &str) -> bool {
    parent == Ty::WorkloadSpec && field == "selector"
}

/// The key fields identifying an element of a keyed list (with upstream's defaulted `protocol`).
fn element_key(parent: Ty, field: &str, merge_key: &str, elem: &Value) -> Map<String, Value> {
    let mut k = Map::new();
    k.insert(
        merge_key.to_string(),
        elem.get(merge_key).cloned().unwrap_or(Value::Null),
    );
    let with_protocol = matches!(
        (parent, field),
        (Ty::ServiceSpec, "ports") | (Ty::Container, "ports")
    );
    if with_protocol {
        k.insert(
            "protocol".into(),
            elem.get("protocol")
                .cloned()
                .unwrap_or_else(|| json!("TCP")),
        );
    }
    k
}

fn key_string(k: &Map<String, Value>) -> String {
    // BTree order of keys, compact JSON, as upstream
    let mut keys: Vec<&String> = k.keys().collect();
    keys.sort();
    let mut m = Map::new();
    for key in keys {
        m.insert(key.clone(), k[key].clone());
    }
    format!("k:{}", Value::Object(m))
}

fn field_set(gk: GroupKind<'_>, obj: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(root) = obj.as_object() else {
        return set;
    };
    for (k, v) in root {
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        if !IGNORED_META.contains(&mk.as_str()) {
                            walk(
                                gk,
                                Ty::ObjectMeta,
                                mk,
                                mv,
                                vec!["f:metadata".into()],
                                &mut set,
                            );
                        }
                    }
                }
            }
            _ => walk(gk, Ty::Root, k, v, Vec::new(), &mut set),
        }
    }
    set
}

fn walk(gk: GroupKind<'_>, parent: Ty, field: &str, v: &Value, mut path: Path, set: &mut FieldSet) {
    if v.is_null() {
        return;
    }
    path.push(format!("f:{field}"));
    let meta = field_meta(gk, parent, field);
    match v {
        Value::Object(m) if is_string_map(gk, parent, field) => {
            set.insert(path.clone());
            for k in m.keys() {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                set.insert(p);
            }
        }
        Value::Object(m) if !m.is_empty() && !is_atomic_struct(parent, field) => {
            for (k, child) in m {
                walk(gk, meta.ty, k, child, path.clone(), set);
            }
        }
        Value::Array(items) if meta.merge => {
            // upstream owns optional lists as a whole ("."), not the required `containers`
            if field != "containers" {
                set.insert(path.clone());
            }
            for item in items {
                let mut p = path.clone();
                match meta.merge_key {
                    Some(key) => {
                        p.push(key_string(&element_key(parent, field, key, item)));
                        set.insert(p.clone());
                        if let Some(fields) = item.as_object() {
                            for (k, child) in fields {
                                walk(gk, meta.ty, k, child, p.clone(), set);
                            }
                        }
                    }
                    None => {
                        p.push(format!("v:{item}"));
                        set.insert(p);
                    }
                }
            }
        }
        _ => {
            set.insert(path);
        }
    }
}

/// The value at a field-set path.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = step(cur, pe)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, pe: &str) -> Option<&'a Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return cur.get(f);
    }
    cur.as_array()?.get(index_of(cur, pe)?)
}

/// The index of the list item a `k:` / `v:` / `i:` element names.
fn index_of(cur: &Value, pe: &str) -> Option<usize> {
    let items = cur.as_array()?;
    if let Some(k) = pe.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items.iter().position(|it| {
            key.iter().all(|(kf, kv)| {
                let have = it
                    .get(kf)
                    .cloned()
                    .or_else(|| (kf == "protocol").then(|| json!("TCP")));
                have.as_ref() == Some(kv)
            })
        });
    }
    if let Some(v) = pe.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|it| *it == want);
    }
    let i: usize = pe.strip_prefix("i:")?.parse().ok()?;
    (i < items.len()).then_some(i)
}

fn step_mut<'a>(cur: &'a mut Value, pe: &str) -> Option<&'a mut Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return cur.get_mut(f);
    }
    let i = index_of(cur, pe)?;
    cur.as_array_mut()?.get_mut(i)
}

/// Remove the node at `path` from `obj` (a field, a keyed list item or a set value).
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for pe in parents {
        cur = match step_mut(cur, pe) {
            Some(c) => c,
            None => return,
        };
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.shift_remove(f);
        }
    } else if let Some(i) = index_of(cur, last) {
        if let Some(items) = cur.as_array_mut() {
            items.remove(i);
        }
    }
}

/// Upstream's path printing: `.spec.ports[port=80,protocol="TCP"].targetPort`, `[="value"]`, `[0]`.
fn print_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

fn to_fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: std::collections::BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for p in set {
        let mut n = &mut root;
        for pe in p {
            n = n.children.entry(pe.clone()).or_default();
        }
        n.member = true;
    }
    fn ser(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), ser(c));
        }
        Value::Object(m)
    }
    ser(&root)
}

fn from_fields_v1(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let Some(m) = v.as_object() else {
        return;
    };
    for (k, child) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        prefix.push(k.clone());
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(prefix.clone());
        } else {
            from_fields_v1(child, prefix, out);
        }
        prefix.pop();
    }
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let m = e.as_object()?;
            let mut set = FieldSet::new();
            if let Some(f) = m.get("fieldsV1") {
                from_fields_v1(f, &mut Vec::new(), &mut set);
            }
            let mut extra = m.clone();
            for k in [
                "manager",
                "operation",
                "apiVersion",
                "time",
                "fieldsType",
                "fieldsV1",
            ] {
                extra.shift_remove(k);
            }
            let s = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Some(Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                set,
                extra,
            })
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation));
            m.insert("apiVersion".into(), json!(e.api_version));
            m.insert("time".into(), json!(e.time));
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), to_fields_v1(&e.set));
            m.extend(e.extra.clone());
            Value::Object(m)
        })
        .collect();
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        if list.is_empty() {
            meta.shift_remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Merge the applied configuration onto the live object (keyed lists by key, string maps and structs by field,
/// everything else replaced).
fn merge_applied(
    gk: GroupKind<'_>,
    parent: Ty,
    field: &str,
    live: &Value,
    applied: &Value,
) -> Value {
    let meta = field_meta(gk, parent, field);
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !is_atomic_struct(parent, field) => {
            let mut out = l.clone();
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                let merged = match l.get(k) {
                    Some(lv) => merge_applied(gk, meta.ty, k, lv, av),
                    None => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) if meta.merge => {
            let mut out = l.clone();
            for item in a {
                let pos = match meta.merge_key {
                    Some(key) => {
                        let k = element_key(parent, field, key, item);
                        out.iter()
                            .position(|x| element_key(parent, field, key, x) == k)
                    }
                    None => out.iter().position(|x| x == item),
                };
                match pos {
                    Some(i) => out[i] = merge_applied(gk, meta.ty, "", &out[i], item),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => applied.clone(),
    }
}

/// Apply `applied` (the user's intent, as sent) for `manager` onto `live` (None = create). Returns the new object
/// with managedFields updated. `now` is the RFC 3339 time for managedFields entries.
pub fn server_side_apply(
    gk: GroupKind<'_>,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::Invalid(
            "error decoding YAML: applied configuration must be an object".into(),
        ));
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApplyError::Invalid(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let new_set = field_set(gk, applied);
    let mut entries = read_entries(live);
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);

    // conflicts: another manager owns a leaf whose value would change
    let leaves: Vec<&Path> = new_set
        .iter()
        .filter(|p| {
            !new_set
                .iter()
                .any(|q| q.len() > p.len() && q.starts_with(p))
        })
        .collect();
    let mut conflicts = Vec::new();
    let mut forced: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in &leaves {
            if e.set.contains(*p) && value_at(applied, p) != value_at(live_v, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: print_path(p),
                });
                forced.push((i, (*p).clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    for (i, p) in forced {
        entries[i].set.remove(&p);
    }

    let mut result = match live {
        Some(l) => merge_applied(gk, Ty::Root, "", l, applied),
        None => applied.clone(),
    };
    // fields this applier owned and no longer applies: removed unless someone else still owns them
    let old_set: FieldSet = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut removed: Vec<&Path> = old_set.difference(&new_set).collect();
    removed.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in removed {
        let owned_elsewhere = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply")
                && e.set.iter().any(|q| q.starts_with(p))
        });
        let still_applied = new_set.iter().any(|q| q.starts_with(p));
        if !owned_elsewhere && !still_applied {
            remove_at(&mut result, p);
        }
    }

    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Apply")
    {
        Some(e) => {
            e.set = new_set;
            e.time = now.to_string();
            e.api_version = api_version;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: now.to_string(),
            set: new_set,
            extra: Map::new(),
        }),
    }
    write_entries(&mut result, &entries);
    Ok(result)
}

/// Record an ordinary write (create / update / patch, operation "Update") by `manager` in `new`'s managedFields.
pub fn record_update(
    gk: GroupKind<'_>,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    now: &str,
) {
    let new_set = field_set(gk, new);
    let old_set = old.map(|o| field_set(gk, o)).unwrap_or_default();
    let empty = json!({});
    let old_v = old.unwrap_or(&empty);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| value_at(new, p) != value_at(old_v, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    // a write that carries managedFields (e.g. a PUT of a fetched object) keeps them; otherwise the stored ones
    let mut entries = if new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        read_entries(Some(new))
    } else {
        read_entries(old)
    };
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    for e in entries.iter_mut() {
        if e.manager == manager && e.operation == "Update" {
            continue;
        }
        e.set
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update")
    {
        Some(e) => {
            e.set.retain(|p| !removed.contains(p));
            if !changed.is_empty() {
                e.set.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version;
            }
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            time: now.to_string(),
            set: changed,
            extra: Map::new(),
        }),
        None => {}
    }
    write_entries(new, &entries);
}

/// Upstream's 409 message for apply conflicts, e.g.
/// `Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .spec.replicas`.
/// `live` supplies each manager's operation and apiVersion (Update managers print `using <apiVersion>`).
pub fn conflict_message(conflicts: &[Conflict], live: Option<&Value>) -> String {
    let entries = read_entries(live);
    let who = |m: &str| {
        let e = entries
            .iter()
            .find(|e| e.manager == m && e.operation == "Update");
        match e {
            Some(e) => format!("{m:?} using {}", e.api_version),
            None => format!("{m:?}"),
        }
    };
    if conflicts.len() == 1 {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            who(&conflicts[0].manager),
            conflicts[0].field
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {}:", who(m)));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: GroupKind<'static> = GroupKind {
        group: "apps",
        kind: "Deployment",
    };
    const SVC: GroupKind<'static> = GroupKind {
        group: "",
        kind: "Service",
    };
    const T1: &str = "2026-11-22T04:00:00Z";
    const T2: &str = "2026-11-22T04:05:00Z";

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "nginx", "image": image}]}}}})
    }

    #[test]
    fn apply_create_records_fields_v1() {
        let out =
            server_side_apply(DEPLOY, None, &deploy(2, "nginx:1"), "kubectl", false, T1).unwrap();
        assert_eq!(
            out["metadata"]["managedFields"],
            json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": T1, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:replicas": {}, "f:selector": {},
                        "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}}}])
        );
        assert_eq!(out["spec"]["replicas"], json!(2));
    }

    #[test]
    fn conflicts_with_update_manager_and_force() {
        let mut live = deploy(2, "nginx:1");
        record_update(DEPLOY, None, &mut live, "kubectl-client-side-apply", T1);
        let err = server_side_apply(
            DEPLOY,
            Some(&live),
            &deploy(3, "nginx:1"),
            "kubectl",
            false,
            T2,
        )
        .unwrap_err();
        let ApplyError::Conflicts(c) = err else {
            panic!("expected conflicts")
        };
        assert_eq!(
            c,
            vec![Conflict {
                manager: "kubectl-client-side-apply".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            conflict_message(&c, Some(&live)),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        // same values: shared ownership, no conflict
        assert!(server_side_apply(
            DEPLOY,
            Some(&live),
            &deploy(2, "nginx:1"),
            "kubectl",
            false,
            T2
        )
        .is_ok());
        // force moves .spec.replicas to the applier
        let out = server_side_apply(
            DEPLOY,
            Some(&live),
            &deploy(3, "nginx:1"),
            "kubectl",
            true,
            T2,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], json!(3));
        let mf = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert!(mf[0]["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert_eq!(mf[1]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    }

    #[test]
    fn apply_removes_fields_it_no_longer_applies() {
        let first = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}], "selector": {"app": "x"}}});
        let live = server_side_apply(SVC, None, &first, "kubectl", false, T1).unwrap();
        // the server allocated a clusterIP (an Update by another manager)
        let mut live2 = live.clone();
        live2["spec"]["clusterIP"] = json!("10.96.0.7");
        record_update(SVC, Some(&live), &mut live2, "skiff-apiserver", T1);
        let second = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {"a": "1"}},
            "spec": {"ports": [{"port": 80, "targetPort": 9090}], "selector": {"app": "x"}}});
        let out = server_side_apply(SVC, Some(&live2), &second, "kubectl", false, T2).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}])
        );
        assert_eq!(out["spec"]["clusterIP"], json!("10.96.0.7"));
        let kubectl = &out["metadata"]["managedFields"][0];
        assert_eq!(kubectl["manager"], json!("kubectl"));
        assert_eq!(
            kubectl["fieldsV1"]["f:spec"]["f:ports"],
            json!({".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}})
        );
        assert_eq!(
            out["metadata"]["managedFields"][1]["manager"],
            json!("skiff-apiserver")
        );
    }

    #[test]
    fn update_takes_over_changed_fields() {
        let live =
            server_side_apply(DEPLOY, None, &deploy(2, "nginx:1"), "kubectl", false, T1).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(DEPLOY, Some(&live), &mut scaled, "kubectl-scale", T2);
        let mf = scaled["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(
            mf[1],
            json!({"manager": "kubectl-scale", "operation": "Update", "apiVersion": "apps/v1", "time": T2,
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}})
        );
        assert!(mf[0]["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        // the applier re-applying replicas 2 now conflicts with kubectl-scale
        let err = server_side_apply(
            DEPLOY,
            Some(&scaled),
            &deploy(2, "nginx:1"),
            "kubectl",
            false,
            T2,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Conflicts(ref c) if c[0].manager == "kubectl-scale"));
        // a no-op write changes nothing
        let mut same = scaled.clone();
        record_update(DEPLOY, Some(&scaled), &mut same, "other", T2);
        assert_eq!(same, scaled);
        assert_eq!(
            print_path(&[
                "f:spec".into(),
                "f:ports".into(),
                "k:{\"port\":80,\"protocol\":\"TCP\"}".into()
            ]),
            ".spec.ports[port=80,protocol=\"TCP\"]"
        );
    }
}
