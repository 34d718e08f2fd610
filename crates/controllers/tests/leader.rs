//! Leader election: two controller managers, each on its own API server, both servers on one etcd (a real
//! etcd started by the test). Only the Lease holder acts; when it dies (its task is dropped mid-flight, no
//! release), the standby takes the Lease after the lease duration and a Deployment scaled meanwhile converges
//! without duplicate pods.

mod common;

use common::{add_node, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use skiff_api::testing::{shared_etcd, TestServer};
use std::time::Duration;

fn elected(identity: &str) -> skiff_controllers::Options {
    skiff_controllers::Options {
        leader_elect: true,
        // Short periods keep the test quick; the defaults are upstream's 15 s / 10 s / 2 s.
        leader_elect_lease_duration: Duration::from_secs(3),
        leader_elect_renew_deadline: Duration::from_secs(2),
        leader_elect_retry_period: Duration::from_millis(300),
        leader_elect_identity: Some(identity.to_string()),
        ..Default::default()
    }
}

async fn holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt("kube-controller-manager")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn pods(client: &Client) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels("app=web"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let etcd = shared_etcd().expect("etcd");
    let s1 = TestServer::start_with(|c| c.etcd = Some(etcd.clone()))
        .await
        .expect("server 1");
    let s2 = TestServer::start_with(|c| c.etcd = Some(etcd.clone()))
        .await
        .expect("server 2");
    let c1 = s1.client().await.expect("client");
    let c2 = s2.client().await.expect("client");
    add_node(&c1, "node-1", json!({})).await;
    let a = tokio::spawn(skiff_controllers::run(c1.clone(), elected("a")));
    let first = eventually("a leader", Duration::from_secs(60), || async {
        holder(&c1).await.ok_or_else(|| "no lease".to_string())
    })
    .await;
    assert_eq!(first, "a");
    let b = tokio::spawn(skiff_controllers::run(c2.clone(), elected("b")));

    let deploys: Api<Deployment> = Api::namespaced(c1.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "ikubernetes/demoapp:v1.0"}]}}},
    }))
    .expect("deployment");
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    eventually("3 pods", Duration::from_secs(60), || async {
        let n = pods(&c2).await.len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
    // The standby did not take over while the leader renews.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(holder(&c2).await.as_deref(), Some("a"));
    assert_eq!(pods(&c2).await.len(), 3);

    // The leader dies; scale meanwhile through the other server.
    a.abort();
    let _ = a.await;
    let deploys2: Api<Deployment> = Api::namespaced(c2.clone(), "default");
    deploys2
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale");
    eventually("b leads", Duration::from_secs(60), || async {
        match holder(&c2).await {
            Some(h) if h == "b" => Ok(()),
            h => Err(format!("holder {h:?}")),
        }
    })
    .await;
    let lease: Api<Lease> = Api::namespaced(c2.clone(), "kube-system");
    let spec = lease
        .get("kube-controller-manager")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.lease_transitions, Some(1));
    eventually("5 pods", Duration::from_secs(60), || async {
        let n = pods(&c2).await.len();
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await;
    // No duplicates once settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods(&c2).await.len(), 5);
    b.abort();
}
