//! Controllers survive API server restarts and their own restarts: watches resume, nothing is
//! created twice.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn client_for(server: &skiff_api::ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig_path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

async fn serve_retrying(cfg: &skiff_api::ServerConfig) -> skiff_api::ApiServer {
    let mut last = String::new();
    for _ in 0..200 {
        match skiff_api::serve(cfg.clone()).await {
            Ok(s) => return s,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("API server did not restart: {last}");
}

async fn pod_names(client: &Client) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicates_across_api_server_and_controller_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = skiff_api::ServerConfig {
        history_window: 1000,
        ..skiff_api::testing::config(dir.path()).expect("config")
    };
    let server = skiff_api::serve(cfg.clone()).await.expect("serve");
    // Restart on the same port so that the controllers' client finds it again.
    let port = server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .expect("port");
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    let client = client_for(&server).await;
    let controllers = tokio::spawn(skiff_controllers::run(client.clone(), Default::default()));
    add_node(&client, "node-1", json!({})).await;

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("deployment");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let ss: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    sets.create(&PostParams::default(), &ss)
        .await
        .expect("statefulset");
    eventually("3 + 2 pods", WAIT, || async {
        let n = pod_names(&client).await;
        if n.len() == 5 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    let names = pod_names(&client).await;
    assert!(
        names.contains(&"db-0".to_string()) && names.contains(&"db-1".to_string()),
        "{names:?}"
    );

    // API server restart, with a change made while the controllers are down. (Open connections,
    // even idle pooled ones, keep the old server's store open, see the report, so the controllers
    // stop and every client goes first.)
    controllers.abort();
    let _ = controllers.await;
    drop(deploys);
    drop(sets);
    drop(client);
    server.shutdown();
    drop(server);
    let server = serve_retrying(&cfg).await;
    let client2 = client_for(&server).await;
    let deploys2: Api<Deployment> = Api::namespaced(client2.clone(), "default");
    patch_retrying(
        &deploys2,
        "web",
        Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await;
    let controllers = tokio::spawn(skiff_controllers::run(
        client_for(&server).await,
        Default::default(),
    ));
    eventually("7 pods after restart", WAIT, || async {
        let n = pod_names(&client2).await;
        if n.len() == 7 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    // Nothing more is created once settled.
    let before = pod_names(&client2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pod_names(&client2).await,
        before,
        "pods changed after the restart settled"
    );
    let rss: Api<ReplicaSet> = Api::namespaced(client2.clone(), "default");
    assert_eq!(
        rss.list(&ListParams::default())
            .await
            .expect("rs")
            .items
            .len(),
        1
    );
    // And they still work.
    patch_retrying(
        &deploys2,
        "web",
        Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await;
    eventually("3 pods", WAIT, || async {
        let n = pod_names(&client2).await;
        if n.len() == 3 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    controllers.abort();
}
