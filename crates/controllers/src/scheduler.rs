//! The scheduler: binds pods without `spec.nodeName` to a Ready, schedulable node that fits them,
//! spreading the replicas of one owner across nodes.
//!
//! [`pick_node`] is pure: it filters nodes (Ready, unschedulable, nodeSelector, taints vs
//! tolerations, cpu / memory / pod count vs allocatable) and scores the rest (fewest pods of the same
//! owner, then fewest pods, then name). The shell takes a snapshot of node usage per batch of pending
//! pods, decides them one after another (so a burst of 1,000 pods spreads evenly), then binds them
//! concurrently through the `pods/binding` subresource.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;
use crate::informer::Key;

pub const SCHEDULER_NAME: &str = "default-scheduler";

fn quantity(map: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<i128> {
    map.and_then(|m| m.get(name))
        .and_then(|q| skiff_runtime::quantity::parse_milli(&q.0))
}

/// What a pod asks for: (cpu milli-cores, memory milli-bytes), upstream's effective request
/// (sum of containers, or the largest init container if larger).
pub fn pod_requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let req = |c: &k8s_openapi::api::core::v1::Container, name: &str| {
        quantity(c.resources.as_ref().and_then(|r| r.requests.as_ref()), name).unwrap_or(0)
    };
    let mut cpu: i128 = spec.containers.iter().map(|c| req(c, "cpu")).sum();
    let mut mem: i128 = spec.containers.iter().map(|c| req(c, "memory")).sum();
    for c in spec.init_containers.iter().flatten() {
        cpu = cpu.max(req(c, "cpu"));
        mem = mem.max(req(c, "memory"));
    }
    (cpu, mem)
}

/// Aggregate use of one node by the pods bound (or assumed bound) to it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeUsage {
    pub pods: usize,
    pub cpu_milli: i128,
    pub memory_milli: i128,
    /// owner uid → pods of that owner on the node.
    pub by_owner: HashMap<String, usize>,
}

impl NodeUsage {
    pub fn add(&mut self, pod: &Pod) {
        let (cpu, mem) = pod_requests(pod);
        self.pods += 1;
        self.cpu_milli += cpu;
        self.memory_milli += mem;
        if let Some(owner) = owner_uid(pod) {
            *self.by_owner.entry(owner).or_default() += 1;
        }
    }
}

fn owner_uid(pod: &Pod) -> Option<String> {
    crate::controller_owner(&pod.metadata)
        .next()
        .map(|o| o.uid.clone())
}

pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// Why a node cannot take a pod, in upstream's wording (counted per reason in the message).
fn filter(pod: &Pod, node: &Node, usage: Option<&NodeUsage>) -> Result<(), String> {
    let spec = pod.spec.as_ref();
    let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&tolerations, &taint) {
            return Err("node(s) were unschedulable".to_string());
        }
    }
    if !node_is_ready(node) {
        let taint = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerates(&tolerations, &taint) {
            return Err(
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_string(),
            );
        }
    }
    if let Some(selector) = spec.and_then(|s| s.node_selector.as_ref()) {
        if !crate::endpoints::selector_matches(selector, node.metadata.labels.as_ref()) {
            return Err("node(s) didn't match Pod's node affinity/selector".to_string());
        }
    }
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if taint.effect == "PreferNoSchedule" {
            continue;
        }
        if !tolerates(&tolerations, taint) {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    let empty = NodeUsage::default();
    let usage = usage.unwrap_or(&empty);
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    if let Some(max_pods) = quantity(allocatable, "pods") {
        if (usage.pods as i128 + 1) * 1000 > max_pods {
            return Err("Too many pods".to_string());
        }
    }
    let (cpu, mem) = pod_requests(pod);
    if let Some(cap) = quantity(allocatable, "cpu") {
        if cpu > 0 && usage.cpu_milli + cpu > cap {
            return Err("Insufficient cpu".to_string());
        }
    }
    if let Some(cap) = quantity(allocatable, "memory") {
        if mem > 0 && usage.memory_milli + mem > cap {
            return Err("Insufficient memory".to_string());
        }
    }
    Ok(())
}

/// Chooses the node for `pod`, or says why none fits (the FailedScheduling message).
pub fn pick_node(
    pod: &Pod,
    nodes: &[Arc<Node>],
    usage: &HashMap<String, NodeUsage>,
) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".to_string());
    }
    let owner = owner_uid(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<((usize, usize, String), String)> = None;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let u = usage.get(&name);
        match filter(pod, node, u) {
            Err(reason) => *reasons.entry(reason).or_default() += 1,
            Ok(()) => {
                let same_owner = owner
                    .as_ref()
                    .and_then(|o| u.and_then(|u| u.by_owner.get(o)))
                    .copied()
                    .unwrap_or(0);
                let score = (same_owner, u.map(|u| u.pods).unwrap_or(0), name.clone());
                if best.as_ref().is_none_or(|(b, _)| score < *b) {
                    best = Some((score, name));
                }
            }
        }
    }
    match best {
        Some((_, name)) => Ok(name),
        None => {
            let n = nodes.len();
            let parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            Err(format!(
                "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling.",
                parts.join(", ")
            ))
        }
    }
}

