//! Node lifecycle: a Node whose heartbeat (its Lease in `kube-node-lease`, else the Ready condition's
//! lastHeartbeatTime) is older than the grace period gets Ready=Unknown and the `unreachable` taint,
//! and the pods on it are marked not Ready so that their endpoints leave the Services' slices.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::Api;

use crate::context::Ctx;

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The node's last heartbeat.
pub fn last_heartbeat(
    node: &Node,
    lease_renew: Option<jiff::Timestamp>,
) -> Option<jiff::Timestamp> {
    let cond = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    match (lease_renew, cond) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
}

/// Whether the node must be marked unreachable now.
pub fn is_stale(
    node: &Node,
    lease_renew: Option<jiff::Timestamp>,
    grace: Duration,
    now: jiff::Timestamp,
) -> bool {
    match last_heartbeat(node, lease_renew) {
        None => false,
        Some(t) => now.duration_since(t).unsigned_abs() > grace && t < now,
    }
}

fn has_unreachable_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == TAINT_UNREACHABLE))
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.wait_synced().await;
    let period = (ctx.options.node_monitor_grace_period / 8)
        .clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::time::sleep(period).await;
        for node in ctx.caches.nodes.list() {
            if let Err(error) = check(&ctx, &node).await {
                tracing::warn!(node = ?node.metadata.name, %error, "node lifecycle check failed");
            }
        }
    }
}

async fn check(ctx: &Ctx, node: &Node) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let lease = ctx
        .caches
        .leases
        .get("kube-node-lease", &name)
        .and_then(|l| {
            l.spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref().map(|t| t.0))
        });
    let now = jiff::Timestamp::now();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let stale = is_stale(node, lease, ctx.options.node_monitor_grace_period, now);
    let ready = ready_status(node);
    if stale {
        if ready.as_deref() != Some("Unknown") {
            let conditions: Vec<serde_json::Value> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now.to_string(),
                    })
                })
                .collect();
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(serde_json::json!({"status": {"conditions": conditions}})),
            )
            .await?;
            tracing::info!(node = %name, "node stopped posting status; marked NotReady");
            crate::events::record(
                &ctx.client,
                "node-controller",
                crate::events::reference_to(node),
                "Normal",
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        if !has_unreachable_taint(node) {
            let mut taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            taints.push(k8s_openapi::api::core::v1::Taint {
                key: TAINT_UNREACHABLE.into(),
                effect: "NoSchedule".into(),
                time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
                value: None,
            });
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
            )
            .await?;
        }
        // Pods there are not Ready any more (also ones a stale agent reports Ready later).
        for pod in ctx.caches.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
                || !crate::endpoints::pod_is_ready(&pod)
            {
                continue;
            }
            mark_pod_not_ready(ctx, &pod, now).await?;
        }
    } else if has_unreachable_taint(node) && ready.as_deref() == Some("True") {
        // The agent is back and says Ready: lift the taint.
        let taints: Vec<_> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != TAINT_UNREACHABLE)
            .collect();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
        )
        .await?;
    }
    Ok(())
}

async fn mark_pod_not_ready(ctx: &Ctx, pod: &Pod, now: jiff::Timestamp) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "lastTransitionTime": now.to_string(), "reason": "NodeNotReady"},
    ]}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stale_after_grace_using_the_newest_heartbeat() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let grace = Duration::from_secs(40);
        let t = |s: &str| -> jiff::Timestamp { s.parse().unwrap() };
        assert!(!is_stale(&node, None, grace, t("2026-01-01T00:00:39Z")));
        assert!(is_stale(&node, None, grace, t("2026-01-01T00:00:41Z")));
        // A renewed lease keeps it fresh.
        assert!(!is_stale(
            &node,
            Some(t("2026-01-01T00:00:30Z")),
            grace,
            t("2026-01-01T00:01:00Z")
        ));
        let silent: Node = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(!is_stale(&silent, None, grace, t("2030-01-01T00:00:00Z")));
    }
}
