//! Skiff's kube-controller-manager and kube-scheduler: scheduler, ReplicaSet, Deployment, StatefulSet,
//! DaemonSet, Endpoints + EndpointSlices (+ mirroring), node IPAM and lifecycle, LoadBalancer pool and
//! garbage collector.
//!
//! Every controller talks to the API only through kube-rs: watch-fed caches ([`informer`]) feed
//! deduplicating work queues ([`queue`]); each reconcile computes the desired state with a pure function
//! (unit-tested in its module) and writes the difference through the API. Because the caches resume
//! watches from their resourceVersion and relists are diffed, controllers survive API server restarts;
//! the ReplicaSet controller keeps expectations so it never creates a pod twice.

pub mod context;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod informer;
pub mod ipam;
pub mod loadbalancer;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod workloads;

use std::time::Duration;

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

/// Runs every controller until one fails.
pub async fn run(client: kube::Client, options: Options) -> Result<(), Error> {
    context::run(client, options).await
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