/// Whether this scheduler should place the pod.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded") | Some("Failed"))
        && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
}

// ---------------------------------------------------------------------------------------------
// I/O shell

#[derive(Default)]
pub struct State {
    /// Pods bound by us that the cache does not show bound yet: pod key → (node, pod).
    assumed: Mutex<HashMap<Key, (String, Arc<Pod>)>>,
    /// Last FailedScheduling message per pod, so a pod that stays unschedulable is not re-reported.
    last_failure: Mutex<HashMap<Key, String>>,
    started: AtomicBool,
}

pub(crate) fn on_pod(ctx: &Arc<Ctx>, old: Option<&Pod>, new: Option<&Pod>) {
    match new {
        Some(pod) if needs_scheduling(pod) => {
            ctx.queues.scheduler.add(crate::informer::key_of(pod));
        }
        Some(pod) => {
            let key = crate::informer::key_of(pod);
            if !pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("")
                .is_empty()
            {
                ctx.scheduler.assumed.lock().remove(&key);
                ctx.scheduler.last_failure.lock().remove(&key);
            }
        }
        None => {
            if let Some(pod) = old {
                let key = crate::informer::key_of(pod);
                ctx.scheduler.assumed.lock().remove(&key);
                ctx.scheduler.last_failure.lock().remove(&key);
                // Freed capacity may fit a pending pod.
                if ctx.scheduler.started.load(Ordering::Acquire)
                    && !ctx.scheduler.last_failure.lock().is_empty()
                {
                    enqueue_pending(ctx);
                }
            }
        }
    }
}

pub(crate) fn on_node(ctx: &Arc<Ctx>, old: Option<&Node>, new: Option<&Node>) {
    if new.is_some() && ctx.scheduler.started.load(Ordering::Acquire) {
        let changed = match (old, new) {
            (Some(o), Some(n)) => {
                o.spec != n.spec
                    || node_is_ready(o) != node_is_ready(n)
                    || o.metadata.labels != n.metadata.labels
                    || o.status.as_ref().map(|s| &s.allocatable)
                        != n.status.as_ref().map(|s| &s.allocatable)
            }
            _ => true,
        };
        if changed {
            enqueue_pending(ctx);
        }
    }
}

fn enqueue_pending(ctx: &Ctx) {
    for key in ctx.scheduler.last_failure.lock().keys() {
        ctx.queues.scheduler.add(key.clone());
    }
}

fn usage_snapshot(ctx: &Ctx) -> HashMap<String, NodeUsage> {
    let mut usage: HashMap<String, NodeUsage> = HashMap::new();
    let assumed = ctx.scheduler.assumed.lock().clone();
    for pod in ctx.caches.pods.list() {
        let key = crate::informer::key_of(pod.as_ref());
        if assumed.contains_key(&key) {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        if let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            usage.entry(node.to_string()).or_default().add(&pod);
        }
    }
    for (node, pod) in assumed.values() {
        usage.entry(node.clone()).or_default().add(pod);
    }
    usage
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    ctx.scheduler.started.store(true, Ordering::Release);
    for pod in ctx.caches.pods.list() {
        if needs_scheduling(&pod) {
            ctx.queues
                .scheduler
                .add(crate::informer::key_of(pod.as_ref()));
        }
    }
    let queue = ctx.queues.scheduler.clone();
    loop {
        let batch = queue.next_batch().await;
        let nodes = ctx.caches.nodes.list();
        let mut usage = usage_snapshot(&ctx);
        let mut decisions = vec![];
        for key in batch {
            let Some(pod) = ctx.caches.pods.get(&key.0, &key.1) else {
                continue;
            };
            if !needs_scheduling(&pod) || ctx.scheduler.assumed.lock().contains_key(&key) {
                continue;
            }
            match pick_node(&pod, &nodes, &usage) {
                Ok(node) => {
                    usage.entry(node.clone()).or_default().add(&pod);
                    ctx.scheduler
                        .assumed
                        .lock()
                        .insert(key.clone(), (node.clone(), pod.clone()));
                    decisions.push((key, pod, Ok(node)));
                }
                Err(message) => decisions.push((key, pod, Err(message))),
            }
        }
        use futures::StreamExt;
        futures::stream::iter(decisions)
            .for_each_concurrent(ctx.options.concurrent_writes.max(1), |(key, pod, decision)| {
                let ctx = ctx.clone();
                let queue = queue.clone();
                async move {
                    match decision {
                        Ok(node) => {
                            if let Err(error) = bind(&ctx, &pod, &node).await {
                                tracing::warn!(namespace = %key.0, pod = %key.1, %node, %error, "binding failed");
                                ctx.scheduler.assumed.lock().remove(&key);
                                if !matches!(&error, kube::Error::Api(s) if s.code == 404) {
                                    queue.add_after(key, Duration::from_millis(500));
                                }
                            }
                        }
                        Err(message) => {
                            unschedulable(&ctx, &key, &pod, message).await;
                            // Retried on node changes and pod deletions, and periodically.
                            queue.add_after(key, Duration::from_secs(10));
                        }
                    }
                }
            })
            .await;
    }
}

