//! The controllers against a real API server (no node agents; see common/mod.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn options() -> skiff_controllers::Options {
    skiff_controllers::Options {
        load_balancer_pool: vec!["172.30.0.200-172.30.0.201".to_string()],
        node_monitor_grace_period: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn create_deployment(
    client: &Client,
    name: &str,
    replicas: i32,
    image: &str,
    strategy: serde_json::Value,
) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": name, "image": image, "ports": [{"name": "http", "containerPort": 80}]}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
}

async fn create_service(client: &Client, name: &str, spec: serde_json::Value) {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let s: Service = serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
    )
    .unwrap();
    api.create(&PostParams::default(), &s)
        .await
        .expect("create service");
}

async fn pods_of(client: &Client, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// (ready addresses, not-ready addresses) of the Endpoints object, sorted.
async fn endpoints_addresses(client: &Client, name: &str) -> (Vec<String>, Vec<String>) {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let Ok(Some(ep)) = api.get_opt(name).await else {
        return (vec![], vec![]);
    };
    let mut ready = vec![];
    let mut not_ready = vec![];
    for s in ep.subsets.unwrap_or_default() {
        ready.extend(s.addresses.unwrap_or_default().into_iter().map(|a| a.ip));
        not_ready.extend(
            s.not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

async fn slices_of(client: &Client, service: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// address → ready, over all slices of a service.
async fn slice_readiness(client: &Client, service: &str) -> BTreeMap<String, bool> {
    slices_of(client, service)
        .await
        .into_iter()
        .flat_map(|s| s.endpoints)
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.and_then(|c| c.ready).unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scale_and_endpoints_follow_readiness_and_deletion() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    add_node(&c.client, "node-2", json!({})).await;
    create_deployment(
        &c.client,
        "demoapp",
        3,
        "ikubernetes/demoapp:v1.0",
        json!({}),
    )
    .await;
    create_service(&c.client, "demoapp", json!({"selector": {"app": "demoapp"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]})).await;

    // Three pods, named <deploy>-<hash>-<5 chars>, bound and spread over both nodes.
    let pods = eventually("3 bound pods", WAIT, || async {
        let pods = pods_of(&c.client, "demoapp").await;
        let bound = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if pods.len() == 3 && bound == 3 {
            Ok(pods)
        } else {
            Err(format!("{} pods, {bound} bound", pods.len()))
        }
    })
    .await;
    let alphabet = "bcdfghjklmnpqrstvwxz2456789";
    for p in &pods {
        let name = p.metadata.name.clone().unwrap();
        let hash = p.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
        let suffix = name
            .strip_prefix(&format!("demoapp-{hash}-"))
            .unwrap_or_else(|| panic!("pod name {name}"));
        assert_eq!(suffix.len(), 5, "{name}");
        assert!(suffix.chars().all(|ch| alphabet.contains(ch)), "{name}");
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node
            .entry(p.spec.as_ref().unwrap().node_name.clone().unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2]),
        "{per_node:?}"
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    eventually("Scheduled events", WAIT, || async {
        let n = events
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("Scheduled"))
                    .count()
            })
            .unwrap_or(0);
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} Scheduled events"))
        }
    })
    .await;

    // Pods without an IP are no endpoints; with an IP they are, following readiness.
    let mut ips = vec![];
    for (i, p) in pods.iter().enumerate() {
        let ip = next_ip();
        set_pod_status(
            &c.client,
            "default",
            p.metadata.name.as_deref().unwrap(),
            Some(&ip),
            i != 0,
        )
        .await
        .unwrap();
        ips.push(ip);
    }
    let mut ready_ips = ips[1..].to_vec();
    ready_ips.sort();
    eventually("endpoints 2 ready + 1 not ready", WAIT, || async {
        let got = endpoints_addresses(&c.client, "demoapp").await;
        if got == (ready_ips.clone(), vec![ips[0].clone()]) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    eventually("slice readiness", WAIT, || async {
        let got = slice_readiness(&c.client, "demoapp").await;
        let want: BTreeMap<String, bool> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (ip.clone(), i != 0))
            .collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let slices = slices_of(&c.client, "demoapp").await;
    assert_eq!(slices.len(), 1);
    let labels = slices[0].metadata.labels.clone().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        slices[0].metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );
    assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(80));

    // Scale up: the new pods join once ready.
    c.auto_ready.store(true, Ordering::Relaxed);
    set_pod_status(
        &c.client,
        "default",
        pods[0].metadata.name.as_deref().unwrap(),
        Some(&ips[0]),
        true,
    )
    .await
    .unwrap();
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    patch_retrying(
        &deploys,
        "demoapp",
        Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await;
    eventually("5 ready endpoints", WAIT, || async {
        let got = endpoints_addresses(&c.client, "demoapp").await;
        if got.0.len() == 5 && got.1.is_empty() {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // Scale down: deleted pods leave the endpoints; status follows.
    patch_retrying(
        &deploys,
        "demoapp",
        Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await;
    eventually("2 endpoints", WAIT, || async {
        let got = endpoints_addresses(&c.client, "demoapp").await;
        let pods = pods_of(&c.client, "demoapp").await;
        if got.0.len() == 2 && got.1.is_empty() && pods.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}, {} pods", pods.len()))
        }
    })
    .await;
    eventually("deployment status", WAIT, || async {
        let d = deploys.get("demoapp").await.map_err(|e| e.to_string())?;
        let s = d.status.clone().unwrap_or_default();
        let progressing = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.reason.clone());
        let got = (
            s.replicas,
            s.ready_replicas,
            s.available_replicas,
            s.updated_replicas,
            s.observed_generation,
            progressing.as_deref().map(str::to_string),
        );
        if got
            == (
                Some(2),
                Some(2),
                Some(2),
                Some(2),
                d.metadata.generation,
                Some("NewReplicaSetAvailable".to_string()),
            )
        {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_target_ports_differ_per_pod_and_headless_hostnames() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    create_service(&c.client, "web", json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]})).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for (name, port) in [("web-0", 8080), ("web-1", 9090)] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"hostname": name, "subdomain": "web", "nodeName": "node-1",
                     "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": port}]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        set_pod_status(&c.client, "default", name, Some(&next_ip()), true)
            .await
            .unwrap();
    }
    let got = eventually("two slices with different ports", WAIT, || async {
        let mut got: Vec<(i32, String, bool)> = slices_of(&c.client, "web")
            .await
            .into_iter()
            .flat_map(|s| {
                let port = s
                    .ports
                    .as_ref()
                    .and_then(|p| p.first())
                    .and_then(|p| p.port)
                    .unwrap_or(0);
                s.endpoints.into_iter().map(move |e| {
                    (
                        port,
                        e.hostname.clone().unwrap_or_default(),
                        e.conditions.and_then(|c| c.ready).unwrap_or(false),
                    )
                })
            })
            .collect();
        got.sort();
        if got.len() == 2 {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(
        got,
        vec![
            (8080, "web-0".to_string(), true),
            (9090, "web-1".to_string(), true)
        ]
    );
    let slices = slices_of(&c.client, "web").await;
    assert!(slices.iter().all(|s| s
        .metadata
        .labels
        .as_ref()
        .unwrap()
        .contains_key("service.kubernetes.io/headless")));
    // The legacy Endpoints are written by their own controller, which may lag the slices.
    let api: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let want = vec![(8080, "web-0".to_string()), (9090, "web-1".to_string())];
    eventually("Endpoints subsets per port", WAIT, || async {
        let ep = api.get("web").await.map_err(|e| e.to_string())?;
        let mut subsets: Vec<(i32, String)> = ep
            .subsets
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                (
                    s.ports.unwrap_or_default()[0].port,
                    s.addresses.unwrap_or_default()[0]
                        .hostname
                        .clone()
                        .unwrap_or_default(),
                )
            })
            .collect();
        subsets.sort();
        if subsets == want {
            Ok(())
        } else {
            Err(format!("{subsets:?}"))
        }
    })
    .await;

    // Deleting a pod removes its endpoint.
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("one endpoint left", WAIT, || async {
        let n: usize = slices_of(&c.client, "web")
            .await
            .iter()
            .map(|s| s.endpoints.len())
            .sum();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} endpoints"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_addresses_assigned_pending_and_released() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let lb_ip = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone())
    };
    create_service(
        &c.client,
        "a",
        json!({"type": "LoadBalancer", "selector": {"app": "a"}, "ports": [{"port": 80}]}),
    )
    .await;
    let a = eventually("a gets an address", WAIT, || async {
        let s = api.get("a").await.map_err(|e| e.to_string())?;
        match (
            lb_ip(&s),
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("skiff.dev/loadbalancer-node"))
                .cloned(),
        ) {
            (Some(ip), Some(node)) => Ok((ip, node)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(a, ("172.30.0.200".to_string(), "node-1".to_string()));
    create_service(&c.client, "b", json!({"type": "LoadBalancer", "loadBalancerIP": "172.30.0.201", "selector": {"app": "b"}, "ports": [{"port": 80}]})).await;
    create_service(
        &c.client,
        "c",
        json!({"type": "LoadBalancer", "selector": {"app": "c"}, "ports": [{"port": 80}]}),
    )
    .await;
    eventually("b gets its requested address", WAIT, || async {
        let s = api.get("b").await.map_err(|e| e.to_string())?;
        if lb_ip(&s).as_deref() == Some("172.30.0.201") {
            Ok(())
        } else {
            Err(format!("{:?}", s.status))
        }
    })
    .await;
    // The pool is exhausted: c stays pending, with an event saying why.
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let msg = eventually("AllocationFailed event", WAIT, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("AllocationFailed")
                    && e.involved_object.name.as_deref() == Some("c")
            })
            .and_then(|e| e.message)
            .ok_or_else(|| "none".to_string())
    })
    .await;
    assert_eq!(
        msg,
        "Failed to allocate IP for \"default/c\": no available IPs in the load balancer pool"
    );
    assert_eq!(lb_ip(&api.get("c").await.unwrap()), None);
    // Releasing a's address (type change) lets c have it.
    patch_retrying(
        &api,
        "a",
        Patch::Merge(json!({"spec": {"type": "NodePort"}})),
    )
    .await;
    eventually("a released and c assigned", WAIT, || async {
        let a = api.get("a").await.map_err(|e| e.to_string())?;
        let cs = api.get("c").await.map_err(|e| e.to_string())?;
        if lb_ip(&a).is_none() && lb_ip(&cs).as_deref() == Some("172.30.0.200") {
            Ok(())
        } else {
            Err(format!("a={:?} c={:?}", lb_ip(&a), lb_ip(&cs)))
        }
    })
    .await;
    // Deleting b frees its address too.
    create_service(
        &c.client,
        "d",
        json!({"type": "LoadBalancer", "selector": {"app": "d"}, "ports": [{"port": 80}]}),
    )
    .await;
    api.delete("b", &DeleteParams::default()).await.unwrap();
    eventually("d gets b's address", WAIT, || async {
        let d = api.get("d").await.map_err(|e| e.to_string())?;
        if lb_ip(&d).as_deref() == Some("172.30.0.201") {
            Ok(())
        } else {
            Err(format!("{:?}", lb_ip(&d)))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_and_not_ready_node_endpoints_removed() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    add_node(&c.client, "node-2", json!({})).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let cidrs = eventually("pod CIDRs", WAIT, || async {
        let mut got: Vec<String> = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()))
            .collect();
        got.sort();
        if got.len() == 2 {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(cidrs, vec!["10.244.0.0/24", "10.244.1.0/24"]);

    create_service(
        &c.client,
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let mut ips = BTreeMap::new();
    for (name, node) in [("on-1", "node-1"), ("on-2", "node-2")] {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let ip = next_ip();
        set_pod_status(&c.client, "default", name, Some(&ip), true)
            .await
            .unwrap();
        ips.insert(name, ip);
    }
    // node-1 keeps its heartbeat; node-2 stops.
    let client = c.client.clone();
    let beat = tokio::spawn(async move {
        loop {
            heartbeat(&client, "node-1").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    eventually(
        "node-2 NotReady and its endpoint not ready",
        WAIT,
        || async {
            let n2 = nodes.get("node-2").await.map_err(|e| e.to_string())?;
            let ready = n2
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            let got = slice_readiness(&c.client, "web").await;
            let want = BTreeMap::from([(ips["on-1"].clone(), true), (ips["on-2"].clone(), false)]);
            if ready.as_deref() == Some("Unknown") && got == want {
                Ok(())
            } else {
                Err(format!("node-2 Ready={ready:?}, slices {got:?}"))
            }
        },
    )
    .await;
    let n1 = nodes.get("node-1").await.unwrap();
    let n1_ready = n1
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .status;
    assert_eq!(n1_ready, "True");
    let (ready, not_ready) = endpoints_addresses(&c.client, "web").await;
    assert_eq!(
        (ready, not_ready),
        (vec![ips["on-1"].clone()], vec![ips["on-2"].clone()])
    );
    beat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_delete_removes_replicasets_and_pods() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    create_deployment(&c.client, "gone", 2, "busybox", json!({})).await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    eventually("2 pods", WAIT, || async {
        let n = pods_of(&c.client, "gone").await.len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    deploys
        .delete("gone", &DeleteParams::background())
        .await
        .unwrap();
    eventually("ReplicaSets and pods gone", WAIT, || async {
        let r = rss
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let p = pods_of(&c.client, "gone").await.len();
        if r == 0 && p == 0 {
            Ok(())
        } else {
            Err(format!("{r} replicasets, {p} pods"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_never_drops_below_min_available() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    add_node(&c.client, "node-2", json!({})).await;
    c.auto_ready.store(true, Ordering::Relaxed);
    create_deployment(
        &c.client,
        "roll",
        4,
        "ikubernetes/demoapp:v1.0",
        json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}),
    )
    .await;
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let complete = |image: &'static str| {
        let deploys = deploys.clone();
        let client = c.client.clone();
        move || {
            let deploys = deploys.clone();
            let client = client.clone();
            async move {
                let d = deploys.get("roll").await.map_err(|e| e.to_string())?;
                let s = d.status.clone().unwrap_or_default();
                let pods = pods_of(&client, "roll").await;
                let all_new = pods.iter().all(|p| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
                });
                let got = (
                    s.replicas,
                    s.updated_replicas,
                    s.available_replicas,
                    s.observed_generation == d.metadata.generation,
                    pods.len(),
                    all_new,
                );
                if got == (Some(4), Some(4), Some(4), true, 4, true) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            }
        }
    };
    eventually(
        "initial rollout",
        WAIT,
        complete("ikubernetes/demoapp:v1.0"),
    )
    .await;
    let ready_count = |pods: &[Pod]| {
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
    };
    patch_retrying(&deploys, "roll", Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "roll", "image": "ikubernetes/demoapp:v1.1"}]}}}}))).await;
    let start = std::time::Instant::now();
    let mut min_ready = usize::MAX;
    loop {
        let pods = pods_of(&c.client, "roll").await;
        min_ready = min_ready.min(ready_count(&pods));
        if complete("ikubernetes/demoapp:v1.1")().await.is_ok() {
            break;
        }
        assert!(start.elapsed() < WAIT * 2, "rollout did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        min_ready >= 3,
        "ready pods dropped to {min_ready} (replicas 4, maxUnavailable 1)"
    );
    let d = deploys.get("roll").await.unwrap();
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let mut revs: Vec<(String, i32)> = rss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| {
            (
                r.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"].clone(),
                r.spec.unwrap().replicas.unwrap(),
            )
        })
        .collect();
    revs.sort();
    assert_eq!(revs, vec![("1".to_string(), 0), ("2".to_string(), 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_gets_condition_and_event() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({"disk": "hdd"})).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "picky"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let want = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
    eventually("PodScheduled=False", WAIT, || async {
        let p = pods.get("picky").await.map_err(|e| e.to_string())?;
        let cond = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        match cond {
            Some(c)
                if c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(want) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Labelling the node makes it fit.
    let nodes: Api<Node> = Api::all(c.client.clone());
    patch_retrying(
        &nodes,
        "node-1",
        Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
    )
    .await;
    eventually("bound", WAIT, || async {
        let p = pods.get("picky").await.map_err(|e| e.to_string())?;
        let scheduled = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .map(|c| c.status);
        match (p.spec.and_then(|s| s.node_name), scheduled) {
            (Some(n), Some(s)) if n == "node-1" && s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_matching_orphans_instead_of_creating() {
    let c = start(options()).await;
    add_node(&c.client, "node-1", json!({})).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for name in ["orphan-a", "orphan-b"] {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"app": "adopt"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "adopt"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "adopt"}},
                 "template": {"metadata": {"labels": {"app": "adopt"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})).unwrap();
    rss.create(&PostParams::default(), &rs).await.unwrap();
    let names = eventually("3 owned pods", WAIT, || async {
        let list = pods_of(&c.client, "adopt").await;
        let owned = list
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o.name == "adopt"))
            })
            .count();
        if list.len() == 3 && owned == 3 {
            Ok(list
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>())
        } else {
            Err(format!("{} pods, {owned} owned", list.len()))
        }
    })
    .await;
    assert!(
        names.contains(&"orphan-a".to_string()) && names.contains(&"orphan-b".to_string()),
        "{names:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods_of(&c.client, "adopt").await.len(), 3);
}
