//! LoadBalancer address pool (MetalLB's job in L2 mode): Services of type LoadBalancer (no
//! loadBalancerClass, or `skiff.dev/pool`) get an address from the pool in
//! `status.loadBalancer.ingress`, and the node that answers for it in the
//! `skiff.dev/loadbalancer-node` annotation. Without a pool, or when it is exhausted, they stay
//! `<pending>` with an `AllocationFailed` event.
//!
//! [`lb_assign`] is pure: given the pool and all Services it returns every Service's address (or why
//! none), keeping existing assignments stable. The shell recomputes all Services at once per batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use kube::Api;
use skiff_runtime::defaults::{ANNOTATION_LB_NODE, LOAD_BALANCER_CLASS};

use crate::context::Ctx;
use crate::informer::Key;

/// Inclusive address ranges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pool {
    ranges: Vec<(IpAddr, IpAddr)>,
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

impl Pool {
    /// Parses `a-b` ranges and CIDRs (a CIDR of a /30 or wider loses its network and broadcast addresses).
    pub fn parse(items: &[String]) -> Result<Pool, String> {
        let mut ranges = vec![];
        for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if let Some((a, b)) = item.split_once('-') {
                let a: IpAddr = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid load balancer pool range {item:?}"))?;
                let b: IpAddr = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid load balancer pool range {item:?}"))?;
                if a.is_ipv4() != b.is_ipv4() || ip_to_u128(a) > ip_to_u128(b) {
                    return Err(format!("invalid load balancer pool range {item:?}"));
                }
                ranges.push((a, b));
            } else {
                let net: IpNet = item
                    .parse()
                    .map_err(|_| format!("invalid load balancer pool CIDR {item:?}"))?;
                let (first, last) = (ip_to_u128(net.network()), ip_to_u128(net.broadcast()));
                let v4 = net.network().is_ipv4();
                let (first, last) = if v4 && net.prefix_len() <= 30 {
                    (first + 1, last - 1)
                } else {
                    (first, last)
                };
                ranges.push((u128_to_ip(first, v4), u128_to_ip(last, v4)));
            }
        }
        Ok(Pool { ranges })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let v = ip_to_u128(ip);
        self.ranges
            .iter()
            .any(|(a, b)| a.is_ipv4() == ip.is_ipv4() && ip_to_u128(*a) <= v && v <= ip_to_u128(*b))
    }

    fn first_free(&self, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        for (a, b) in &self.ranges {
            let mut v = ip_to_u128(*a);
            while v <= ip_to_u128(*b) {
                let ip = u128_to_ip(v, a.is_ipv4());
                if !used.contains(&ip) {
                    return Some(ip);
                }
                v += 1;
            }
        }
        None
    }
}

/// Whether this controller serves the Service.
pub fn wants_address(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    svc.metadata.deletion_timestamp.is_none()
        && spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none_or(|c| c == LOAD_BALANCER_CLASS)
}

fn current_ip(svc: &Service) -> Option<IpAddr> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
}

/// Every served Service's address, or the reason it has none (the AllocationFailed message).
pub fn lb_assign(pool: &Pool, services: &[Arc<Service>]) -> BTreeMap<Key, Result<IpAddr, String>> {
    let mut result = BTreeMap::new();
    let mut sorted: Vec<&Arc<Service>> = services.iter().filter(|s| wants_address(s)).collect();
    sorted.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    let key = |s: &Service| crate::informer::key_of(s);
    let requested = |s: &Service| -> Option<String> {
        s.spec
            .as_ref()
            .and_then(|sp| sp.load_balancer_ip.clone())
            .filter(|ip| !ip.is_empty())
    };
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    // 1. Keep what Services already hold (still in the pool, still matching a requested address).
    for svc in &sorted {
        if let Some(ip) = current_ip(svc) {
            let ok_request = requested(svc).is_none_or(|r| r.parse::<IpAddr>().ok() == Some(ip));
            if pool.contains(ip) && ok_request && used.insert(ip) {
                result.insert(key(svc), Ok(ip));
            }
        }
    }
    // 2. Requested addresses.
    for svc in &sorted {
        if result.contains_key(&key(svc)) {
            continue;
        }
        if let Some(req) = requested(svc) {
            let outcome = match req.parse::<IpAddr>() {
                Err(_) => Err(format!("invalid spec.loadBalancerIP {req:?}")),
                Ok(ip) if !pool.contains(ip) => Err(format!(
                    "requested IP {ip} is not in the load balancer pool"
                )),
                Ok(ip) if used.contains(&ip) => Err(format!("requested IP {ip} is already in use")),
                Ok(ip) => {
                    used.insert(ip);
                    Ok(ip)
                }
            };
            result.insert(key(svc), outcome);
        }
    }
    // 3. Everyone else, oldest first.
    for svc in &sorted {
        if result.contains_key(&key(svc)) {
            continue;
        }
        let outcome = if pool.is_empty() {
            Err("no load balancer address pool is configured".to_string())
        } else {
            match pool.first_free(&used) {
                Some(ip) => {
                    used.insert(ip);
                    Ok(ip)
                }
                None => Err("no available IPs in the load balancer pool".to_string()),
            }
        };
        result.insert(key(svc), outcome);
    }
    result
}

