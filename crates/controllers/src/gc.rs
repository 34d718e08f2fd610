//! Garbage collector: honours ownerReferences.
//! - background: a dependent whose owners are all gone is deleted (one whose some owners are gone
//!   loses those references);
//! - foreground: an owner being deleted with the `foregroundDeletion` finalizer has its dependents
//!   deleted, and the finalizer removed once none is left;
//! - orphan: an owner being deleted with the `orphan` finalizer has its dependents' references to it
//!   removed, then the finalizer.
//!
//! It covers the kinds the controllers cache (owners: Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! Service, Endpoints; dependents: Pod, ReplicaSet, EndpointSlice). An owner missing from the cache is
//! confirmed with a live GET before anything is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::Api;

use crate::context::Ctx;
use crate::informer::Key;

pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";
pub const FINALIZER_ORPHAN: &str = "orphan";

/// (group, version, kind, plural) of the kinds this collector understands.
const KINDS: &[(&str, &str, &str, &str)] = &[
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Endpoints", "endpoints"),
    ("", "v1", "Pod", "pods"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
];

pub fn api_resource(kind: &str) -> Option<ApiResource> {
    KINDS
        .iter()
        .find(|k| k.2 == kind)
        .map(|(group, version, kind, plural)| ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_string(),
            plural: plural.to_string(),
        })
}

/// A dependent as the collector sees it.
#[derive(Debug, Clone)]
pub struct Dependent {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
}

/// What to do with one dependent of an owner that is gone (`gone` = uids of absent owners).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Delete,
    /// Keep it, with only these ownerReferences.
    SetOwners(Vec<OwnerReference>),
    Nothing,
}

pub fn action_for(dep: &Dependent, gone: &[String]) -> Action {
    let remaining: Vec<OwnerReference> = dep
        .owners
        .iter()
        .filter(|o| !gone.contains(&o.uid))
        .cloned()
        .collect();
    if remaining.len() == dep.owners.len() {
        Action::Nothing
    } else if remaining.is_empty() {
        if dep.deleting {
            Action::Nothing
        } else {
            Action::Delete
        }
    } else {
        Action::SetOwners(remaining)
    }
}

fn dependents_of(ctx: &Ctx, namespace: &str, uid: &str) -> Vec<Dependent> {
    let mut out = vec![];
    let mut push = |kind: &'static str, meta: &ObjectMeta| {
        if meta.owner_references.iter().flatten().any(|o| o.uid == uid) {
            out.push(Dependent {
                kind,
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                owners: meta.owner_references.clone().unwrap_or_default(),
                deleting: meta.deletion_timestamp.is_some(),
            });
        }
    };
    for p in ctx.caches.pods.list_namespace(namespace) {
        push("Pod", &p.metadata);
    }
    for r in ctx.caches.replicasets.list_namespace(namespace) {
        push("ReplicaSet", &r.metadata);
    }
    for s in ctx.caches.slices.list_namespace(namespace) {
        push("EndpointSlice", &s.metadata);
    }
    out
}

