//! The pod spec users write, run by the real agent in the kernel scenario: init containers, env from
//! ConfigMaps / Secrets / resources, configMap / secret / downwardAPI / emptyDir / hostPath volumes bind-mounted
//! in the pod's private mount namespace (and updated when the ConfigMap changes), runAsUser / runAsGroup,
//! workingDir, CreateContainerConfigError, failing init containers, preStop before SIGTERM.

use super::{container_status, pod, Pod};
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_testkit::eventually_async as wait_for;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the container wrote to stdout/stderr so far (all its instances).
fn container_log(data_dir: &Path, uid: &str, container: &str) -> String {
    let dir = data_dir.join("pods").join(uid).join("logs").join(container);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

async fn wait_log(data_dir: &Path, uid: &str, container: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = container_log(data_dir, uid, container);
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {needle:?} in {container}'s output:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn init_status<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

fn waiting_reason(c: Option<&ContainerStatus>) -> Option<String> {
    c?.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

fn condition(p: &Pod, kind: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// A directory of the host that does not exist yet, for mount points the agent has to create (and remove).
struct FreshDir(PathBuf);

impl Drop for FreshDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn scenario(client: &kube::Client, data_dir: &Path, guard: &mut Vec<String>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mounts = FreshDir(PathBuf::from(format!(
        "/run/skiff-podspec-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )));
    let hostdir = tempfile::tempdir().expect("tempdir");
    let cfg = mounts.0.join("cfg");
    let sec = mounts.0.join("secret");
    let info = mounts.0.join("podinfo");
    let work = mounts.0.join("work");

    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "app-config"},
            "data": {"greeting": "hello", "LOG_LEVEL": "debug", "app.conf": "v=1\n"}
        }))
        .unwrap(),
    )
    .await
    .expect("configmap");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "db"},
                "data": {"password": "czNjcjN0"}
            }))
            .unwrap(),
        )
        .await
        .expect("secret");

    let app = pods
        .create(
            &PostParams::default(),
            &pod(
                "spec",
                json!({
                    "nodeName": "node-t",
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": {"runAsGroup": 2345},
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "app-config"}},
                        {"name": "sec", "secret": {"secretName": "db", "defaultMode": 0o444}},
                        {"name": "podinfo", "downwardAPI": {"items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}},
                        {"name": "work", "emptyDir": {}}
                    ],
                    "initContainers": [
                        {"name": "prepare", "image": "busybox",
                         "command": ["sh", "-c", format!("echo init-ran > {}/marker", work.display())],
                         "volumeMounts": [{"name": "work", "mountPath": work}]}
                    ],
                    "containers": [{
                        "name": "app", "image": "busybox",
                        "workingDir": work,
                        "securityContext": {"runAsUser": 1234},
                        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                        "envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}],
                        "env": [
                            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "greeting"}}},
                            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                            {"name": "MEM_MB", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                            {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                            {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": true}}}
                        ],
                        "volumeMounts": [
                            {"name": "cfg", "mountPath": cfg},
                            {"name": "sec", "mountPath": sec},
                            {"name": "podinfo", "mountPath": info},
                            {"name": "work", "mountPath": work}
                        ],
                        "command": ["sh", "-c", format!(
                            "echo uid=$(id -u) gid=$(id -g); echo pwd=$(pwd); cat marker; env | sort; \
                             cat {sec}/password; echo; stat -L -c 'secret-mode=%a' {sec}/password; echo mem=$(cat {info}/mem); touch {cfg}/x 2>/dev/null || echo cfg-read-only; \
                             echo DONE; while true; do echo \"greeting=$(cat {cfg}/greeting)\"; sleep 0.3; done",
                            sec = sec.display(), info = info.display(), cfg = cfg.display())]
                    }]
                }),
            ),
        )
        .await
        .expect("create spec pod");
    let uid = app.metadata.uid.clone().unwrap();
    guard.push(uid.clone());
    let log = wait_log(data_dir, &uid, "app", "DONE").await;
    for line in [
        "uid=1234 gid=2345",
        &format!("pwd={}", work.display()),
        "init-ran",
        "GREETING=hello",
        "DB_PASSWORD=s3cr3t",
        "CFG_LOG_LEVEL=debug",
        "CFG_greeting=hello",
        "MEM_MB=64",
        "CPU_M=500",
        "s3cr3t",
        "secret-mode=444",
        "mem=64",
        "cfg-read-only",
    ] {
        assert!(log.lines().any(|l| l == line), "missing {line:?} in\n{log}");
    }
    assert!(!log.contains("OPTIONAL="), "{log}");
    assert!(log.contains("greeting=hello"), "{log}");
    // The volumes live in the pod's mount namespace only: the node sees empty mount points.
    assert!(cfg.is_dir(), "mount point created on the node");
    assert_eq!(std::fs::read_dir(&cfg).unwrap().count(), 0);
    // The app's log can be read before the agent has written the pod's status.
    let p = wait_for(
        "init container terminated",
        Duration::from_secs(10),
        async || {
            let p = pods.get("spec").await.ok()?;
            init_status(&p, "prepare")?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            Some(p)
        },
    )
    .await;
    let init = init_status(&p, "prepare").expect("init container status");
    let t = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("init terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    println!("pod spec: init container, env sources, volumes, runAsUser, workingDir ok");

    // The ConfigMap changes: the volume follows (atomic ..data swap), the environment does not.
    cms.patch(
        "app-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"greeting": "bonjour"}})),
    )
    .await
    .expect("patch configmap");
    wait_log(data_dir, &uid, "app", "greeting=bonjour").await;
    println!("pod spec: configMap volume updated");

    // A missing key: CreateContainerConfigError with kubelet's message, until the key exists.
    let needy = pods
        .create(
            &PostParams::default(),
            &pod(
                "needy",
                json!({"nodeName": "node-t", "terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "c", "image": "busybox", "command": ["sh", "-c", "echo got=$LATE; exec sleep 3600"],
                    "env": [{"name": "LATE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "late"}}}]
                }]}),
            ),
        )
        .await
        .expect("create needy");
    let needy_uid = needy.metadata.uid.clone().unwrap();
    guard.push(needy_uid.clone());
    let p = wait_for(
        "CreateContainerConfigError",
        Duration::from_secs(30),
        async || {
            pods.get("needy").await.ok().filter(|p| {
                waiting_reason(container_status(p, "c")).as_deref()
                    == Some("CreateContainerConfigError")
            })
        },
    )
    .await;
    let w = container_status(&p, "c")
        .and_then(|c| c.state.clone()?.waiting)
        .unwrap();
    assert_eq!(
        w.message.as_deref(),
        Some("couldn't find key late in ConfigMap default/app-config")
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    wait_for("Failed event", Duration::from_secs(10), async || {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some("needy")
                    && e.message.as_deref()
                        == Some("Error: couldn't find key late in ConfigMap default/app-config")
            })
    })
    .await;
    cms.patch(
        "app-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"late": "now"}})),
    )
    .await
    .expect("patch configmap");
    wait_log(data_dir, &needy_uid, "c", "got=now").await;
    println!("pod spec: CreateContainerConfigError until the key exists ok");

    // Failing init containers: restartPolicy Never fails the pod, Always backs off.
    let never = pods
        .create(
            &PostParams::default(),
            &pod(
                "init-never",
                json!({"nodeName": "node-t", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "initContainers": [{"name": "i", "image": "busybox", "command": ["sh", "-c", "exit 7"]}],
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}),
            ),
        )
        .await
        .expect("create init-never");
    guard.push(never.metadata.uid.clone().unwrap());
    let always = pods
        .create(
            &PostParams::default(),
            &pod(
                "init-loop",
                json!({"nodeName": "node-t", "terminationGracePeriodSeconds": 1,
                    "initContainers": [{"name": "i", "image": "busybox", "command": ["sh", "-c", "exit 1"]}],
                    "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}),
            ),
        )
        .await
        .expect("create init-loop");
    guard.push(always.metadata.uid.clone().unwrap());
    let p = wait_for("init-never Failed", Duration::from_secs(30), async || {
        pods.get("init-never")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
    })
    .await;
    let t = init_status(&p, "i")
        .and_then(|c| c.state.clone()?.terminated)
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (7, Some("Error")));
    assert_eq!(
        waiting_reason(container_status(&p, "c")).as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("False"));
    let p = wait_for(
        "init-loop CrashLoopBackOff",
        Duration::from_secs(30),
        async || {
            pods.get("init-loop").await.ok().filter(|p| {
                waiting_reason(init_status(p, "i")).as_deref() == Some("CrashLoopBackOff")
            })
        },
    )
    .await;
    assert!(init_status(&p, "i").unwrap().restart_count >= 1);
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    println!("pod spec: failing init containers ok");

    // preStop runs before SIGTERM (both write to a hostPath file that outlives the pod).
    let stop_log = hostdir.path().join("log");
    let stopper = pods
        .create(
            &PostParams::default(),
            &pod(
                "stopper",
                json!({"nodeName": "node-t", "terminationGracePeriodSeconds": 10,
                    "volumes": [{"name": "h", "hostPath": {"path": hostdir.path(), "type": "Directory"}}],
                    "containers": [{
                        "name": "c", "image": "busybox",
                        "volumeMounts": [{"name": "h", "mountPath": "/mnt"}],
                        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /mnt/log"]}}},
                        "command": ["sh", "-c", "trap 'echo term >> /mnt/log; exit 0' TERM; echo up > /mnt/up; while true; do sleep 0.1; done"]
                    }]}),
            ),
        )
        .await
        .expect("create stopper");
    guard.push(stopper.metadata.uid.clone().unwrap());
    wait_for("stopper up", Duration::from_secs(30), async || {
        hostdir.path().join("up").exists().then_some(())
    })
    .await;

    for name in ["spec", "needy", "init-never", "init-loop", "stopper"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    wait_for("pod spec pods gone", Duration::from_secs(60), async || {
        let left = pods.list(&ListParams::default()).await.ok()?.items;
        left.iter()
            .all(|p| {
                !["spec", "needy", "init-never", "init-loop", "stopper"]
                    .contains(&p.metadata.name.as_deref().unwrap_or_default())
            })
            .then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&stop_log).unwrap_or_default(),
        "prestop\nterm\n"
    );
    println!("pod spec: preStop before SIGTERM ok");
    assert!(
        !mounts.0.join("cfg").exists() && !mounts.0.exists(),
        "mount points the agent created are removed with the pod"
    );
    cms.delete("app-config", &DeleteParams::default())
        .await
        .expect("delete cm");
    secrets
        .delete("db", &DeleteParams::default())
        .await
        .expect("delete secret");
}
