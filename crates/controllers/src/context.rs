//! What every controller shares: the watch-fed caches (one per kind), the work queues (one per controller),
//! their per-controller state, and the loops that drive a queue. The wiring that fills them is in `lib.rs`.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;

use crate::informer::{self, Cache};
use crate::queue::WorkQueue;
use crate::Options;

#[derive(Default)]
pub struct Caches {
    pub pods: Arc<Cache<Pod>>,
    pub services: Arc<Cache<Service>>,
    pub nodes: Arc<Cache<Node>>,
    pub slices: Arc<Cache<EndpointSlice>>,
    pub endpoints: Arc<Cache<Endpoints>>,
    pub leases: Arc<Cache<Lease>>,
    pub replicasets: Arc<Cache<ReplicaSet>>,
    pub deployments: Arc<Cache<Deployment>>,
    pub statefulsets: Arc<Cache<StatefulSet>>,
    pub daemonsets: Arc<Cache<DaemonSet>>,
}

impl Caches {
    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.services.wait_synced().await;
        self.nodes.wait_synced().await;
        self.slices.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.leases.wait_synced().await;
        self.replicasets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.statefulsets.wait_synced().await;
        self.daemonsets.wait_synced().await;
    }
}

pub struct Queues {
    pub endpoints: Arc<WorkQueue>,
    pub scheduler: Arc<WorkQueue>,
    pub replicasets: Arc<WorkQueue>,
    pub deployments: Arc<WorkQueue>,
    pub nodes: Arc<WorkQueue>,
    pub loadbalancers: Arc<WorkQueue>,
    pub statefulsets: Arc<WorkQueue>,
    pub daemonsets: Arc<WorkQueue>,
    pub gc: Arc<WorkQueue>,
}

impl Default for Queues {
    fn default() -> Self {
        Queues {
            endpoints: WorkQueue::new(),
            scheduler: WorkQueue::new(),
            replicasets: WorkQueue::new(),
            deployments: WorkQueue::new(),
            nodes: WorkQueue::new(),
            loadbalancers: WorkQueue::new(),
            statefulsets: WorkQueue::new(),
            daemonsets: WorkQueue::new(),
            gc: WorkQueue::new(),
        }
    }
}

pub struct Ctx {
    pub client: Client,
    pub options: Options,
    pub caches: Caches,
    pub queues: Queues,
    pub endpoints: crate::endpoints::State,
    pub scheduler: crate::scheduler::State,
    pub replicasets: crate::replicaset::State,
}

/// Runs `reconcile` for every key a queue yields, up to `concurrency` keys at once. A batch is
/// processed before the next is taken, so one key is never reconciled twice concurrently.
pub(crate) async fn drive<F, Fut>(queue: Arc<WorkQueue>, concurrency: usize, reconcile: F)
where
    F: Fn(informer::Key) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    loop {
        let batch = queue.next_batch().await;
        futures::stream::iter(batch)
            .for_each_concurrent(concurrency.max(1), &reconcile)
            .await;
    }
}

/// [`drive`] for a keyed controller whose reconcile may ask to look at its key again after a delay
/// (`Ok(Some(after))`); a failed reconcile is logged and retried after 500 ms.
pub(crate) async fn drive_with_retry<F, Fut>(
    queue: Arc<WorkQueue>,
    concurrency: usize,
    kind: &'static str,
    reconcile: F,
) where
    F: Fn(informer::Key) -> Fut,
    Fut: std::future::Future<Output = Result<Option<std::time::Duration>, kube::Error>>,
{
    drive(queue.clone(), concurrency, |key| {
        let queue = queue.clone();
        let sync = reconcile(key.clone());
        async move {
            match sync.await {
                Ok(Some(after)) => queue.add_after(key, after),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(namespace = %key.0, name = %key.1, kind, %error, "sync failed; retrying");
                    queue.add_after(key, std::time::Duration::from_millis(500));
                }
            }
        }
    })
    .await;
}