/// Enqueue owners to examine: owners that went away or are being deleted, and the owners named by a
/// dependent that appeared.
pub(crate) fn on_object(ctx: &Arc<Ctx>, old: Option<&ObjectMeta>, new: Option<&ObjectMeta>) {
    let Some(meta) = new.or(old) else { return };
    let ns = meta.namespace.clone().unwrap_or_default();
    match new {
        None => {
            if let Some(uid) = meta.uid.clone() {
                ctx.queues.gc.add((ns.clone(), uid));
            }
        }
        Some(n) => {
            if n.deletion_timestamp.is_some()
                && n.finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FINALIZER_FOREGROUND || f == FINALIZER_ORPHAN)
            {
                if let Some(uid) = n.uid.clone() {
                    ctx.queues.gc.add((ns.clone(), uid));
                }
            }
            if old.is_none() || old.map(|o| &o.owner_references) != Some(&n.owner_references) {
                for o in n.owner_references.iter().flatten() {
                    ctx.queues.gc.add((ns.clone(), o.uid.clone()));
                }
            }
        }
    }
    // A dependent that went away may be the last one a foreground deletion waits for.
    if new.is_none() {
        for o in meta.owner_references.iter().flatten() {
            ctx.queues.gc.add((ns.clone(), o.uid.clone()));
        }
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    // Start: look at every owner any dependent names.
    for ns_pods in [
        ctx.caches
            .pods
            .list()
            .iter()
            .map(|p| p.metadata.clone())
            .collect::<Vec<_>>(),
        ctx.caches
            .replicasets
            .list()
            .iter()
            .map(|p| p.metadata.clone())
            .collect(),
        ctx.caches
            .slices
            .list()
            .iter()
            .map(|p| p.metadata.clone())
            .collect(),
    ] {
        for meta in ns_pods {
            for o in meta.owner_references.iter().flatten() {
                ctx.queues
                    .gc
                    .add((meta.namespace.clone().unwrap_or_default(), o.uid.clone()));
            }
        }
    }
    let queue = ctx.queues.gc.clone();
    crate::context::drive(queue.clone(), 4, |key| {
        let ctx = ctx.clone();
        let queue = queue.clone();
        async move {
            match reconcile(&ctx, &key).await {
                Ok(Some(after)) => queue.add_after(key, after),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(namespace = %key.0, owner = %key.1, %error, "garbage collection failed; retrying");
                    queue.add_after(key, Duration::from_secs(1));
                }
            }
        }
    })
    .await;
}

