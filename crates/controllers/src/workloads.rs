//! StatefulSet (ordered, stable names `<name>-0..N`, hostname + subdomain for its headless Service)
//! and DaemonSet (one pod per eligible node, `spec.nodeName` set) controllers.
//!
//! [`statefulset_step`] and [`daemonset_step`] are pure; the shells apply their answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec, Taint};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;
use crate::endpoints::{pod_is_ready, selector_matches};
use crate::informer::Key;
use crate::replicaset::{
    is_controlled_by, owner_reference, pod_from_template, pod_is_active, random_suffix,
};

pub const LABEL_REVISION_HASH: &str = "controller-revision-hash";
pub const LABEL_SS_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const LABEL_POD_INDEX: &str = "apps.kubernetes.io/pod-index";

fn revision_hash(name: &str, template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    format!(
        "{name}-{}",
        crate::deployment::safe_encode(&crate::deployment::fnv32a(&bytes).to_string())
    )
}

fn revision_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_REVISION_HASH)
        .map(String::as_str)
}

#[derive(Debug, Clone, PartialEq)]
pub enum SetStep {
    Create(i32),
    Delete(String),
    /// Waiting for a pod to become Ready or to finish terminating.
    Wait,
    Done,
}

fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The next actions for a StatefulSet given its pods (all it controls, terminating included).
/// OrderedReady: one at a time, each waiting for the previous to be Ready; Parallel: all at once.
pub fn statefulset_step(ss: &StatefulSet, pods: &[Arc<Pod>]) -> Vec<SetStep> {
    let name = ss.metadata.name.clone().unwrap_or_default();
    let spec = ss.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let update_revision = revision_hash(&name, &spec.template);
    let by_ordinal: BTreeMap<i32, &Arc<Pod>> = pods
        .iter()
        .filter_map(|p| ordinal(&name, p).map(|o| (o, p)))
        .collect();
    if !parallel
        && by_ordinal
            .values()
            .any(|p| p.metadata.deletion_timestamp.is_some())
    {
        return vec![SetStep::Wait];
    }
    let mut steps = vec![];
    for i in 0..replicas {
        match by_ordinal.get(&i) {
            None => {
                steps.push(SetStep::Create(i));
                if !parallel {
                    return steps;
                }
            }
            Some(p)
                if !parallel && (!pod_is_ready(p) || p.metadata.deletion_timestamp.is_some()) =>
            {
                steps.push(SetStep::Wait);
                return steps;
            }
            Some(_) => {}
        }
    }
    // Scale down: highest ordinal first.
    let extra: Vec<&&Arc<Pod>> = by_ordinal.range(replicas..).rev().map(|(_, p)| p).collect();
    for p in &extra {
        if p.metadata.deletion_timestamp.is_none() {
            steps.push(SetStep::Delete(p.metadata.name.clone().unwrap_or_default()));
            if !parallel {
                return steps;
            }
        }
    }
    if !extra.is_empty() {
        return steps;
    }
    // Rolling update: highest ordinal with an old revision first, once all are Ready.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    if rolling && steps.is_empty() {
        if let Some((_, p)) = by_ordinal
            .iter()
            .rev()
            .find(|(_, p)| revision_label(p) != Some(update_revision.as_str()))
        {
            steps.push(SetStep::Delete(p.metadata.name.clone().unwrap_or_default()));
        }
    }
    if steps.is_empty() {
        steps.push(SetStep::Done);
    }
    steps
}

pub fn statefulset_pod(ss: &StatefulSet, i: i32) -> Pod {
    let name = ss.metadata.name.clone().unwrap_or_default();
    let spec = ss.spec.clone().unwrap_or_default();
    let pod_name = format!("{name}-{i}");
    let mut pod = pod_from_template(
        &spec.template,
        ss.metadata.namespace.as_deref().unwrap_or_default(),
        &pod_name,
        &format!("{name}-"),
        owner_reference("apps/v1", "StatefulSet", &ss.metadata),
    );
    pod.metadata.generate_name = None;
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(
        LABEL_REVISION_HASH.into(),
        revision_hash(&name, &spec.template),
    );
    labels.insert(LABEL_SS_POD_NAME.into(), pod_name.clone());
    labels.insert(LABEL_POD_INDEX.into(), i.to_string());
    if let Some(pspec) = pod.spec.as_mut() {
        pspec.hostname = Some(pod_name);
        if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
            pspec.subdomain = Some(svc);
        }
    }
    pod
}

