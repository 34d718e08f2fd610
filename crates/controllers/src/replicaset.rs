//! The ReplicaSet controller: keeps `spec.replicas` pods of the template alive.
//!
//! [`pods_to_create_or_delete`] is pure (how many to create, which to delete, upstream's deletion
//! ranking). The shell keeps expectations: pods it created but has not yet seen in its cache count as
//! existing, pods it deleted but still sees do not — so a reconcile that runs before the watch catches
//! up (or after the API server restarts) never creates a pod twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;
use crate::informer::Key;

/// The alphabet upstream uses for generated names (no vowels, no confusable characters).
pub const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn random_suffix(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// Whether `pod` is owned by the controller with uid `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    crate::controller_owner(meta).any(|o| o.uid == uid)
}

pub fn pod_is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        })
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since + jiff::SignedDuration::from_secs(min_ready_seconds as i64) <= now,
    }
}

/// Upstream's deletion ranking: unscheduled before scheduled, Pending before Unknown before Running,
/// not ready before ready, ready for less time before longer, more restarts first, newer first.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let since = ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        assigned,
        phase,
        since.is_some(),
        std::cmp::Reverse(since),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
        pod.metadata.name.clone(),
    )
}

/// (pods to create, names of pods to delete) so that `rs` has `spec.replicas` active pods.
/// `pods` are the active pods the ReplicaSet controls (plus in-flight creations).
pub fn pods_to_create_or_delete(rs: &ReplicaSet, pods: &[Arc<Pod>]) -> (usize, Vec<String>) {
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    if pods.len() < want {
        return (want - pods.len(), vec![]);
    }
    let mut ranked: Vec<&Arc<Pod>> = pods.iter().collect();
    ranked.sort_by_key(|p| deletion_rank(p));
    let delete = ranked
        .into_iter()
        .take(pods.len() - want)
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (0, delete)
}

pub fn owner_reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod of `template` owned by `owner`, named `name`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    name: &str,
    generate_name: &str,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The status the ReplicaSet should report.
pub fn replicaset_status(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    now: jiff::Timestamp,
) -> ReplicaSetStatus {
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| pod_is_active(p)).collect();
    let old = rs.status.clone().unwrap_or_default();
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(
            active
                .iter()
                .filter(|p| {
                    crate::endpoints::selector_matches(&template_labels, p.metadata.labels.as_ref())
                })
                .count() as i32,
        ),
        ready_replicas: Some(
            active
                .iter()
                .filter(|p| crate::endpoints::pod_is_ready(p))
                .count() as i32,
        ),
        available_replicas: Some(
            active
                .iter()
                .filter(|p| pod_is_available(p, min_ready, now))
                .count() as i32,
        ),
        terminating_replicas: None,
        observed_generation: rs.metadata.generation,
        conditions: old.conditions,
    }
}

// ---------------------------------------------------------------------------------------------
// I/O shell

#[derive(Default)]
struct Expectations {
    /// Pods created but not yet in the cache, with when they were created.
    creating: HashMap<String, (Instant, Arc<Pod>)>,
    /// Pods deleted but still in the cache.
    deleting: HashMap<String, Instant>,
}

/// How long an unobserved create/delete is trusted (upstream's ExpectationsTimeout is 5 minutes;
/// shorter here because a lost watch is relisted promptly).
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct State {
    expectations: Mutex<HashMap<Key, Expectations>>,
    started: AtomicBool,
}

impl State {
    pub fn forget(&self, rs: &Key) {
        self.expectations.lock().remove(rs);
    }
}

