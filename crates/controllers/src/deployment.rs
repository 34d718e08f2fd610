//! The Deployment controller: one ReplicaSet per pod template revision, rolled with RollingUpdate
//! (maxSurge / maxUnavailable) or Recreate, revision history, and the status `kubectl rollout status`
//! reads.
//!
//! [`plan`] is pure: from the Deployment and its ReplicaSets it says which ReplicaSet to create, which
//! to scale or re-annotate, and which old ones to delete; it follows upstream's sync loop (scale the new
//! ReplicaSet up within the surge, then scale old ones down while keeping `replicas - maxUnavailable`
//! available). [`deployment_status`] computes the status and conditions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;

use crate::context::Ctx;
use crate::informer::Key;
use crate::replicaset::{is_controlled_by, owner_reference, NAME_ALPHABET};

pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
pub const ANNOTATION_REVISION: &str = "deployment.kubernetes.io/revision";
pub const ANNOTATION_DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const ANNOTATION_MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c9dc5;
    for b in bytes {
        hash ^= *b as u32;
        hash = hash.wrapping_mul(0x01000193);
    }
    hash
}

/// upstream rand.SafeEncodeString: each byte mapped into the no-vowel alphabet.
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| NAME_ALPHABET[b as usize % NAME_ALPHABET.len()] as char)
        .collect()
}

fn without_hash_label(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(LABEL_POD_TEMPLATE_HASH);
    }
    t
}

/// The pod-template-hash: fnv32a of the template (its canonical JSON; upstream hashes its Go
/// rendering) and the collision count, rendered as upstream does.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&without_hash_label(template)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

pub fn templates_equal(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let norm = |t: &PodTemplateSpec| {
        let mut t = without_hash_label(t);
        // An empty label map and no labels mean the same.
        if let Some(m) = t.metadata.as_mut() {
            if m.labels.as_ref().is_some_and(|l| l.is_empty()) {
                m.labels = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    norm(a) == norm(b)
}

fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool, default_percent: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            let exact = pct as i64 * total as i64;
            if round_up {
                ((exact + 99) / 100) as i32
            } else {
                (exact / 100) as i32
            }
        }
        None => {
            let exact = default_percent as i64 * total as i64;
            if round_up {
                ((exact + 99) / 100) as i32
            } else {
                (exact / 100) as i32
            }
        }
    }
}

pub fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// (maxSurge, maxUnavailable) in pods: surge rounds up, unavailable down; both zero means one
/// unavailable (upstream ResolveFenceposts). Recreate: (0, replicas).
pub fn resolve_fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = replicas_of(d);
    if is_recreate(d) {
        return (0, replicas);
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), replicas, true, 25);
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        25,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// What to change about one existing ReplicaSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RsChange {
    pub name: String,
    pub replicas: Option<i32>,
    /// Annotations to set (revision, desired/max replicas).
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub create: Option<ReplicaSet>,
    pub change: Vec<RsChange>,
    pub delete: Vec<String>,
    /// The Deployment's own revision annotation.
    pub revision: String,
    /// Name of the ReplicaSet of the current template (existing or created).
    pub new_rs: Option<String>,
}

fn rs_annotations(d: &Deployment, revision: i64, surge: i32) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != ANNOTATION_LAST_APPLIED && k != ANNOTATION_REVISION)
        .collect();
    a.insert(ANNOTATION_REVISION.to_string(), revision.to_string());
    a.insert(
        ANNOTATION_DESIRED_REPLICAS.to_string(),
        replicas_of(d).to_string(),
    );
    a.insert(
        ANNOTATION_MAX_REPLICAS.to_string(),
        (replicas_of(d) + surge).to_string(),
    );
    a
}