fn tolerated(taint: &Taint, tolerations: &[k8s_openapi::api::core::v1::Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = t.operator.as_deref() == Some("Exists")
            || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        key_ok && value_ok && effect_ok
    })
}

/// Whether a DaemonSet's pod belongs on `node` (nodeSelector, taints; daemons tolerate the
/// not-ready / unreachable / unschedulable taints as upstream adds those tolerations).
pub fn daemon_fits(template: &PodTemplateSpec, node: &Node) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    if let Some(sel) = spec.node_selector.as_ref() {
        if !selector_matches(sel, node.metadata.labels.as_ref()) {
            return false;
        }
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .all(|t| {
            t.effect == "PreferNoSchedule"
                || [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                    "node.kubernetes.io/unschedulable",
                ]
                .contains(&t.key.as_str())
                || tolerated(t, &tolerations)
        })
}

/// (nodes that need a pod, pods to delete) for a DaemonSet: one up-to-date pod per eligible node.
pub fn daemonset_step(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
) -> (Vec<String>, Vec<String>) {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template = ds.spec.clone().unwrap_or_default().template;
    let revision = revision_hash(&name, &template);
    let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    for p in pods.iter().filter(|p| pod_is_active(p)) {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut create = vec![];
    let mut delete = vec![];
    let mut outdated = vec![];
    for node in nodes {
        let n = node.metadata.name.clone().unwrap_or_default();
        let fits = daemon_fits(&template, node);
        let mut here = by_node.remove(&n).unwrap_or_default();
        here.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        if !fits {
            delete.extend(here.iter().filter_map(|p| p.metadata.name.clone()));
            continue;
        }
        match here.split_first() {
            None => create.push(n),
            Some((first, rest)) => {
                delete.extend(rest.iter().filter_map(|p| p.metadata.name.clone()));
                if revision_label(first) != Some(revision.as_str()) {
                    outdated.push(first.metadata.name.clone().unwrap_or_default());
                }
            }
        }
    }
    // Pods on nodes that no longer exist.
    for (_, ps) in by_node {
        delete.extend(ps.iter().filter_map(|p| p.metadata.name.clone()));
    }
    // RollingUpdate with maxUnavailable 1: replace one outdated pod at a time, when nothing else is
    // missing or going away.
    let rolling = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let terminating = pods.iter().any(|p| p.metadata.deletion_timestamp.is_some());
    if rolling && create.is_empty() && delete.is_empty() && !terminating {
        if let Some(first) = outdated.into_iter().next() {
            delete.push(first);
        }
    }
    (create, delete)
}

pub fn daemonset_pod(ds: &DaemonSet, node: &str) -> Pod {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template = ds.spec.clone().unwrap_or_default().template;
    let mut pod = pod_from_template(
        &template,
        ds.metadata.namespace.as_deref().unwrap_or_default(),
        &format!("{name}-{}", random_suffix(5)),
        &format!("{name}-"),
        owner_reference("apps/v1", "DaemonSet", &ds.metadata),
    );
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_REVISION_HASH.into(), revision_hash(&name, &template));
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    pod
}

// ---------------------------------------------------------------------------------------------
// I/O shell

pub(crate) fn on_pod(ctx: &Arc<Ctx>, old: Option<&Pod>, new: Option<&Pod>) {
    for p in [old, new].into_iter().flatten() {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        for o in crate::controller_owner(&p.metadata) {
            match o.kind.as_str() {
                "StatefulSet" => ctx.queues.statefulsets.add((ns.clone(), o.name.clone())),
                "DaemonSet" => ctx.queues.daemonsets.add((ns.clone(), o.name.clone())),
                _ => {}
            }
        }
    }
}

pub(crate) fn on_node(ctx: &Arc<Ctx>, _old: Option<&Node>, _new: Option<&Node>) {
    for key in ctx.caches.daemonsets.keys() {
        ctx.queues.daemonsets.add(key);
    }
}

fn owned(ctx: &Ctx, ns: &str, uid: &str) -> Vec<Arc<Pod>> {
    ctx.caches
        .pods
        .list_namespace(ns)
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, uid))
        .collect()
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn run_statefulsets(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    for key in ctx.caches.statefulsets.keys() {
        ctx.queues.statefulsets.add(key);
    }
    let queue = ctx.queues.statefulsets.clone();
    crate::context::drive_with_retry(queue, ctx.options.concurrent_writes, "statefulset", |key| {
        let ctx = ctx.clone();
        async move { sync_statefulset(&ctx, &key).await.map(|()| None) }
    })
    .await;
}

