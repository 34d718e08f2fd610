//! End-to-end (issue 14, the pod spec users write) with the real kubectl on `skiff up`: init containers and
//! their STATUS column (`Init:0/1`, `Init:Error`, `Init:CrashLoopBackOff`), env from a ConfigMap key, a
//! configMap volume that follows `kubectl edit cm`, `CreateContainerConfigError`, `runAsUser`, preStop before
//! SIGTERM; `kubectl explain` at several depths from upstream's schemas; `kubectl get svc -o json | kubectl
//! apply -f -` (a List, validated by kubectl against /openapi/v2).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn apply(c: &TestCluster, manifest: &str) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "kubectl apply: {}", text(&out));
}

fn jsonpath(c: &TestCluster, name: &str, path: &str) -> String {
    stdout(&c.kubectl(&["get", "pod", name, "-o", &format!("jsonpath={path}")]))
}

/// The STATUS column of `kubectl get pod NAME`.
fn status_column(c: &TestCluster, name: &str) -> String {
    let out = c.kubectl(&["get", "pod", name, "--no-headers"]);
    stdout(&out)
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

fn wait_status(c: &TestCluster, name: &str, want: &str) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last = status_column(c, name);
        last == want
    });
    let pod = c.kubectl(&["get", "pod", name, "-o", "yaml"]);
    assert!(
        ok,
        "pod {name}: STATUS {last:?}, want {want:?}\n{}",
        text(&pod)
    );
}