async fn bind(ctx: &Ctx, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Node".to_string()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await?;
    tracing::debug!(%namespace, pod = %name, %node, "bound");
    // A pod we reported unschedulable carries PodScheduled=False; say it is scheduled now.
    let was_unschedulable = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
    if was_unschedulable {
        let now = jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"status": {"conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
        ]}});
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            tracing::debug!(%error, "could not set PodScheduled=True");
        }
    }
    crate::events::record(
        &ctx.client,
        SCHEDULER_NAME,
        crate::events::reference_to(pod),
        "Normal",
        "Scheduled",
        format!("Successfully assigned {namespace}/{name} to {node}"),
    );
    Ok(())
}

async fn unschedulable(ctx: &Ctx, key: &Key, pod: &Pod, message: String) {
    {
        let mut last = ctx.scheduler.last_failure.lock();
        if last.get(key) == Some(&message) {
            return;
        }
        last.insert(key.clone(), message.clone());
    }
    tracing::info!(namespace = %key.0, pod = %key.1, %message, "pod unschedulable");
    crate::events::record(
        &ctx.client,
        SCHEDULER_NAME,
        crate::events::reference_to(pod),
        "Warning",
        "FailedScheduling",
        message.clone(),
    );
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now,
        }]}
    });
    if let Err(error) = api
        .patch_status(&key.1, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(%error, "could not set PodScheduled=False");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}},
        });
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(name: &str, owner: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}]},
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn replicas_spread_across_nodes() {
        let nodes = vec![
            node("node-1", json!({})),
            node("node-2", json!({})),
            node("node-3", json!({})),
        ];
        let mut usage = HashMap::new();
        // node-1 is busy with other pods, yet spreading the owner's pods comes first.
        for i in 0..5 {
            usage
                .entry("node-1".to_string())
                .or_insert_with(NodeUsage::default)
                .add(&pod(
                    &format!("o{i}"),
                    "other",
                    json!({"spec": {"containers": [{"name": "c"}]}}),
                ));
        }
        let mut placed = vec![];
        for i in 0..6 {
            let p = pod(&format!("web-{i}"), "rs-1", json!({}));
            let n = pick_node(&p, &nodes, &usage).unwrap();
            usage.entry(n.clone()).or_default().add(&p);
            placed.push(n);
        }
        assert_eq!(
            placed,
            vec!["node-2", "node-3", "node-1", "node-2", "node-3", "node-1"]
        );
    }

    #[test]
    fn filters_explain_why_nothing_fits() {
        let nodes = vec![
            node("node-1", json!({"spec": {"unschedulable": true}})),
            node(
                "node-2",
                json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            ),
            node(
                "node-3",
                json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            ),
            node(
                "node-4",
                json!({"status": {"allocatable": {"cpu": "250m"}}}),
            ),
            node("node-5", json!({"metadata": {"labels": {"disk": "hdd"}}})),
        ];
        let p = pod(
            "web",
            "rs",
            json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
        );
        let usage = HashMap::new();
        // node-4 and node-5 fail the selector first (it is checked before taints and resources).
        assert_eq!(
            pick_node(&p, &nodes, &usage),
            Err("0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable. preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling.".to_string())
        );
        let p = pod("web", "rs", json!({}));
        assert_eq!(
            pick_node(&p, &nodes[3..4], &usage),
            Err("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.".to_string())
        );
        // A toleration opens the tainted node.
        let p = pod(
            "web",
            "rs",
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(pick_node(&p, &nodes, &usage), Ok("node-3".to_string()));
        assert_eq!(
            pick_node(&p, &[], &usage),
            Err("no nodes available to schedule pods".to_string())
        );
    }

    #[test]
    fn memory_and_pod_count_limits() {
        let nodes = vec![node(
            "node-1",
            json!({"status": {"allocatable": {"memory": "100Mi", "pods": "2"}}}),
        )];
        let mut usage = HashMap::new();
        let p = pod("a", "rs", json!({}));
        assert_eq!(pick_node(&p, &nodes, &usage), Ok("node-1".to_string()));
        usage
            .entry("node-1".to_string())
            .or_insert_with(NodeUsage::default)
            .add(&p);
        assert!(pick_node(&p, &nodes, &usage)
            .unwrap_err()
            .contains("1 Insufficient memory"));
        let small = pod(
            "b",
            "rs",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "1Mi"}}}]}}),
        );
        usage.entry("node-1".to_string()).or_default().add(&small);
        assert!(pick_node(&small, &nodes, &usage)
            .unwrap_err()
            .contains("1 Too many pods"));
    }
}