/// The owner's current metadata, `None` when it no longer exists (with that uid).
async fn owner_state(
    ctx: &Ctx,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<Option<ObjectMeta>, kube::Error> {
    let Some(ar) = api_resource(&owner.kind) else {
        // A kind we do not know: never assume it is gone.
        return Ok(Some(ObjectMeta::default()));
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &ar);
    match api.get(&owner.name).await {
        Ok(obj) if obj.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
            Ok(Some(obj.metadata))
        }
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

async fn reconcile(ctx: &Ctx, key: &Key) -> Result<Option<Duration>, kube::Error> {
    let (namespace, uid) = key;
    let dependents = dependents_of(ctx, namespace, uid);
    let owner_ref = dependents
        .iter()
        .flat_map(|d| d.owners.iter())
        .find(|o| &o.uid == uid)
        .cloned();
    let Some(owner_ref) = owner_ref else {
        // No dependents (left): finish a foreground / orphan deletion of an owner we cache.
        return finish_owner(ctx, namespace, uid).await.map(|_| None);
    };
    let owner = owner_state(ctx, namespace, &owner_ref).await?;
    let finalizers = owner
        .as_ref()
        .map(|m| m.finalizers.clone().unwrap_or_default())
        .unwrap_or_default();
    let owner_deleting = owner
        .as_ref()
        .is_some_and(|m| m.deletion_timestamp.is_some());
    match owner {
        None => {
            for dep in &dependents {
                apply(
                    ctx,
                    dep,
                    &action_for(dep, std::slice::from_ref(uid)),
                    PropagationPolicy::Background,
                )
                .await?;
            }
            Ok(None)
        }
        Some(meta) if owner_deleting && finalizers.iter().any(|f| f == FINALIZER_ORPHAN) => {
            for dep in &dependents {
                let remaining: Vec<OwnerReference> = dep
                    .owners
                    .iter()
                    .filter(|o| &o.uid != uid)
                    .cloned()
                    .collect();
                apply(
                    ctx,
                    dep,
                    &Action::SetOwners(remaining),
                    PropagationPolicy::Background,
                )
                .await?;
            }
            remove_finalizer(ctx, namespace, &owner_ref, &meta, FINALIZER_ORPHAN).await?;
            Ok(None)
        }
        Some(meta) if owner_deleting && finalizers.iter().any(|f| f == FINALIZER_FOREGROUND) => {
            let blocking = dependents.iter().filter(|d| {
                d.owners
                    .iter()
                    .any(|o| &o.uid == uid && o.block_owner_deletion == Some(true))
            });
            let mut waiting = false;
            for dep in blocking {
                waiting = true;
                if !dep.deleting {
                    apply(ctx, dep, &Action::Delete, PropagationPolicy::Foreground).await?;
                }
            }
            if !waiting {
                remove_finalizer(ctx, namespace, &owner_ref, &meta, FINALIZER_FOREGROUND).await?;
                return Ok(None);
            }
            Ok(Some(Duration::from_millis(500)))
        }
        Some(_) => Ok(None),
    }
}

async fn apply(
    ctx: &Ctx,
    dep: &Dependent,
    action: &Action,
    policy: PropagationPolicy,
) -> Result<(), kube::Error> {
    let Some(ar) = api_resource(dep.kind) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &dep.namespace, &ar);
    let result = match action {
        Action::Nothing => return Ok(()),
        Action::Delete => {
            tracing::debug!(kind = dep.kind, namespace = %dep.namespace, name = %dep.name, "deleting dependent whose owner is gone");
            let dp = DeleteParams {
                propagation_policy: Some(policy),
                ..Default::default()
            };
            api.delete(&dep.name, &dp).await.map(|_| ())
        }
        Action::SetOwners(owners) => {
            let value = if owners.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::to_value(owners).unwrap_or_default()
            };
            let patch = serde_json::json!({"metadata": {"ownerReferences": value}});
            api.patch(&dep.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

async fn remove_finalizer(
    ctx: &Ctx,
    namespace: &str,
    owner: &OwnerReference,
    meta: &ObjectMeta,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let Some(ar) = api_resource(&owner.kind) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &ar);
    let remaining: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": remaining, "resourceVersion": meta.resource_version}});
    match api
        .patch(&owner.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// An owner being deleted whose dependents are all gone: drop its GC finalizer.
async fn finish_owner(ctx: &Ctx, namespace: &str, uid: &str) -> Result<(), kube::Error> {
    let candidates: Vec<(String, ObjectMeta)> = [
        ctx.caches
            .deployments
            .list_namespace(namespace)
            .iter()
            .map(|o| ("Deployment".to_string(), o.metadata.clone()))
            .collect::<Vec<_>>(),
        ctx.caches
            .replicasets
            .list_namespace(namespace)
            .iter()
            .map(|o| ("ReplicaSet".to_string(), o.metadata.clone()))
            .collect(),
        ctx.caches
            .statefulsets
            .list_namespace(namespace)
            .iter()
            .map(|o| ("StatefulSet".to_string(), o.metadata.clone()))
            .collect(),
        ctx.caches
            .daemonsets
            .list_namespace(namespace)
            .iter()
            .map(|o| ("DaemonSet".to_string(), o.metadata.clone()))
            .collect(),
        ctx.caches
            .services
            .list_namespace(namespace)
            .iter()
            .map(|o| ("Service".to_string(), o.metadata.clone()))
            .collect(),
    ]
    .concat();
    for (kind, meta) in candidates {
        if meta.uid.as_deref() != Some(uid) || meta.deletion_timestamp.is_none() {
            continue;
        }
        let owner = OwnerReference {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.to_string(),
            ..Default::default()
        };
        for f in [FINALIZER_FOREGROUND, FINALIZER_ORPHAN] {
            if meta.finalizers.iter().flatten().any(|x| x == f) {
                let fresh = owner_state(ctx, namespace, &owner).await?;
                if let Some(fresh) = fresh {
                    remove_finalizer(ctx, namespace, &owner, &fresh, f).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: uid.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn dependents_go_with_their_last_owner() {
        let dep = Dependent {
            kind: "Pod",
            namespace: "default".into(),
            name: "p".into(),
            owners: vec![owner("a"), owner("b")],
            deleting: false,
        };
        assert_eq!(
            action_for(&dep, &["a".to_string()]),
            Action::SetOwners(vec![owner("b")])
        );
        assert_eq!(
            action_for(&dep, &["a".to_string(), "b".to_string()]),
            Action::Delete
        );
        assert_eq!(action_for(&dep, &["c".to_string()]), Action::Nothing);
        let deleting = Dependent {
            deleting: true,
            ..dep
        };
        assert_eq!(
            action_for(&deleting, &["a".to_string(), "b".to_string()]),
            Action::Nothing
        );
    }
}