/// The ReplicaSet of the Deployment's current template.
pub fn new_replicaset(d: &Deployment, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = template_hash(
        &spec.template,
        d.status.as_ref().and_then(|s| s.collision_count),
    );
    let name = format!("{}-{}", d.metadata.name.clone().unwrap_or_default(), hash);
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert(LABEL_POD_TEMPLATE_HASH.to_string(), hash.clone());
    tmeta.labels = Some(labels.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_POD_TEMPLATE_HASH.to_string(), hash);
    let (surge, _) = resolve_fenceposts(d);
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(rs_annotations(d, revision, surge)),
            owner_references: Some(vec![owner_reference("apps/v1", "Deployment", &d.metadata)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// One step of upstream's sync loop for `d` whose ReplicaSets are `rses`.
pub fn plan(d: &Deployment, rses: &[Arc<ReplicaSet>]) -> Plan {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = replicas_of(d);
    let (surge, unavailable) = resolve_fenceposts(d);
    let mut sorted: Vec<&ReplicaSet> = rses.iter().map(|r| r.as_ref()).collect();
    // Oldest first (by creation, then name), as upstream's ReplicaSetsByCreationTimestamp.
    sorted.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.name,
            ))
    });
    let new = sorted
        .iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| templates_equal(t, &spec.template))
        })
        .copied();
    let old: Vec<&ReplicaSet> = sorted
        .iter()
        .filter(|rs| Some(rs.metadata.name.as_ref()) != new.map(|n| n.metadata.name.as_ref()))
        .copied()
        .collect();
    let max_old_revision = old
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let mut plan = Plan::default();
    let paused = spec.paused == Some(true);

    // Current replica counts, updated as this plan decides.
    let mut counts: BTreeMap<String, i32> = sorted
        .iter()
        .map(|rs| {
            (
                rs.metadata.name.clone().unwrap_or_default(),
                rs_replicas(rs),
            )
        })
        .collect();
    let set_replicas = |plan: &mut Plan, counts: &mut BTreeMap<String, i32>, name: &str, n: i32| {
        counts.insert(name.to_string(), n);
        match plan.change.iter_mut().find(|c| c.name == name) {
            Some(c) => c.replicas = Some(n),
            None => plan.change.push(RsChange {
                name: name.to_string(),
                replicas: Some(n),
                ..Default::default()
            }),
        }
    };
    let old_total = |counts: &BTreeMap<String, i32>| -> i32 {
        old.iter()
            .map(|rs| {
                counts
                    .get(rs.metadata.name.as_deref().unwrap_or_default())
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let old_active_pods: i32 = old
        .iter()
        .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
        .sum();

    let new_name: String;
    match new {
        Some(rs) => {
            new_name = rs.metadata.name.clone().unwrap_or_default();
            let mut revision = revision_of(&rs.metadata);
            if revision <= max_old_revision {
                // A rollback (or a template changed back): the old ReplicaSet becomes the newest revision.
                revision = max_old_revision + 1;
            }
            let wanted = rs_annotations(d, revision, surge);
            let current = rs.metadata.annotations.clone().unwrap_or_default();
            let missing: BTreeMap<String, String> = wanted
                .into_iter()
                .filter(|(k, v)| current.get(k) != Some(v))
                .collect();
            if !missing.is_empty() && !paused {
                plan.change.push(RsChange {
                    name: new_name.clone(),
                    replicas: None,
                    annotations: missing,
                });
            }
            plan.revision = revision.to_string();
        }
        None => {
            let hash = template_hash(
                &spec.template,
                d.status.as_ref().and_then(|s| s.collision_count),
            );
            new_name = format!("{}-{}", d.metadata.name.clone().unwrap_or_default(), hash);
            if paused {
                plan.revision = revision_of(&d.metadata).to_string();
            } else {
                let revision = max_old_revision + 1;
                let initial = if is_recreate(d) {
                    if old_active_pods > 0 || old_total(&counts) > 0 {
                        0
                    } else {
                        replicas
                    }
                } else {
                    let total: i32 = counts.values().sum();
                    (replicas + surge - total).clamp(0, replicas)
                };
                counts.insert(new_name.clone(), initial);
                plan.create = Some(new_replicaset(d, initial, revision));
                plan.revision = revision.to_string();
            }
        }
    }
    plan.new_rs = Some(new_name.clone());
    let exists_or_created = new.is_some() || plan.create.is_some();

    if exists_or_created {
        let new_count = counts.get(&new_name).copied().unwrap_or(0);
        if is_recreate(d) {
            for rs in &old {
                let name = rs.metadata.name.clone().unwrap_or_default();
                if counts.get(&name).copied().unwrap_or(0) > 0 {
                    set_replicas(&mut plan, &mut counts, &name, 0);
                }
            }
            if old_active_pods == 0 && old_total(&counts) == 0 && new_count != replicas && !paused {
                set_replicas(&mut plan, &mut counts, &new_name, replicas);
            }
        } else if old_total(&counts) == 0 {
            // Not rolling: a plain scale of the only ReplicaSet.
            if new_count != replicas {
                set_replicas(&mut plan, &mut counts, &new_name, replicas);
            }
        } else if !paused {
            // Scale the new ReplicaSet up within the surge.
            let total: i32 = counts.values().sum();
            let max_total = replicas + surge;
            if new_count > replicas {
                set_replicas(&mut plan, &mut counts, &new_name, replicas);
            } else if new_count < replicas && total < max_total && plan.create.is_none() {
                let up = (max_total - total).min(replicas - new_count);
                set_replicas(&mut plan, &mut counts, &new_name, new_count + up);
            } else {
                // Scale old ReplicaSets down while keeping minAvailable available.
                let all_pods: i32 = counts.values().sum();
                let min_available = replicas - unavailable;
                let (new_spec, new_avail) = match new {
                    Some(rs) => (
                        counts.get(&new_name).copied().unwrap_or(0),
                        rs_available(rs),
                    ),
                    None => (new_count, 0),
                };
                let new_unavailable = new_spec - new_avail;
                let max_scaled_down = all_pods - min_available - new_unavailable;
                if max_scaled_down > 0 {
                    let mut cleaned = 0;
                    for rs in &old {
                        let name = rs.metadata.name.clone().unwrap_or_default();
                        let cur = counts.get(&name).copied().unwrap_or(0);
                        if cleaned >= max_scaled_down {
                            break;
                        }
                        if cur == 0 {
                            continue;
                        }
                        let unhealthy = cur - rs_available(rs);
                        if unhealthy <= 0 {
                            continue;
                        }
                        let down = (max_scaled_down - cleaned).min(unhealthy);
                        set_replicas(&mut plan, &mut counts, &name, cur - down);
                        cleaned += down;
                    }
                    let available: i32 = sorted.iter().map(|rs| rs_available(rs)).sum();
                    if available > min_available {
                        let mut remaining =
                            (available - min_available).min(max_scaled_down - cleaned);
                        for rs in &old {
                            if remaining <= 0 {
                                break;
                            }
                            let name = rs.metadata.name.clone().unwrap_or_default();
                            let cur = counts.get(&name).copied().unwrap_or(0);
                            if cur == 0 {
                                continue;
                            }
                            let down = cur.min(remaining);
                            set_replicas(&mut plan, &mut counts, &name, cur - down);
                            remaining -= down;
                        }
                    }
                }
            }
        }
    }

    // Revision history: old ReplicaSets without pods beyond revisionHistoryLimit go, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let mut idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            counts
                .get(rs.metadata.name.as_deref().unwrap_or_default())
                .copied()
                .unwrap_or(0)
                == 0
                && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .copied()
        .collect();
    if idle.len() > limit {
        idle.sort_by_key(|rs| revision_of(&rs.metadata));
        plan.delete = idle[..idle.len() - limit]
            .iter()
            .filter_map(|rs| rs.metadata.name.clone())
            .collect();
    }
    plan
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    previous: Option<&DeploymentCondition>,
    now: &Time,
) -> DeploymentCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let same_status = previous.is_some_and(|p| p.status == status);
    let same_all = same_status
        && previous.is_some_and(|p| {
            p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str())
        });
    DeploymentCondition {
        type_: type_.to_string(),
        status,
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: if same_status {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if same_all {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now.clone())
        },
    }
}

