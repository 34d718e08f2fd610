//! `skiff up --update-kubeconfig`: merge the cluster's context into the user's kubeconfig (as `kind` does),
//! and `skiff down`: take it out again. Entries are named `skiff-<cluster>`; nothing else is touched.

use serde_yaml::{Mapping, Value};

/// The name of a cluster's cluster, user and context entries in the user's kubeconfig.
pub fn entry_name(cluster: &str) -> String {
    format!("skiff-{cluster}")
}

fn list_mut<'a>(doc: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let k = Value::from(key);
    if !matches!(doc.get(&k), Some(Value::Sequence(_))) {
        doc.insert(k.clone(), Value::Sequence(Vec::new()));
    }
    match doc.get_mut(&k) {
        Some(Value::Sequence(s)) => s,
        _ => unreachable!("inserted above"),
    }
}

fn named(v: &Value, name: &str) -> bool {
    v.get("name").and_then(Value::as_str) == Some(name)
}

/// `existing` (the user's kubeconfig, if any) with the cluster, user and context of `ours` (the kubeconfig
/// `skiff server` wrote: one of each) added under `skiff-<cluster>` — replacing earlier entries of that
/// name — and made the current context.
pub fn merge(existing: Option<Value>, ours: &Value, cluster: &str) -> Result<Value, String> {
    let name = entry_name(cluster);
    let first = |key: &str, field: &str| -> Result<Value, String> {
        ours.get(key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(|e| e.get(field))
            .cloned()
            .ok_or_else(|| format!("the cluster's kubeconfig has no {key}[0].{field}"))
    };
    let mut cluster_entry = Mapping::new();
    cluster_entry.insert("name".into(), name.clone().into());
    cluster_entry.insert("cluster".into(), first("clusters", "cluster")?);
    let mut user_entry = Mapping::new();
    user_entry.insert("name".into(), name.clone().into());
    user_entry.insert("user".into(), first("users", "user")?);
    let mut ctx = Mapping::new();
    ctx.insert("cluster".into(), name.clone().into());
    ctx.insert("user".into(), name.clone().into());
    let mut ctx_entry = Mapping::new();
    ctx_entry.insert("name".into(), name.clone().into());
    ctx_entry.insert("context".into(), Value::Mapping(ctx));

    let mut doc = match existing {
        Some(Value::Mapping(m)) => m,
        Some(Value::Null) | None => {
            let mut m = Mapping::new();
            m.insert("apiVersion".into(), "v1".into());
            m.insert("kind".into(), "Config".into());
            m
        }
        Some(_) => return Err("the existing kubeconfig is not a YAML mapping".into()),
    };
    for (key, entry) in [
        ("clusters", cluster_entry),
        ("contexts", ctx_entry),
        ("users", user_entry),
    ] {
        let list = list_mut(&mut doc, key);
        list.retain(|v| !named(v, &name));
        list.push(Value::Mapping(entry));
    }
    doc.insert("current-context".into(), name.into());
    Ok(Value::Mapping(doc))
}

/// `existing` without the cluster's entries; the current context is cleared if it was the cluster's.
/// None when there was nothing of ours in it.
pub fn remove(existing: Value, cluster: &str) -> Option<Value> {
    let name = entry_name(cluster);
    let Value::Mapping(mut doc) = existing else {
        return None;
    };
    let mut changed = false;
    for key in ["clusters", "contexts", "users"] {
        if let Some(Value::Sequence(list)) = doc.get_mut(key) {
            let before = list.len();
            list.retain(|v| !named(v, &name));
            changed |= list.len() != before;
        }
    }
    if doc.get("current-context").and_then(Value::as_str) == Some(name.as_str()) {
        doc.insert("current-context".into(), "".into());
        changed = true;
    }
    changed.then_some(Value::Mapping(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\nusers:\n- name: admin\n  user:\n    token: t0k\n";

    #[test]
    fn merges_into_an_existing_kubeconfig_and_removes_again() {
        let existing: Value = serde_yaml::from_str(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod:6443\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\ncurrent-context: prod\nusers:\n- name: prod\n  user:\n    token: p\n",
        )
        .unwrap();
        let ours: Value = serde_yaml::from_str(OURS).unwrap();
        let merged = merge(Some(existing.clone()), &ours, "dev").unwrap();
        assert_eq!(
            serde_yaml::to_string(&merged).unwrap(),
            "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod:6443\n- name: skiff-dev\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod\n- name: skiff-dev\n  context:\n    cluster: skiff-dev\n    user: skiff-dev\ncurrent-context: skiff-dev\nusers:\n- name: prod\n  user:\n    token: p\n- name: skiff-dev\n  user:\n    token: t0k\n"
        );
        // Merging again replaces rather than duplicates.
        let twice = merge(Some(merged.clone()), &ours, "dev").unwrap();
        assert_eq!(twice, merged);
        let removed = remove(merged, "dev").unwrap();
        let mut expected = existing;
        expected["current-context"] = "".into();
        assert_eq!(removed, expected);
        assert_eq!(remove(expected, "dev"), None);
    }

    #[test]
    fn creates_a_kubeconfig_from_nothing() {
        let ours: Value = serde_yaml::from_str(OURS).unwrap();
        let merged = merge(None, &ours, "skiff").unwrap();
        assert_eq!(merged["current-context"], "skiff-skiff");
        assert_eq!(merged["users"][0]["user"]["token"], "t0k");
        assert!(merge(None, &Value::Null, "x").is_err());
    }
}