async fn sync_statefulset(ctx: &Ctx, key: &Key) -> Result<(), kube::Error> {
    let Some(ss) = ctx.caches.statefulsets.get(&key.0, &key.1) else {
        return Ok(());
    };
    if ss.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let uid = ss.metadata.uid.clone().unwrap_or_default();
    let pods = owned(ctx, &key.0, &uid);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    for step in statefulset_step(&ss, &pods) {
        match step {
            SetStep::Create(i) => match api
                .create(&PostParams::default(), &statefulset_pod(&ss, i))
                .await
            {
                Ok(_) => crate::events::record(
                    &ctx.client,
                    "statefulset-controller",
                    crate::events::reference_to(ss.as_ref()),
                    "Normal",
                    "SuccessfulCreate",
                    format!(
                        "create Pod {}-{i} in StatefulSet {} successful",
                        key.1, key.1
                    ),
                ),
                // Created by an earlier sync the cache has not shown yet: the name is the expectation.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            },
            SetStep::Delete(name) => delete_pod(&api, &name).await?,
            SetStep::Wait | SetStep::Done => {}
        }
    }
    let spec = ss.spec.clone().unwrap_or_default();
    let update_revision = revision_hash(&key.1, &spec.template);
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| pod_is_active(p)).collect();
    let ready = active.iter().filter(|p| pod_is_ready(p)).count() as i32;
    let updated = active
        .iter()
        .filter(|p| revision_label(p) == Some(update_revision.as_str()))
        .count() as i32;
    let status = serde_json::json!({"status": {
        "observedGeneration": ss.metadata.generation, "replicas": active.len(), "readyReplicas": ready,
        "availableReplicas": ready, "currentReplicas": updated, "updatedReplicas": updated,
        "currentRevision": update_revision, "updateRevision": update_revision,
    }});
    let current = serde_json::to_value(&ss.status).unwrap_or_default();
    let changed = [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "updateRevision",
    ]
    .iter()
    .any(|f| current.get(*f).cloned().unwrap_or_default() != status["status"][*f]);
    if changed {
        let ssapi: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &key.0);
        ssapi
            .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    Ok(())
}

pub(crate) async fn run_daemonsets(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    for key in ctx.caches.daemonsets.keys() {
        ctx.queues.daemonsets.add(key);
    }
    // (daemonset, node) → when a pod was created there and not yet seen.
    let in_flight: Arc<Mutex<HashMap<(Key, String), Instant>>> = Default::default();
    let queue = ctx.queues.daemonsets.clone();
    crate::context::drive_with_retry(queue, ctx.options.concurrent_writes, "daemonset", |key| {
        let ctx = ctx.clone();
        let in_flight = in_flight.clone();
        async move { sync_daemonset(&ctx, &key, &in_flight).await.map(|()| None) }
    })
    .await;
}

