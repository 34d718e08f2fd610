//! The seeds' flow with the real kubectl: create, expose, rollout status, scale, get ep, set image,
//! rollout history / undo.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;

async fn kubectl(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.server.kubeconfig_path)
        .args(args)
        .output()
        .await
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(c: &Cluster, args: &[&str]) -> String {
    let (success, out, err) = kubectl(c, args).await;
    assert!(success, "kubectl {args:?} failed: {err}{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_with_kubectl() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl not installed; skipping");
        return;
    }
    let c = start(Default::default()).await;
    add_node(&c.client, "node-1", json!({})).await;
    add_node(&c.client, "node-2", json!({})).await;
    c.auto_ready.store(true, Ordering::Relaxed);
    ok(
        &c,
        &[
            "create",
            "deployment",
            "demoapp",
            "--image=ikubernetes/demoapp:v1.0",
            "--replicas=3",
        ],
    )
    .await;
    ok(&c, &["expose", "deployment", "demoapp", "--port=80"]).await;
    let out = ok(
        &c,
        &["rollout", "status", "deployment/demoapp", "--timeout=30s"],
    )
    .await;
    assert!(
        out.contains("deployment \"demoapp\" successfully rolled out"),
        "{out}"
    );

    ok(&c, &["scale", "deployment", "demoapp", "--replicas=4"]).await;
    let ips = eventually("4 endpoints", Duration::from_secs(20), || async {
        let out = ok(
            &c,
            &[
                "get",
                "ep",
                "demoapp",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ],
        )
        .await;
        let n = out.split_whitespace().count();
        if n == 4 {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(
        ips.split_whitespace().all(|ip| ip.starts_with("10.244.")),
        "{ips}"
    );
    let out = ok(
        &c,
        &[
            "get",
            "deployment",
            "demoapp",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.replicas}",
        ],
    )
    .await;
    assert_eq!(out, "4/4");

    ok(
        &c,
        &[
            "set",
            "image",
            "deployment/demoapp",
            "demoapp=ikubernetes/demoapp:v1.1",
        ],
    )
    .await;
    let out = ok(
        &c,
        &["rollout", "status", "deployment/demoapp", "--timeout=30s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = ok(&c, &["rollout", "history", "deployment/demoapp"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{history}");

    ok(&c, &["rollout", "undo", "deployment/demoapp"]).await;
    let out = ok(
        &c,
        &["rollout", "status", "deployment/demoapp", "--timeout=30s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let image = ok(&c, &["get", "deployment", "demoapp", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]).await;
    assert_eq!(image, "ikubernetes/demoapp:v1.0 3");
    let pods = ok(
        &c,
        &[
            "get",
            "pods",
            "-l",
            "app=demoapp",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    )
    .await;
    assert!(
        pods.split_whitespace()
            .all(|i| i == "ikubernetes/demoapp:v1.0"),
        "{pods}"
    );
}