pub(crate) fn on_pod(ctx: &Arc<Ctx>, old: Option<&Pod>, new: Option<&Pod>) {
    let Some(pod) = new.or(old) else { return };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let owners = [old, new]
        .into_iter()
        .flatten()
        .flat_map(|p| {
            crate::controller_owner(&p.metadata)
                .filter(|o| o.kind == "ReplicaSet")
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
        })
        .collect::<HashSet<_>>();
    for owner in owners {
        let key = (namespace.clone(), owner);
        {
            let mut exp = ctx.replicasets.expectations.lock();
            if let Some(e) = exp.get_mut(&key) {
                match new {
                    Some(_) => {
                        e.creating.remove(&name);
                    }
                    None => {
                        e.creating.remove(&name);
                        e.deleting.remove(&name);
                    }
                }
            }
        }
        if ctx.replicasets.started.load(Ordering::Acquire) {
            ctx.queues.replicasets.add(key);
        }
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    ctx.replicasets.started.store(true, Ordering::Release);
    for key in ctx.caches.replicasets.keys() {
        ctx.queues.replicasets.add(key);
    }
    let queue = ctx.queues.replicasets.clone();
    crate::context::drive_with_retry(queue, ctx.options.concurrent_writes, "replicaset", |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await;
}

/// The active pods of `rs` as the controller must count them: the cache corrected by expectations.
fn owned_pods(ctx: &Ctx, key: &Key, uid: &str) -> Vec<Arc<Pod>> {
    let cached: Vec<Arc<Pod>> = ctx
        .caches
        .pods
        .list_namespace(&key.0)
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, uid))
        .collect();
    let mut exp = ctx.replicasets.expectations.lock();
    let e = exp.entry(key.clone()).or_default();
    let now = Instant::now();
    e.creating
        .retain(|_, (t, _)| now.duration_since(*t) < EXPECTATION_TTL);
    e.deleting
        .retain(|_, t| now.duration_since(*t) < EXPECTATION_TTL);
    let cached_names: HashSet<String> = cached
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    e.creating.retain(|name, _| !cached_names.contains(name));
    e.deleting.retain(|name, _| cached_names.contains(name));
    let mut pods: Vec<Arc<Pod>> = cached
        .into_iter()
        .filter(|p| {
            !e.deleting
                .contains_key(p.metadata.name.as_deref().unwrap_or_default())
        })
        .collect();
    pods.extend(e.creating.values().map(|(_, p)| p.clone()));
    pods
}

