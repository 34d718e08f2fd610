//! Wiring: one watch-fed cache per kind, one work queue per controller, and the handlers that turn a
//! cache change into the keys each controller must look at again.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use tokio::task::JoinSet;

use crate::informer::{self, Cache};
use crate::queue::WorkQueue;
use crate::{Error, Options};

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

pub(crate) async fn run(client: Client, options: Options) -> Result<(), Error> {
    let pool = crate::loadbalancer::Pool::parse(&options.load_balancer_pool)
        .map_err(Error::InvalidOption)?;
    if options.node_cidr_mask_size < options.cluster_cidr.prefix_len()
        || options.node_cidr_mask_size > options.cluster_cidr.max_prefix_len()
    {
        return Err(Error::InvalidOption(format!(
            "--node-cidr-mask-size {} does not fit --cluster-cidr {}",
            options.node_cidr_mask_size, options.cluster_cidr
        )));
    }
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        options,
        caches: Caches::default(),
        queues: Queues::default(),
        endpoints: Default::default(),
        scheduler: Default::default(),
        replicasets: Default::default(),
    });
    let mut tasks = JoinSet::new();

    macro_rules! inform {
        ($api:expr, $cache:ident, $handler:path) => {{
            let c = ctx.clone();
            tasks.spawn(informer::run(
                $api,
                ctx.caches.$cache.clone(),
                Box::new(move |old, new| $handler(&c, old, new)),
            ));
        }};
    }
    inform!(Api::<Pod>::all(client.clone()), pods, on_pod);
    inform!(Api::<Service>::all(client.clone()), services, on_service);
    inform!(Api::<Node>::all(client.clone()), nodes, on_node);
    inform!(
        Api::<EndpointSlice>::all(client.clone()),
        slices,
        crate::endpoints::on_slice
    );
    inform!(
        Api::<Endpoints>::all(client.clone()),
        endpoints,
        on_endpoints
    );
    inform!(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        leases,
        on_lease
    );
    inform!(
        Api::<ReplicaSet>::all(client.clone()),
        replicasets,
        on_replicaset
    );
    inform!(
        Api::<Deployment>::all(client.clone()),
        deployments,
        on_deployment
    );
    inform!(
        Api::<StatefulSet>::all(client.clone()),
        statefulsets,
        on_statefulset
    );
    inform!(
        Api::<DaemonSet>::all(client.clone()),
        daemonsets,
        on_daemonset
    );

    tasks.spawn(crate::endpoints::run(ctx.clone()));
    tasks.spawn(crate::scheduler::run(ctx.clone()));
    tasks.spawn(crate::replicaset::run(ctx.clone()));
    tasks.spawn(crate::deployment::run(ctx.clone()));
    tasks.spawn(crate::ipam::run(ctx.clone()));
    tasks.spawn(crate::nodelifecycle::run(ctx.clone()));
    tasks.spawn(crate::loadbalancer::run(ctx.clone(), pool));
    tasks.spawn(crate::workloads::run_statefulsets(ctx.clone()));
    tasks.spawn(crate::workloads::run_daemonsets(ctx.clone()));
    tasks.spawn(crate::gc::run(ctx.clone()));

    let result = tasks.join_next().await;
    tasks.abort_all();
    match result {
        Some(Ok(())) | None => Err(Error::Task("a controller stopped".to_string())),
        Some(Err(e)) => Err(Error::Task(e.to_string())),
    }
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

fn on_pod(ctx: &Arc<Ctx>, old: Option<&Pod>, new: Option<&Pod>) {
    crate::endpoints::on_pod(ctx, old, new);
    crate::scheduler::on_pod(ctx, old, new);
    crate::replicaset::on_pod(ctx, old, new);
    crate::workloads::on_pod(ctx, old, new);
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}

fn on_service(ctx: &Arc<Ctx>, old: Option<&Service>, new: Option<&Service>) {
    if let Some(svc) = new.or(old) {
        let key = informer::key_of(svc);
        ctx.queues.endpoints.add(key.clone());
        ctx.queues.loadbalancers.add(key);
    }
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}

fn on_endpoints(ctx: &Arc<Ctx>, old: Option<&Endpoints>, new: Option<&Endpoints>) {
    if let Some(ep) = new.or(old) {
        ctx.queues.endpoints.add(informer::key_of(ep));
    }
}

fn on_node(ctx: &Arc<Ctx>, old: Option<&Node>, new: Option<&Node>) {
    if let Some(node) = new.or(old) {
        ctx.queues.nodes.add(informer::key_of(node));
    }
    crate::scheduler::on_node(ctx, old, new);
    crate::loadbalancer::on_node(ctx, old, new);
    crate::workloads::on_node(ctx, old, new);
}

fn on_lease(ctx: &Arc<Ctx>, _old: Option<&Lease>, new: Option<&Lease>) {
    // A renewed lease may bring a NotReady node back; the lifecycle controller decides.
    if let Some(lease) = new {
        if let Some(name) = lease.metadata.name.as_deref() {
            ctx.queues.nodes.add_ns_name("", name);
        }
    }
}

fn on_replicaset(ctx: &Arc<Ctx>, old: Option<&ReplicaSet>, new: Option<&ReplicaSet>) {
    if let Some(rs) = new.or(old) {
        ctx.queues.replicasets.add(informer::key_of(rs));
        for owner in crate::controller_owner(&rs.metadata).filter(|o| o.kind == "Deployment") {
            ctx.queues.deployments.add_ns_name(
                rs.metadata.namespace.as_deref().unwrap_or_default(),
                &owner.name,
            );
        }
    }
    if new.is_none() {
        if let Some(rs) = old {
            ctx.replicasets.forget(&informer::key_of(rs));
        }
    }
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}

fn on_deployment(ctx: &Arc<Ctx>, old: Option<&Deployment>, new: Option<&Deployment>) {
    if let Some(d) = new.or(old) {
        ctx.queues.deployments.add(informer::key_of(d));
    }
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}

fn on_statefulset(ctx: &Arc<Ctx>, old: Option<&StatefulSet>, new: Option<&StatefulSet>) {
    if let Some(s) = new.or(old) {
        ctx.queues.statefulsets.add(informer::key_of(s));
    }
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}

fn on_daemonset(ctx: &Arc<Ctx>, old: Option<&DaemonSet>, new: Option<&DaemonSet>) {
    if let Some(s) = new.or(old) {
        ctx.queues.daemonsets.add(informer::key_of(s));
    }
    crate::gc::on_object(ctx, old.map(|p| &p.metadata), new.map(|p| &p.metadata));
}