/// The Deployment status given its ReplicaSets and the name of the current template's one.
pub fn deployment_status(
    d: &Deployment,
    rses: &[Arc<ReplicaSet>],
    new_rs: Option<&str>,
    now: &Time,
) -> DeploymentStatus {
    let replicas = replicas_of(d);
    let (_, unavailable) = resolve_fenceposts(d);
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let total_status: i32 = rses.iter().map(|r| st(r).replicas).sum();
    let total_spec: i32 = rses.iter().map(|r| rs_replicas(r)).sum();
    let ready: i32 = rses.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum();
    let available: i32 = rses
        .iter()
        .map(|r| st(r).available_replicas.unwrap_or(0))
        .sum();
    let new = rses
        .iter()
        .find(|r| Some(r.metadata.name.as_deref().unwrap_or_default()) == new_rs);
    let updated = new.map(|r| st(r).replicas).unwrap_or(0);
    let old = d.status.clone().unwrap_or_default();
    let prev = |t: &str| old.conditions.iter().flatten().find(|c| c.type_ == t);
    let min_available = available >= replicas - unavailable;
    let mut conditions = vec![if min_available {
        condition(
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            prev("Available"),
            now,
        )
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            prev("Available"),
            now,
        )
    }];
    let complete = updated == replicas
        && total_status == replicas
        && available == replicas
        && new.is_some_and(|r| rs_replicas(r) == replicas);
    if let Some(name) = new_rs.filter(|_| new.is_some()) {
        conditions.push(if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{name}\" has successfully progressed."),
                prev("Progressing"),
                now,
            )
        } else if prev("Progressing").is_none() {
            condition(
                "Progressing",
                true,
                "NewReplicaSetCreated",
                format!("Created new replica set \"{name}\""),
                None,
                now,
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{name}\" is progressing."),
                prev("Progressing"),
                now,
            )
        });
    }
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total_status),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec.max(replicas) - available).max(0)),
        terminating_replicas: None,
        collision_count: old.collision_count,
        conditions: Some(conditions),
    }
}

