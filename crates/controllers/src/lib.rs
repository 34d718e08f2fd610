//! Skiff's kube-controller-manager and kube-scheduler: scheduler, ReplicaSet, Deployment, StatefulSet,
//! DaemonSet, Endpoints + EndpointSlices (+ mirroring), node IPAM and lifecycle, LoadBalancer pool and
//! garbage collector.
//!
//! Every controller talks to the API only through kube-rs: watch-fed caches ([`informer`]) feed
//! deduplicating work queues ([`queue`]); each reconcile computes the desired state with a pure function
//! (unit-tested in its module) and writes the difference through the API. Because the caches resume
//! watches from their resourceVersion and relists are diffed, controllers survive API server restarts;
//! the ReplicaSet controller keeps expectations so it never creates a pod twice.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod context;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod informer;
pub mod ipam;
pub mod leaderelection;
pub mod loadbalancer;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use tokio::task::JoinSet;

use context::{Caches, Ctx, Queues};

use skiff_runtime::defaults;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("controller task ended: {0}")]
    Task(String),
}

/// Options of the controller manager (`skiff server` flags; names as kube-controller-manager's).
#[derive(clap::Args, Debug, Clone)]
#[group(id = "controllers")]
pub struct Options {
    /// CIDR range of pods in the cluster; each node gets a slice of it as spec.podCIDR.
    #[arg(long, default_value = defaults::CLUSTER_POD_CIDR)]
    pub cluster_cidr: ipnet::IpNet,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = defaults::NODE_POD_CIDR_PREFIX)]
    pub node_cidr_mask_size: u8,
    /// LoadBalancer address pool: ranges (a-b) or CIDRs, comma-separated. Without one, LoadBalancer
    /// services stay <pending>.
    #[arg(long, value_delimiter = ',')]
    pub load_balancer_pool: Vec<String>,
    /// How long a node may miss heartbeats (Lease renewals) before it is marked NotReady.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// Upper bound of concurrent API writes per controller.
    #[arg(long, default_value_t = 16)]
    pub concurrent_writes: usize,
    /// Run the controllers and the scheduler only while holding the leader Lease (for several `skiff
    /// server` processes on one etcd). Off by default: a single server then starts them at once.
    #[arg(long)]
    pub leader_elect: bool,
    /// How long a lease holds without renewal before a standby takes it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops its controllers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Interval between attempts to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Name of the Lease object.
    #[arg(long, default_value = "kube-controller-manager")]
    pub leader_elect_resource_name: String,
    /// Namespace of the Lease object.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,
    /// This candidate's identity in the Lease (default: hostname_random).
    #[arg(long, hide = true)]
    pub leader_elect_identity: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster_cidr: defaults::CLUSTER_POD_CIDR
                .parse()
                .unwrap_or_else(|_| ipnet::IpNet::V4(Default::default())),
            node_cidr_mask_size: defaults::NODE_POD_CIDR_PREFIX,
            load_balancer_pool: vec![],
            node_monitor_grace_period: Duration::from_secs(40),
            concurrent_writes: 16,
            leader_elect: false,
            leader_elect_lease_duration: leaderelection::LEASE_DURATION,
            leader_elect_renew_deadline: leaderelection::RENEW_DEADLINE,
            leader_elect_retry_period: leaderelection::RETRY_PERIOD,
            leader_elect_resource_name: "kube-controller-manager".into(),
            leader_elect_resource_namespace: "kube-system".into(),
            leader_elect_identity: None,
        }
    }
}

/// Parses Go-style durations as the upstream flags take them: `40s`, `5m`, `1m30s`, `500ms`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".to_string());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += Duration::from_secs_f64(seconds);
    }
    Ok(total)
}

/// Runs every controller until one fails: one informer per kind feeding the shared caches, whose handlers
/// queue the keys each controller must look at again.
async fn run_controllers(client: Client, options: Options) -> Result<(), Error> {
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

/// Runs every controller until one fails (with `--leader-elect`: only while holding the leader Lease).
pub async fn run(client: kube::Client, options: Options) -> Result<(), Error> {
    if !options.leader_elect {
        return run_controllers(client, options).await;
    }
    if options.leader_elect_renew_deadline >= options.leader_elect_lease_duration
        || options.leader_elect_retry_period >= options.leader_elect_renew_deadline
    {
        return Err(Error::InvalidOption(
            "want --leader-elect-retry-period < --leader-elect-renew-deadline < --leader-elect-lease-duration"
                .into(),
        ));
    }
    let cfg = leaderelection::Config {
        namespace: options.leader_elect_resource_namespace.clone(),
        name: options.leader_elect_resource_name.clone(),
        identity: options
            .leader_elect_identity
            .clone()
            .unwrap_or_else(leaderelection::default_identity),
        lease_duration: options.leader_elect_lease_duration,
        renew_deadline: options.leader_elect_renew_deadline,
        retry_period: options.leader_elect_retry_period,
    };
    let c = client.clone();
    leaderelection::run_elected(client, cfg, move || {
        run_controllers(c.clone(), options.clone())
    })
    .await
}

/// The controller ownerReference of an object (at most one), as upstream's metav1.GetControllerOf.
pub fn controller_owner(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> impl Iterator<Item = &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .take(1)
}

/// metav1.LabelSelector semantics (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist).
pub fn label_selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let empty = std::collections::BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_match_like_upstream() {
        let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"}]
        })).unwrap();
        let l = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert!(label_selector_matches(
            &sel,
            Some(&l(&[("app", "web"), ("tier", "a")]))
        ));
        assert!(!label_selector_matches(
            &sel,
            Some(&l(&[("app", "web"), ("tier", "c")]))
        ));
        assert!(!label_selector_matches(
            &sel,
            Some(&l(&[("app", "web"), ("tier", "a"), ("canary", "1")]))
        ));
        assert!(!label_selector_matches(&sel, None));
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn options_defaults_match_the_seeds() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let cli = <Cli as clap::Parser>::parse_from(["x"]);
        assert_eq!(cli.options.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(cli.options.node_cidr_mask_size, 24);
        assert!(cli.options.load_balancer_pool.is_empty());
        assert_eq!(
            cli.options.node_monitor_grace_period,
            Duration::from_secs(40)
        );
        let cli = <Cli as clap::Parser>::parse_from([
            "x",
            "--load-balancer-pool",
            "172.30.0.200-172.30.0.250,10.0.0.0/30",
        ]);
        assert_eq!(
            cli.options.load_balancer_pool,
            vec!["172.30.0.200-172.30.0.250", "10.0.0.0/30"]
        );
    }
}