/// Pods matching the selector without a controller are adopted (upstream's ControllerRefManager),
/// e.g. after the previous ReplicaSet was deleted with `--cascade=orphan`. Adopted pods count once
/// the cache shows the new ownerReference.
async fn adopt_orphans(ctx: &Ctx, rs: &ReplicaSet) -> Result<Vec<Arc<Pod>>, kube::Error> {
    let mut adopted = vec![];
    let Some(selector) = rs.spec.as_ref().map(|s| &s.selector) else {
        return Ok(adopted);
    };
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return Ok(adopted);
    }
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for pod in ctx.caches.pods.list_namespace(&namespace) {
        if crate::controller_owner(&pod.metadata).next().is_some()
            || !pod_is_active(&pod)
            || !crate::label_selector_matches(selector, pod.metadata.labels.as_ref())
        {
            continue;
        }
        let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
        owners.push(owner_reference("apps/v1", "ReplicaSet", &rs.metadata));
        let patch = serde_json::json!({"metadata": {"ownerReferences": owners, "resourceVersion": pod.metadata.resource_version}});
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(p) => {
                tracing::info!(%namespace, pod = %name, replicaset = ?rs.metadata.name, "adopted pod");
                adopted.push(Arc::new(p));
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(adopted)
}

async fn reconcile(ctx: &Ctx, key: &Key) -> Result<Option<Duration>, kube::Error> {
    let Some(rs) = ctx.caches.replicasets.get(&key.0, &key.1) else {
        return Ok(None);
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let adopted = adopt_orphans(ctx, &rs).await?;
    let mut pods = owned_pods(ctx, key, &uid);
    for p in adopted {
        if !pods.iter().any(|q| q.metadata.name == p.metadata.name) {
            pods.push(p);
        }
    }
    let active: Vec<Arc<Pod>> = pods.iter().filter(|p| pod_is_active(p)).cloned().collect();
    let (create, delete) = pods_to_create_or_delete(&rs, &active);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    let mut first_error = None;
    if create > 0 {
        let template = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let owner = owner_reference("apps/v1", "ReplicaSet", &rs.metadata);
        let new_pods: Vec<Pod> = (0..create)
            .map(|_| {
                let name = format!("{}-{}", key.1, random_suffix(5));
                pod_from_template(
                    &template,
                    &key.0,
                    &name,
                    &format!("{}-", key.1),
                    owner.clone(),
                )
            })
            .collect();
        {
            let mut exp = ctx.replicasets.expectations.lock();
            let e = exp.entry(key.clone()).or_default();
            for p in &new_pods {
                e.creating.insert(
                    p.metadata.name.clone().unwrap_or_default(),
                    (Instant::now(), Arc::new(p.clone())),
                );
            }
        }
        use futures::StreamExt;
        let results: Vec<(String, Result<Pod, kube::Error>)> = futures::stream::iter(new_pods)
            .map(|p| {
                let api = api.clone();
                async move {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    (name, api.create(&PostParams::default(), &p).await)
                }
            })
            .buffer_unordered(ctx.options.concurrent_writes.max(1))
            .collect()
            .await;
        let mut created = 0;
        for (name, result) in results {
            match result {
                Ok(_) => created += 1,
                Err(error) => {
                    ctx.replicasets
                        .expectations
                        .lock()
                        .entry(key.clone())
                        .or_default()
                        .creating
                        .remove(&name);
                    crate::events::record(
                        &ctx.client,
                        "replicaset-controller",
                        crate::events::reference_to(rs.as_ref()),
                        "Warning",
                        "FailedCreate",
                        format!("Error creating: {error}"),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        if created > 0 {
            tracing::debug!(namespace = %key.0, replicaset = %key.1, created, "created pods");
        }
    }
    for name in &delete {
        ctx.replicasets
            .expectations
            .lock()
            .entry(key.clone())
            .or_default()
            .deleting
            .insert(name.clone(), Instant::now());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                crate::events::record(
                    &ctx.client,
                    "replicaset-controller",
                    crate::events::reference_to(rs.as_ref()),
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                ctx.replicasets
                    .expectations
                    .lock()
                    .entry(key.clone())
                    .or_default()
                    .deleting
                    .remove(name);
                first_error.get_or_insert(error);
            }
        }
    }
    // Status from what the cache shows (in-flight creations are not pods yet).
    let cached: Vec<Arc<Pod>> = ctx
        .caches
        .pods
        .list_namespace(&key.0)
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, &uid))
        .collect();
    let now = jiff::Timestamp::now();
    let status = replicaset_status(&rs, &cached, now);
    if rs.status.as_ref() != Some(&status) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &key.0);
        let patch = serde_json::json!({"status": status});
        rs_api
            .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // With minReadySeconds, a ready pod becomes available later without any event: look again then.
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready > 0 && status.available_replicas < status.ready_replicas {
        return Ok(Some(Duration::from_secs(1)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-7d4b9c", "namespace": "default", "uid": "rs-uid", "generation": 3},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}},
        }))
        .unwrap()
    }

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<&str>,
        created: &str,
    ) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase},
        });
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        if let Some(t) = ready_at {
            v["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn scale_up_counts_missing_pods() {
        let pods = vec![pod(
            "a",
            Some("n1"),
            "Running",
            Some("2026-01-01T00:00:00Z"),
            "2026-01-01T00:00:00Z",
        )];
        assert_eq!(pods_to_create_or_delete(&rs(3), &pods), (2, vec![]));
        assert_eq!(pods_to_create_or_delete(&rs(1), &pods), (0, vec![]));
    }

    #[test]
    fn scale_down_deletes_unready_and_newest_first() {
        let pods = vec![
            pod(
                "old-ready",
                Some("n1"),
                "Running",
                Some("2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("n1"),
                "Running",
                Some("2026-01-01T00:05:00Z"),
                "2026-01-01T00:04:00Z",
            ),
            pod(
                "running-unready",
                Some("n2"),
                "Running",
                None,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n2"),
                "Pending",
                None,
                "2026-01-01T00:00:00Z",
            ),
            pod("unscheduled", None, "Pending", None, "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(
            pods_to_create_or_delete(&rs(1), &pods),
            (
                0,
                vec![
                    "unscheduled".to_string(),
                    "pending".to_string(),
                    "running-unready".to_string(),
                    "new-ready".to_string()
                ]
            )
        );
    }

    #[test]
    fn pods_follow_the_template_and_are_owned() {
        let r = rs(1);
        let p = pod_from_template(
            r.spec.as_ref().unwrap().template.as_ref().unwrap(),
            "default",
            "web-7d4b9c-x2k9z",
            "web-7d4b9c-",
            owner_reference("apps/v1", "ReplicaSet", &r.metadata),
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-7d4b9c-x2k9z", "generateName": "web-7d4b9c-", "namespace": "default",
                             "labels": {"app": "web"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs-uid",
                                                  "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"containers": [{"name": "c"}]},
            })
        );
        let suffix = random_suffix(5);
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }

    #[test]
    fn status_counts_ready_and_available() {
        let mut r = rs(3);
        r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let pods = vec![
            pod(
                "a",
                Some("n1"),
                "Running",
                Some("2026-01-01T00:00:00Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "b",
                Some("n1"),
                "Running",
                Some("2026-01-01T00:00:50Z"),
                "2026-01-01T00:00:00Z",
            ),
            pod("c", Some("n1"), "Running", None, "2026-01-01T00:00:00Z"),
        ];
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let s = replicaset_status(&r, &pods, now);
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (3, Some(2), Some(1), Some(3))
        );
    }
}