/// Status equality ignoring condition timestamps.
fn status_equal(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
            c.last_update_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

// ---------------------------------------------------------------------------------------------
// I/O shell

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    for key in ctx.caches.deployments.keys() {
        ctx.queues.deployments.add(key);
    }
    let queue = ctx.queues.deployments.clone();
    crate::context::drive_with_retry(queue, ctx.options.concurrent_writes, "deployment", |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|()| None) }
    })
    .await;
}

async fn reconcile(ctx: &Ctx, key: &Key) -> Result<(), kube::Error> {
    let Some(d) = ctx.caches.deployments.get(&key.0, &key.1) else {
        return Ok(());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut rses: Vec<Arc<ReplicaSet>> = ctx
        .caches
        .replicasets
        .list_namespace(&key.0)
        .into_iter()
        .filter(|rs| {
            is_controlled_by(&rs.metadata, &uid) && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let p = plan(&d, &rses);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &key.0);
    let dref = crate::events::reference_to(d.as_ref());
    if let Some(rs) = &p.create {
        let name = rs.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), rs).await {
            Ok(created) => {
                crate::events::record(
                    &ctx.client,
                    "deployment-controller",
                    dref.clone(),
                    "Normal",
                    "ScalingReplicaSet",
                    format!(
                        "Scaled up replica set {name} from 0 to {}",
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                    ),
                );
                rses.push(Arc::new(created));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Either our own earlier create the cache has not shown yet, or a hash collision.
                let existing = api.get(&name).await?;
                if !is_controlled_by(&existing.metadata, &uid) {
                    let count = d
                        .status
                        .as_ref()
                        .and_then(|s| s.collision_count)
                        .unwrap_or(0)
                        + 1;
                    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &key.0);
                    dapi.patch_status(
                        &key.1,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"status": {"collisionCount": count}})),
                    )
                    .await?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    for change in &p.change {
        let Some(current) = rses
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(change.name.as_str()))
            .cloned()
        else {
            continue;
        };
        let mut patch = serde_json::json!({});
        if let Some(n) = change.replicas {
            patch["spec"] = serde_json::json!({"replicas": n});
        }
        if !change.annotations.is_empty() {
            patch["metadata"] = serde_json::json!({"annotations": change.annotations});
        }
        let updated = api
            .patch(&change.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        if let Some(n) = change.replicas {
            let from = rs_replicas(&current);
            if n != from {
                let verb = if n > from { "up" } else { "down" };
                crate::events::record(
                    &ctx.client,
                    "deployment-controller",
                    dref.clone(),
                    "Normal",
                    "ScalingReplicaSet",
                    format!(
                        "Scaled {verb} replica set {} from {from} to {n}",
                        change.name
                    ),
                );
            }
        }
        if let Some(slot) = rses
            .iter_mut()
            .find(|r| r.metadata.name.as_deref() == Some(change.name.as_str()))
        {
            *slot = Arc::new(updated);
        }
    }
    for name in &p.delete {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
        rses.retain(|r| r.metadata.name.as_deref() != Some(name.as_str()));
    }
    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &key.0);
    if !p.revision.is_empty()
        && p.revision != "0"
        && revision_of(&d.metadata).to_string() != p.revision
    {
        dapi.patch(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {ANNOTATION_REVISION: p.revision}}}),
            ),
        )
        .await?;
    }
    let now = Time(jiff::Timestamp::now());
    let status = deployment_status(&d, &rses, p.new_rs.as_deref(), &now);
    if !d.status.as_ref().is_some_and(|s| status_equal(s, &status)) {
        dapi.patch_status(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "demoapp", "namespace": "default", "uid": "d-uid", "generation": 2,
                         "annotations": {"kubernetes.io/change-cause": "kubectl set image"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "demoapp"}}, "strategy": strategy,
                     "template": {"metadata": {"labels": {"app": "demoapp"}},
                                  "spec": {"containers": [{"name": "demoapp", "image": image}]}}},
        }))
        .unwrap()
    }

    /// A ReplicaSet of `d`'s template as the controller would have made it, with a status.
    fn rs_of(
        d: &Deployment,
        replicas: i32,
        available: i32,
        revision: i64,
        created: &str,
    ) -> Arc<ReplicaSet> {
        let mut rs = new_replicaset(d, replicas, revision);
        rs.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        rs.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        });
        Arc::new(rs)
    }

    #[test]
    fn hash_is_stable_and_safe() {
        let d = deploy(3, "ikubernetes/demoapp:v1.0", json!({}));
        let t = &d.spec.as_ref().unwrap().template;
        let h = template_hash(t, None);
        assert_eq!(h, template_hash(t, None));
        assert!(h.bytes().all(|b| NAME_ALPHABET.contains(&b)) && (1..=10).contains(&h.len()));
        assert_ne!(h, template_hash(t, Some(1)));
        assert_ne!(
            h,
            template_hash(
                &deploy(3, "ikubernetes/demoapp:v1.1", json!({}))
                    .spec
                    .unwrap()
                    .template,
                None
            )
        );
        assert_eq!(fnv32a(b"hello"), 0x4f9f2cab);
        // Digits map to "4"…"9","b","c","d","f" as in upstream hashes like "5d9c6b4c8f".
        assert_eq!(safe_encode("1234"), "5678");
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        assert_eq!(resolve_fenceposts(&deploy(10, "a", json!({}))), (3, 2));
        assert_eq!(resolve_fenceposts(&deploy(3, "a", json!({}))), (1, 0));
        assert_eq!(
            resolve_fenceposts(&deploy(
                4,
                "a",
                json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}})
            )),
            (0, 1)
        );
        assert_eq!(
            resolve_fenceposts(&deploy(
                4,
                "a",
                json!({"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 1}})
            )),
            (2, 1)
        );
        assert_eq!(
            resolve_fenceposts(&deploy(4, "a", json!({"type": "Recreate"}))),
            (0, 4)
        );
    }

    #[test]
    fn first_sync_creates_revision_one_with_all_replicas() {
        let d = deploy(3, "v1", json!({}));
        let p = plan(&d, &[]);
        let rs = p.create.unwrap();
        let hash = template_hash(&d.spec.as_ref().unwrap().template, None);
        assert_eq!(rs.metadata.name, Some(format!("demoapp-{hash}")));
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            serde_json::to_value(&rs.metadata.annotations).unwrap(),
            json!({"deployment.kubernetes.io/desired-replicas": "3", "deployment.kubernetes.io/max-replicas": "4",
                   "deployment.kubernetes.io/revision": "1", "kubernetes.io/change-cause": "kubectl set image"})
        );
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(LABEL_POD_TEMPLATE_HASH),
            Some(&hash)
        );
        assert_eq!(p.revision, "1");
        assert!(p.change.is_empty());
    }

    #[test]
    fn scale_of_a_settled_deployment_scales_its_replicaset() {
        let d = deploy(4, "v1", json!({}));
        let rs = rs_of(&deploy(2, "v1", json!({})), 2, 2, 1, "2026-01-01T00:00:00Z");
        let p = plan(&d, std::slice::from_ref(&rs));
        assert_eq!(
            p.change,
            vec![RsChange {
                name: rs.metadata.name.clone().unwrap(),
                replicas: Some(4),
                annotations: BTreeMap::from([
                    (ANNOTATION_DESIRED_REPLICAS.to_string(), "4".to_string()),
                    (ANNOTATION_MAX_REPLICAS.to_string(), "5".to_string())
                ])
            }]
        );
    }

    /// Simulates the rollout, pods becoming available instantly one sync later, and checks that
    /// availability never drops below replicas - maxUnavailable and that it completes.
    #[test]
    fn rolling_update_keeps_min_available_and_completes() {
        let v1 = deploy(
            4,
            "v1",
            json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}),
        );
        let v2 = deploy(
            4,
            "v2",
            json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}),
        );
        let mut rses: Vec<Arc<ReplicaSet>> = vec![rs_of(&v1, 4, 4, 1, "2026-01-01T00:00:00Z")];
        let mut steps = vec![];
        for _ in 0..20 {
            let p = plan(&v2, &rses);
            if let Some(mut rs) = p.create.clone() {
                rs.metadata.creation_timestamp =
                    Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
                rs.status = Some(Default::default());
                rses.push(Arc::new(rs));
            }
            // Apply scale changes: a scale-down removes pods at once, a scale-up's pods are not yet available.
            rses = rses
                .into_iter()
                .map(|rs| {
                    let mut rs = (*rs).clone();
                    let name = rs.metadata.name.clone().unwrap();
                    if let Some(n) = p
                        .change
                        .iter()
                        .find(|c| c.name == name)
                        .and_then(|c| c.replicas)
                    {
                        rs.spec.as_mut().unwrap().replicas = Some(n);
                        let st = rs.status.get_or_insert_with(Default::default);
                        st.replicas = n;
                        st.available_replicas = Some(st.available_replicas.unwrap_or(0).min(n));
                    }
                    Arc::new(rs)
                })
                .collect();
            let available: i32 = rses.iter().map(|r| rs_available(r)).sum();
            assert!(available >= 3, "availability dropped to {available}");
            let total: i32 = rses.iter().map(|r| rs_replicas(r)).sum();
            assert!(total <= 5, "surge exceeded: {total}");
            steps.push(rses.iter().map(|r| rs_replicas(r)).collect::<Vec<_>>());
            // Then every pod becomes available.
            rses = rses
                .into_iter()
                .map(|rs| {
                    let mut rs = (*rs).clone();
                    let n = rs_replicas(&rs);
                    rs.status
                        .get_or_insert_with(Default::default)
                        .available_replicas = Some(n);
                    Arc::new(rs)
                })
                .collect();
        }
        // As upstream: the new ReplicaSet is created at the surge and, with 4 available, one old pod goes.
        assert_eq!(steps[0], vec![3, 1]);
        assert_eq!(steps.last().unwrap(), &vec![0, 4]);
        let new = plan(&v2, &rses).new_rs.unwrap();
        let status = deployment_status(&v2, &rses, Some(&new), &Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            (
                status.replicas,
                status.updated_replicas,
                status.available_replicas
            ),
            (Some(4), Some(4), Some(4))
        );
        let progressing = &status.conditions.as_ref().unwrap()[1];
        assert_eq!(
            progressing.reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(
            progressing.message,
            Some(format!("ReplicaSet \"{new}\" has successfully progressed."))
        );
    }

    #[test]
    fn recreate_scales_old_to_zero_before_creating() {
        let v1 = deploy(2, "v1", json!({"type": "Recreate"}));
        let v2 = deploy(2, "v2", json!({"type": "Recreate"}));
        let old = rs_of(&v1, 2, 2, 1, "2026-01-01T00:00:00Z");
        let p = plan(&v2, std::slice::from_ref(&old));
        assert_eq!(
            p.create.as_ref().unwrap().spec.as_ref().unwrap().replicas,
            Some(0)
        );
        assert_eq!(p.change[0].replicas, Some(0));
        let old_gone = rs_of(&v1, 0, 0, 1, "2026-01-01T00:00:00Z");
        let new = rs_of(&v2, 0, 0, 2, "2026-01-02T00:00:00Z");
        let p = plan(&v2, &[old_gone, new.clone()]);
        assert_eq!(
            p.change,
            vec![RsChange {
                name: new.metadata.name.clone().unwrap(),
                replicas: Some(2),
                annotations: BTreeMap::new()
            }]
        );
    }

    #[test]
    fn rollback_gives_the_old_replicaset_the_next_revision_and_history_is_limited() {
        let v1 = deploy(1, "v1", json!({}));
        let mut rses = vec![rs_of(&v1, 0, 0, 1, "2026-01-01T00:00:00Z")];
        for (i, img) in ["v2", "v3", "v4"].iter().enumerate() {
            rses.push(rs_of(
                &deploy(1, img, json!({})),
                if *img == "v4" { 1 } else { 0 },
                1,
                i as i64 + 2,
                &format!("2026-01-0{}T00:00:00Z", i + 2),
            ));
        }
        // Undo to v1: its ReplicaSet is revision 5 now.
        let p = plan(&v1, &rses);
        assert_eq!(p.revision, "5");
        assert_eq!(
            p.change[0]
                .annotations
                .get(ANNOTATION_REVISION)
                .map(String::as_str),
            Some("5")
        );
        // revisionHistoryLimit 1 keeps only the newest idle old ReplicaSet (v3).
        let mut limited = deploy(1, "v4", json!({}));
        limited.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let p = plan(&limited, &rses);
        let hash = |img: &str| {
            format!(
                "demoapp-{}",
                template_hash(&deploy(1, img, json!({})).spec.unwrap().template, None)
            )
        };
        assert_eq!(p.delete, vec![hash("v1"), hash("v2")]);
    }
}