/// Everything the container wrote, from the files its node's agent keeps.
fn container_log(c: &TestCluster, pod: &str, container: &str) -> String {
    let uid = jsonpath(c, pod, "{.metadata.uid}");
    let node = jsonpath(c, pod, "{.spec.nodeName}");
    let index = node.strip_prefix("node-").unwrap_or(&node).to_string();
    let dir = c
        .data_dir
        .join(format!("nodes/{index}/state/pods/{uid}/logs/{container}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

fn wait_log(c: &TestCluster, pod: &str, container: &str, needle: &str) -> String {
    let mut log = String::new();
    let ok = wait_until(Duration::from_secs(90), || {
        log = container_log(c, pod, container);
        log.contains(needle)
    });
    assert!(ok, "no {needle:?} in {pod}/{container}'s output:\n{log}");
    log
}

/// A host directory for hostPath volumes and mount points, removed at the end.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn explain(c: &TestCluster, args: &[&str]) -> String {
    let mut full = vec!["explain"];
    full.extend_from_slice(args);
    let out = c.kubectl(&full);
    assert!(out.status.success(), "kubectl {full:?}: {}", text(&out));
    stdout(&out)
}

#[test]
fn pod_spec_explain_and_list_apply() {
    let c = TestCluster::new(1);
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let host = HostDir(PathBuf::from(format!("/run/skiff-e2e-{}", c.name)));
    std::fs::create_dir_all(host.0.join("shared")).expect("host dir");
    let shared = host.0.join("shared");
    // The app container runs as uid 1234 and writes here.
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let cfg = host.0.join("mnt/cfg");

    // kubectl explain: upstream's descriptions and types at every depth.
    let port = explain(&c, &["service.spec.ports.targetPort"]);
    for want in [
        "KIND:       Service",
        "VERSION:    v1",
        "FIELD: targetPort <IntOrString>",
        "Number or name of the port to access on the pods targeted by the service.",
    ] {
        assert!(port.contains(want), "missing {want:?} in\n{port}");
    }
    let containers = explain(&c, &["deploy.spec.template.spec.containers", "--recursive"]);
    for want in [
        "GROUP:      apps",
        "KIND:       Deployment",
        "FIELD: containers <[]Container>",
        "livenessProbe\t<Probe>",
        "httpGet\t<HTTPGetAction>",
        "configMapKeyRef\t<ConfigMapKeySelector>",
    ] {
        assert!(
            containers.contains(want),
            "missing {want:?} in\n{containers}"
        );
    }
    let volumes = explain(&c, &["pod.spec.volumes.configMap.items"]);
    assert!(volumes.contains("FIELD: items <[]KeyToPath>"), "{volumes}");
    let missing = c.kubectl(&["explain", "pod.spec.nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("field \"nope\" does not exist"),
        "{}",
        text(&missing)
    );
    println!("kubectl explain ok");

    // A List from `kubectl get -o json` applies back (client-side validation against /openapi/v2).
    let list = c.kubectl(&["get", "svc", "-o", "json"]);
    assert!(list.status.success(), "{}", text(&list));
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &stdout(&list));
    assert!(out.status.success(), "List apply: {}", text(&out));
    assert!(
        stdout(&out).contains("service/kubernetes"),
        "{}",
        text(&out)
    );
    println!("List apply ok");

    let out = c.kubectl(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Init containers: Init:0/1 while the first waits (for a file the test creates), then Running.
    apply(
        &c,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 10
  volumes:
  - {{name: cfg, configMap: {{name: app}}}}
  - {{name: shared, hostPath: {{path: {shared}, type: Directory}}}}
  initContainers:
  - name: wait
    image: busybox
    command: ["sh", "-c", "until test -f /shared/go; do sleep 0.1; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: app
    image: busybox
    securityContext: {{runAsUser: 1234}}
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: app, key: greeting}}}}
    volumeMounts:
    - {{name: cfg, mountPath: {cfg}}}
    - {{name: shared, mountPath: /shared}}
    lifecycle:
      preStop: {{exec: {{command: ["sh", "-c", "echo prestop >> /shared/stop"]}}}}
    command: ["sh", "-c", "trap 'echo term >> /shared/stop; exit 0' TERM; echo uid=$(id -u) env=$GREETING; while true; do echo file=$(cat {cfg}/greeting); sleep 0.3; done"]
"#,
            shared = shared.display(),
            cfg = cfg.display()
        ),
    );
    wait_status(&c, "web", "Init:0/1");
    std::fs::write(shared.join("go"), "").expect("go");
    wait_status(&c, "web", "Running");
    let log = wait_log(&c, "web", "app", "file=hello");
    assert!(log.contains("uid=1234 env=hello"), "{log}");
    println!("init container, env from a ConfigMap key, runAsUser ok");

    // kubectl edit of the ConfigMap: the mounted file follows, as kubelet's atomic update does.
    let edit = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["edit", "configmap", "app"])
        .env("KUBE_EDITOR", "sed -i s/hello/bonjour/")
        .output()
        .expect("kubectl edit");
    assert!(edit.status.success(), "kubectl edit: {}", text(&edit));
    wait_log(&c, "web", "app", "file=bonjour");
    println!("configMap volume updated after kubectl edit ok");

    // A missing key: CreateContainerConfigError with kubelet's message.
    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: needy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    env:
    - name: X
      valueFrom: {configMapKeyRef: {name: app, key: absent}}
"#,
    );
    wait_status(&c, "needy", "CreateContainerConfigError");
    assert_eq!(
        jsonpath(
            &c,
            "needy",
            "{.status.containerStatuses[0].state.waiting.message}"
        ),
        "couldn't find key absent in ConfigMap default/app"
    );

    // Failing init containers: Init:Error (restartPolicy Never), Init:CrashLoopBackOff (Always).
    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: init-error}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers: [{name: i, image: busybox, command: ["sh", "-c", "exit 1"]}]
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: init-loop}
spec:
  terminationGracePeriodSeconds: 1
  initContainers: [{name: i, image: busybox, command: ["sh", "-c", "exit 1"]}]
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
"#,
    );
    wait_status(&c, "init-error", "Init:Error");
    wait_status(&c, "init-loop", "Init:CrashLoopBackOff");
    println!("init container failures ok");

    // preStop before SIGTERM, within the grace period.
    let out = c.kubectl(&["delete", "pod", "web", "needy", "init-error", "init-loop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(shared.join("stop")).unwrap_or_default(),
        "prestop\nterm\n"
    );
    assert!(
        !Path::new(&host.0.join("mnt")).exists(),
        "mount points the agent created are removed with the pod"
    );
    println!("preStop ok");

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