async fn sync_daemonset(
    ctx: &Ctx,
    key: &Key,
    in_flight: &Mutex<HashMap<(Key, String), Instant>>,
) -> Result<(), kube::Error> {
    let Some(ds) = ctx.caches.daemonsets.get(&key.0, &key.1) else {
        return Ok(());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let pods = owned(ctx, &key.0, &uid);
    let nodes = ctx.caches.nodes.list();
    let (create, delete) = daemonset_step(&ds, &nodes, &pods);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    for node in create {
        {
            let mut f = in_flight.lock();
            let now = Instant::now();
            f.retain(|_, t| now.duration_since(*t) < Duration::from_secs(30));
            if f.contains_key(&(key.clone(), node.clone())) {
                continue;
            }
            f.insert((key.clone(), node.clone()), now);
        }
        if let Err(e) = api
            .create(&PostParams::default(), &daemonset_pod(&ds, &node))
            .await
        {
            in_flight.lock().remove(&(key.clone(), node));
            return Err(e);
        }
    }
    // Pods the cache shows are no longer in flight.
    {
        let mut f = in_flight.lock();
        for p in &pods {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                f.remove(&(key.clone(), n));
            }
        }
    }
    for name in delete {
        delete_pod(&api, &name).await?;
    }
    let template = ds.spec.clone().unwrap_or_default().template;
    let revision = revision_hash(&key.1, &template);
    let desired = nodes.iter().filter(|n| daemon_fits(&template, n)).count();
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| pod_is_active(p)).collect();
    let ready = active.iter().filter(|p| pod_is_ready(p)).count();
    let updated = active
        .iter()
        .filter(|p| revision_label(p) == Some(revision.as_str()))
        .count();
    let status = k8s_openapi::api::apps::v1::DaemonSetStatus {
        desired_number_scheduled: desired as i32,
        current_number_scheduled: active.len() as i32,
        number_ready: ready as i32,
        number_available: Some(ready as i32),
        number_unavailable: Some(desired.saturating_sub(ready) as i32),
        updated_number_scheduled: Some(updated as i32),
        number_misscheduled: 0,
        observed_generation: ds.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let dsapi: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &key.0);
        dsapi
            .patch_status(
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

    fn ss(replicas: i32, policy: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "ss"},
            "spec": {"replicas": replicas, "serviceName": "nginx", "podManagementPolicy": policy,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}},
        }))
        .unwrap()
    }

    fn ready(mut p: Pod, ready: bool) -> Arc<Pod> {
        p.status = Some(serde_json::from_value(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]})).unwrap());
        Arc::new(p)
    }

    #[test]
    fn statefulset_creates_in_order_and_waits_for_ready() {
        let s = ss(3, "OrderedReady");
        assert_eq!(statefulset_step(&s, &[]), vec![SetStep::Create(0)]);
        let p0 = statefulset_pod(&s, 0);
        assert_eq!(p0.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(p0.spec.as_ref().unwrap().hostname.as_deref(), Some("web-0"));
        assert_eq!(
            p0.spec.as_ref().unwrap().subdomain.as_deref(),
            Some("nginx")
        );
        assert_eq!(
            statefulset_step(&s, &[ready(p0.clone(), false)]),
            vec![SetStep::Wait]
        );
        assert_eq!(
            statefulset_step(&s, &[ready(p0.clone(), true)]),
            vec![SetStep::Create(1)]
        );
        let all: Vec<Arc<Pod>> = (0..3)
            .map(|i| ready(statefulset_pod(&s, i), true))
            .collect();
        assert_eq!(statefulset_step(&s, &all), vec![SetStep::Done]);
        // Scale down removes the highest ordinal first.
        assert_eq!(
            statefulset_step(&ss(1, "OrderedReady"), &all),
            vec![SetStep::Delete("web-2".into())]
        );
        // Parallel creates everything at once.
        assert_eq!(
            statefulset_step(&ss(3, "Parallel"), &[]),
            vec![SetStep::Create(0), SetStep::Create(1), SetStep::Create(2)]
        );
    }

    #[test]
    fn daemonset_one_pod_per_fitting_node() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c"}]}}},
        }))
        .unwrap();
        let node = |name: &str, taint: Option<&str>| -> Arc<Node> {
            let mut v = json!({"metadata": {"name": name}, "spec": {}});
            if let Some(t) = taint {
                v["spec"]["taints"] = json!([{"key": t, "effect": "NoSchedule"}]);
            }
            Arc::new(serde_json::from_value(v).unwrap())
        };
        let nodes = vec![
            node("n1", None),
            node("n2", Some("node.kubernetes.io/not-ready")),
            node("n3", Some("dedicated")),
        ];
        let on_n1 = Arc::new(daemonset_pod(&ds, "n1"));
        let mut dup: Pod = daemonset_pod(&ds, "n1");
        dup.metadata.name = Some("agent-dup".into());
        dup.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2030-01-01T00:00:00Z".parse().unwrap(),
            ));
        let mut on_n3 = daemonset_pod(&ds, "n3");
        on_n3.metadata.name = Some("agent-n3".into());
        let (create, delete) = daemonset_step(
            &ds,
            &nodes,
            &[on_n1.clone(), Arc::new(dup), Arc::new(on_n3)],
        );
        assert_eq!(create, vec!["n2".to_string()]);
        let mut delete = delete;
        delete.sort();
        assert_eq!(
            delete,
            vec!["agent-dup".to_string(), "agent-n3".to_string()]
        );
        assert_eq!(
            on_n1.spec.as_ref().unwrap().node_name.as_deref(),
            Some("n1")
        );
    }
}