/// The node that answers for the Service's address: among Ready nodes (with a local ready
/// endpoint when externalTrafficPolicy is Local and any has one), chosen by a hash of the Service so
/// that the choice is stable and spreads Services over nodes.
pub fn pick_announcer(
    svc: &Service,
    ready_nodes: &[String],
    nodes_with_endpoints: &BTreeSet<String>,
) -> Option<String> {
    let local = svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local");
    let mut candidates: Vec<&String> = ready_nodes.iter().collect();
    if local {
        let with: Vec<&String> = candidates
            .iter()
            .copied()
            .filter(|n| nodes_with_endpoints.contains(*n))
            .collect();
        if !with.is_empty() {
            candidates = with;
        }
    }
    candidates.sort();
    if candidates.is_empty() {
        return None;
    }
    let id = format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    );
    let h = crate::deployment::fnv32a(id.as_bytes()) as usize;
    Some(candidates[h % candidates.len()].clone())
}

// ---------------------------------------------------------------------------------------------
// I/O shell

pub(crate) fn on_node(ctx: &Arc<Ctx>, old: Option<&Node>, new: Option<&Node>) {
    let changed = match (old, new) {
        (Some(o), Some(n)) => {
            crate::scheduler::node_is_ready(o) != crate::scheduler::node_is_ready(n)
        }
        _ => true,
    };
    if changed {
        ctx.queues.loadbalancers.add_ns_name("", "");
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>, pool: Pool) {
    ctx.caches.wait_synced().await;
    let queue = ctx.queues.loadbalancers.clone();
    // Periodic pass: endpoint locality (externalTrafficPolicy Local) changes without a Service event.
    {
        let queue = queue.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                queue.add_ns_name("", "");
            }
        });
    }
    queue.add_ns_name("", "");
    let mut last_event: HashMap<Key, String> = HashMap::new();
    loop {
        // Any key means "look at all Services again".
        let _ = queue.next_batch().await;
        if let Err(error) = sync_all(&ctx, &pool, &mut last_event).await {
            tracing::warn!(%error, "load balancer sync failed; retrying");
            queue.add_after(("".into(), "".into()), Duration::from_millis(500));
        }
    }
}

