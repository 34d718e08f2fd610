//! Node IPAM: gives every Node a pod CIDR from the cluster CIDR (`spec.podCIDR` / `spec.podCIDRs`),
//! never the same one twice. The used set is derived from all Nodes once the cache is synced, plus the
//! allocations in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use parking_lot::Mutex;

use crate::context::Ctx;

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first `/mask` subnet of `cluster` that overlaps none of `taken`.
pub fn allocate_pod_cidr(cluster: &IpNet, mask: u8, taken: &BTreeSet<IpNet>) -> Option<IpNet> {
    let subnets = cluster.subnets(mask).ok()?;
    subnets
        .into_iter()
        .find(|candidate| !taken.iter().any(|t| overlaps(candidate, t)))
}

/// The pod CIDRs a Node already holds.
pub fn node_pod_cidrs(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<IpNet> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    if let Some(c) = spec
        .and_then(|s| s.pod_cidr.as_ref())
        .and_then(|c| c.parse().ok())
    {
        if !cidrs.contains(&c) {
            cidrs.push(c);
        }
    }
    cidrs
}

pub(crate) async fn run(ctx: Arc<Ctx>) {
    ctx.caches.nodes.wait_synced().await;
    // node name → CIDR given but maybe not yet visible in the cache.
    let in_flight: Mutex<HashMap<String, IpNet>> = Mutex::new(HashMap::new());
    let queue = ctx.queues.nodes.clone();
    for key in ctx.caches.nodes.keys() {
        queue.add(key);
    }
    // The node queue is shared with the lifecycle controller, which runs on its own timer; IPAM
    // consumes the keys.
    loop {
        let batch = queue.next_batch().await;
        for (_, name) in batch {
            let Some(node) = ctx.caches.nodes.get("", &name) else {
                in_flight.lock().remove(&name);
                continue;
            };
            if !node_pod_cidrs(&node).is_empty() {
                in_flight.lock().remove(&name);
                continue;
            }
            if in_flight.lock().contains_key(&name) {
                continue;
            }
            let mut taken: BTreeSet<IpNet> = ctx
                .caches
                .nodes
                .list()
                .iter()
                .flat_map(|n| node_pod_cidrs(n))
                .collect();
            taken.extend(in_flight.lock().values().copied());
            let Some(cidr) = allocate_pod_cidr(
                &ctx.options.cluster_cidr,
                ctx.options.node_cidr_mask_size,
                &taken,
            ) else {
                crate::events::record(
                    &ctx.client,
                    "node-ipam-controller",
                    crate::events::reference_to(node.as_ref()),
                    "Warning",
                    "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable"),
                );
                queue.add_after(("".into(), name), Duration::from_secs(30));
                continue;
            };
            in_flight.lock().insert(name.clone(), cidr);
            let api: Api<Node> = Api::all(ctx.client.clone());
            let patch = serde_json::json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, %cidr, "assigned pod CIDR");
                }
                Err(error) => {
                    tracing::warn!(node = %name, %error, "assigning pod CIDR failed; retrying");
                    in_flight.lock().remove(&name);
                    queue.add_after(("".into(), name), Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_free_subnet_and_skips_overlaps() {
        let cluster: IpNet = "10.244.0.0/16".parse().unwrap();
        let mut taken = BTreeSet::new();
        let a = allocate_pod_cidr(&cluster, 24, &taken).unwrap();
        assert_eq!(a.to_string(), "10.244.0.0/24");
        taken.insert(a);
        // A node that came with a bigger CIDR covering .1 and .2 (and .3).
        taken.insert("10.244.2.0/23".parse().unwrap());
        taken.insert("10.244.1.0/24".parse().unwrap());
        assert_eq!(
            allocate_pod_cidr(&cluster, 24, &taken).unwrap().to_string(),
            "10.244.4.0/24"
        );
        let tiny: IpNet = "10.0.0.0/23".parse().unwrap();
        let full: BTreeSet<IpNet> = ["10.0.0.0/24", "10.0.1.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(allocate_pod_cidr(&tiny, 24, &full), None);
    }
}