async fn sync_all(
    ctx: &Ctx,
    pool: &Pool,
    last_event: &mut HashMap<Key, String>,
) -> Result<(), kube::Error> {
    let services = ctx.caches.services.list();
    let assignments = lb_assign(pool, &services);
    let ready_nodes: Vec<String> = ctx
        .caches
        .nodes
        .list()
        .iter()
        .filter(|n| crate::scheduler::node_is_ready(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut first_error = None;
    for svc in &services {
        let key = crate::informer::key_of(svc.as_ref());
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.0);
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let has_ours = annotations.contains_key(ANNOTATION_LB_NODE)
            || (wants_address(svc)
                || svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.load_balancer_class.as_deref())
                    .is_none())
                && current_ip(svc).is_some_and(|ip| pool.contains(ip));
        let result = match assignments.get(&key) {
            Some(Ok(ip)) => {
                let nodes_with_endpoints: BTreeSet<String> = ctx
                    .caches
                    .slices
                    .list_namespace(&key.0)
                    .iter()
                    .filter(|s| {
                        s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(skiff_runtime::defaults::LABEL_SERVICE_NAME))
                            == Some(&key.1)
                    })
                    .flat_map(|s| s.endpoints.clone())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                    .filter_map(|e| e.node_name)
                    .collect();
                let announcer = pick_announcer(svc, &ready_nodes, &nodes_with_endpoints);
                let mut res = Ok(());
                if current_ip(svc) != Some(*ip) {
                    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
                    res = api
                        .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map(|_| ());
                    if res.is_ok() {
                        tracing::info!(namespace = %key.0, service = %key.1, %ip, "assigned load balancer address");
                        crate::events::record(
                            &ctx.client,
                            "loadbalancer-controller",
                            crate::events::reference_to(svc.as_ref()),
                            "Normal",
                            "IPAllocated",
                            format!("Assigned IP [\"{ip}\"]"),
                        );
                        last_event.remove(&key);
                    }
                }
                if res.is_ok() && annotations.get(ANNOTATION_LB_NODE) != announcer.as_ref() {
                    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_LB_NODE: announcer}}});
                    res = api
                        .patch(&key.1, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map(|_| ());
                }
                res
            }
            Some(Err(reason)) => {
                let message = format!(
                    "Failed to allocate IP for \"{}/{}\": {reason}",
                    key.0, key.1
                );
                if last_event.get(&key) != Some(&message) {
                    crate::events::record(
                        &ctx.client,
                        "loadbalancer-controller",
                        crate::events::reference_to(svc.as_ref()),
                        "Warning",
                        "AllocationFailed",
                        message.clone(),
                    );
                    last_event.insert(key.clone(), message);
                }
                // An address it held but may no longer keep (e.g. out of a shrunk pool) is released.
                release(&api, svc, &key, has_ours).await
            }
            None => {
                last_event.remove(&key);
                // No longer ours (type changed, other class): release what we gave.
                release(&api, svc, &key, has_ours).await
            }
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn release(
    api: &Api<Service>,
    svc: &Service,
    key: &Key,
    has_ours: bool,
) -> Result<(), kube::Error> {
    if !has_ours {
        return Ok(());
    }
    if current_ip(svc).is_some() {
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
        api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_LB_NODE: null}}});
    api.patch(&key.1, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    tracing::info!(namespace = %key.0, service = %key.1, "released load balancer address");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, created: &str, extra: serde_json::Value) -> Arc<Service> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        });
        for (k, val) in extra.as_object().cloned().unwrap_or_default() {
            if k == "spec" {
                for (k2, v2) in val.as_object().cloned().unwrap_or_default() {
                    v["spec"][k2] = v2;
                }
            } else {
                v[k] = val;
            }
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn k(name: &str) -> Key {
        ("default".into(), name.into())
    }

    #[test]
    fn pool_parses_ranges_and_cidrs() {
        let p = Pool::parse(&["172.30.0.200-172.30.0.250".into(), "10.0.0.0/30".into()]).unwrap();
        assert!(
            p.contains("172.30.0.200".parse().unwrap())
                && p.contains("172.30.0.250".parse().unwrap())
        );
        assert!(!p.contains("172.30.0.251".parse().unwrap()));
        assert!(
            !p.contains("10.0.0.0".parse().unwrap())
                && p.contains("10.0.0.1".parse().unwrap())
                && p.contains("10.0.0.2".parse().unwrap())
        );
        assert!(Pool::parse(&["10.0.0.5-10.0.0.1".into()]).is_err());
        assert!(Pool::parse(&["nonsense".into()]).is_err());
    }

    #[test]
    fn assigns_in_order_keeps_existing_honours_requests_and_reports_exhaustion() {
        let pool = Pool::parse(&["172.30.0.200-172.30.0.202".into()]).unwrap();
        let services = vec![
            svc("a", "2026-01-01T00:00:01Z", json!({})),
            svc(
                "held",
                "2026-01-01T00:00:05Z",
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "172.30.0.200"}]}}}),
            ),
            svc(
                "wants",
                "2026-01-01T00:00:03Z",
                json!({"spec": {"loadBalancerIP": "172.30.0.202"}}),
            ),
            svc(
                "outside",
                "2026-01-01T00:00:00Z",
                json!({"spec": {"loadBalancerIP": "10.1.1.1"}}),
            ),
            svc("late", "2026-01-01T00:00:09Z", json!({})),
            svc(
                "other-class",
                "2026-01-01T00:00:00Z",
                json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
            ),
            svc(
                "clusterip",
                "2026-01-01T00:00:00Z",
                json!({"spec": {"type": "ClusterIP"}}),
            ),
        ];
        let got = lb_assign(&pool, &services);
        let ip = |s: &str| -> Result<IpAddr, String> { Ok(s.parse().unwrap()) };
        let expected: BTreeMap<Key, Result<IpAddr, String>> = BTreeMap::from([
            (k("held"), ip("172.30.0.200")),
            (k("wants"), ip("172.30.0.202")),
            (
                k("outside"),
                Err("requested IP 10.1.1.1 is not in the load balancer pool".to_string()),
            ),
            (k("a"), ip("172.30.0.201")),
            (
                k("late"),
                Err("no available IPs in the load balancer pool".to_string()),
            ),
        ]);
        assert_eq!(got, expected);
        let none = lb_assign(&Pool::default(), &services[..1]);
        assert_eq!(
            none.get(&k("a")),
            Some(&Err(
                "no load balancer address pool is configured".to_string()
            ))
        );
    }

    #[test]
    fn announcer_is_stable_and_prefers_local_endpoints() {
        let nodes: Vec<String> = vec!["node-1".into(), "node-2".into(), "node-3".into()];
        let s = svc("a", "2026-01-01T00:00:00Z", json!({}));
        let first = pick_announcer(&s, &nodes, &BTreeSet::new()).unwrap();
        assert_eq!(pick_announcer(&s, &nodes, &BTreeSet::new()).unwrap(), first);
        let local = svc(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        );
        let with = BTreeSet::from(["node-3".to_string()]);
        assert_eq!(
            pick_announcer(&local, &nodes, &with).as_deref(),
            Some("node-3")
        );
        assert_eq!(pick_announcer(&s, &[], &with), None);
    }
}
