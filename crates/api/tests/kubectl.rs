//! The machine's real kubectl (/usr/bin/kubectl, dispatching to 1.32) against a TestServer.

mod common;
use common::*;
use skiff_api::testing::TestServer;

async fn setup() -> (TestServer, Kubectl) {
    let s = TestServer::start().await.expect("server");
    let k = Kubectl::new(&s);
    (s, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_namespaces_and_kubernetes_service() {
    let (_s, k) = setup().await;
    let ns = k.go(&["get", "ns", "--show-labels"]).await;
    let text = ns.ok();
    assert_eq!(
        names(text),
        ["default", "kube-node-lease", "kube-public", "kube-system"],
        "{text}"
    );
    assert!(
        row(text, "kube-system")
            .iter()
            .any(|c| c == "kubernetes.io/metadata.name=kube-system"),
        "{text}"
    );
    let svc = k
        .go(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].name} {.spec.ports[0].port}",
        ])
        .await;
    assert_eq!(svc.ok(), "10.96.0.1 https 443");
    let ep = k
        .go(&[
            "get",
            "ep",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[0].addresses[0].ip}",
        ])
        .await;
    assert_eq!(ep.ok(), "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_created_unchanged_configured() {
    let (_s, k) = setup().await;
    let f = k.file("svc.yaml", SEED_CLUSTERIP);
    assert_eq!(
        k.go(&["apply", "-f", &f]).await.ok(),
        "service/demoapp-svc created\n"
    );
    assert_eq!(
        k.go(&["apply", "-f", &f]).await.ok(),
        "service/demoapp-svc unchanged\n"
    );
    let f2 = k.file(
        "svc2.yaml",
        &SEED_CLUSTERIP.replace("targetPort: 80 ", "targetPort: 8080 "),
    );
    assert_eq!(
        k.go(&["apply", "-f", &f2]).await.ok(),
        "service/demoapp-svc configured\n"
    );
    let tp = k
        .go(&[
            "get",
            "svc",
            "demoapp-svc",
            "-o",
            "jsonpath={.spec.ports[0].targetPort} {.spec.clusterIP}",
        ])
        .await;
    assert_eq!(tp.ok(), "8080 10.97.72.1");
}

/// Needs apimachinery defaults (Service type ClusterIP) for the TYPE column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_manifests_apply_and_get_svc_wide() {
    let (_s, k) = setup().await;
    for (n, m) in [
        ("c", SEED_CLUSTERIP),
        ("n", SEED_NODEPORT),
        ("l", SEED_LOADBALANCER),
        ("e", SEED_EXTERNALIP),
    ] {
        let f = k.file(&format!("{n}.yaml"), m);
        let out = k.go(&["apply", "-f", &f]).await;
        assert!(out.ok().ends_with(" created\n"), "{}", out.stdout);
    }
    let out = k.go(&["get", "svc", "-o", "wide"]).await;
    let t = out.ok();
    let header: Vec<&str> = t.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let r = row(t, "demoapp-svc");
    assert_eq!(
        [&r[1], &r[2], &r[3], &r[4], &r[6]],
        ["ClusterIP", "10.97.72.1", "<none>", "80/TCP", "app=demoapp"],
        "{t}"
    );
    let r = row(t, "demoapp-nodeport-svc");
    assert_eq!(
        [&r[1], &r[2], &r[3], &r[4]],
        ["NodePort", "10.97.56.1", "<none>", "80:31399/TCP"],
        "{t}"
    );
    let r = row(t, "demoapp-loadbalancer-svc");
    assert_eq!([&r[1], &r[3]], ["LoadBalancer", "<pending>"], "{t}");
    assert!(r[4].starts_with("80:3") && r[4].ends_with("/TCP"), "{t}");
    let r = row(t, "demoapp-externalip-svc");
    assert_eq!(
        [&r[1], &r[3], &r[4]],
        ["ClusterIP", "192.168.100.100", "80/TCP"],
        "{t}"
    );
    let r = row(t, "kubernetes");
    assert_eq!(
        [&r[1], &r[2], &r[4], &r[6]],
        ["ClusterIP", "10.96.0.1", "443/TCP", "<none>"],
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_errors_change_nothing() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("c.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    k.go(&["apply", "-f", &k.file("n.yaml", SEED_NODEPORT)])
        .await
        .ok();
    let before = k.go(&["get", "svc", "-o", "name"]).await.ok().to_string();

    let dup_ip = k.file("dup.yaml", &SEED_CLUSTERIP.replace("demoapp-svc", "dup"));
    let out = k.go(&["apply", "-f", &dup_ip]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "The Service \"dup\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.97.72.1\"}: failed to allocate IP 10.97.72.1: provided IP is already allocated\n"
    );
    let dup_port = k.file(
        "dupnp.yaml",
        &SEED_NODEPORT
            .replace("demoapp-nodeport-svc", "dupnp")
            .replace("10.97.56.1", "10.97.56.2"),
    );
    let out = k.go(&["apply", "-f", &dup_port]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr, "The Service \"dupnp\" is invalid: spec.ports[0].nodePort: Invalid value: 31399: provided port is already allocated\n");
    let range = k.file(
        "range.yaml",
        &SEED_CLUSTERIP
            .replace("demoapp-svc", "far")
            .replace("10.97.72.1", "10.200.0.1"),
    );
    let out = k.go(&["apply", "-f", &range]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "The Service \"far\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.200.0.1\"}: failed to allocate IP 10.200.0.1: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12\n"
    );
    let mal = k.file("mal.yaml", "apiVersion: v1\nkind: Service\nmetadata: [\n");
    let out = k.go(&["apply", "-f", &mal]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("error converting YAML to JSON"),
        "{}",
        out.stderr
    );
    assert_eq!(k.go(&["get", "svc", "-o", "name"]).await.ok(), before);
    // The failed attempts reserved nothing: the IP and port are free once their holders are deleted.
    k.go(&["delete", "svc", "demoapp-nodeport-svc"]).await.ok();
    assert_eq!(
        k.go(&["apply", "-f", &dup_port]).await.ok(),
        "service/dupnp created\n"
    );
}

/// Needs apimachinery validation (ports) and unknown-field detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_port_and_unknown_field_rejected() {
    let (_s, k) = setup().await;
    let bad = k.file(
        "bad.yaml",
        &SEED_CLUSTERIP
            .replace("demoapp-svc", "badport")
            .replace("    port: 80", "    port: 0")
            .replace("  clusterIP: 10.97.72.1", ""),
    );
    let out = k.go(&["apply", "-f", &bad]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains(
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        ),
        "{}",
        out.stderr
    );
    let unk = k.file(
        "unk.yaml",
        &SEED_CLUSTERIP
            .replace("demoapp-svc", "unk")
            .replace("spec: \n", "spec: \n  foo: bar\n"),
    );
    let out = k.go(&["apply", "-f", &unk]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("unknown field \"spec.foo\""),
        "{}",
        out.stderr
    );
    let names = k.go(&["get", "svc", "-o", "name"]).await;
    assert_eq!(names.ok(), "service/kubernetes\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_formats_selectors_and_namespaces() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("c.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    k.go(&["label", "svc", "demoapp-svc", "tier=web"])
        .await
        .ok();
    assert_eq!(
        k.go(&["get", "svc", "-o", "name"]).await.ok(),
        "service/demoapp-svc\nservice/kubernetes\n"
    );
    assert_eq!(
        k.go(&["get", "svc", "-l", "tier=web", "-o", "name"])
            .await
            .ok(),
        "service/demoapp-svc\n"
    );
    assert_eq!(
        k.go(&["get", "svc", "-l", "tier in (db,web),!nope", "-o", "name"])
            .await
            .ok(),
        "service/demoapp-svc\n"
    );
    let json = k.go(&["get", "svc", "demoapp-svc", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(json.ok()).expect("json");
    assert_eq!(v["metadata"]["labels"]["tier"], "web");
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(v["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|r| r.parse::<u64>().is_ok()));
    let yaml = k.go(&["get", "svc", "demoapp-svc", "-o", "yaml"]).await;
    assert!(
        yaml.ok().contains("  clusterIP: 10.97.72.1\n"),
        "{}",
        yaml.stdout
    );
    let all_ns = k.go(&["get", "svc", "-A"]).await;
    let t = all_ns.ok();
    assert_eq!(row(t, "default")[1], "demoapp-svc", "{t}");
    let empty = k.go(&["get", "svc", "-n", "kube-public"]).await;
    assert_eq!(
        (empty.code, empty.stderr.as_str()),
        (0, "No resources found in kube-public namespace.\n")
    );
    let nf = k.go(&["get", "svc", "nosuch"]).await;
    assert_eq!(
        (nf.code, nf.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): services \"nosuch\" not found\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_lists_category_all() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("d.yaml", DEPLOYMENT)])
        .await
        .ok();
    let out = k.go(&["get", "all"]).await;
    let t = out.ok();
    assert!(
        t.lines().any(|l| l.starts_with("service/kubernetes ")),
        "{t}"
    );
    assert!(
        t.lines().any(|l| l.starts_with("deployment.apps/demoapp ")),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_new_objects_once() {
    let (_s, k) = setup().await;
    let kw = k.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        let k = kw;
        // kubectl keeps watching until killed: a short request timeout ends it.
        k.run(&["get", "svc", "-w", "--request-timeout=3s"])
    });
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    k.go(&["apply", "-f", &k.file("c.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    let out = watcher.await.expect("join");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", out.stdout);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("kubernetes "))
            .count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("demoapp-svc "))
            .count(),
        1,
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_expose_label_annotate() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("d.yaml", DEPLOYMENT)])
        .await
        .ok();
    assert_eq!(
        k.go(&["scale", "deployment", "demoapp", "--replicas=4"])
            .await
            .ok(),
        "deployment.apps/demoapp scaled\n"
    );
    assert_eq!(
        k.go(&[
            "get",
            "deploy",
            "demoapp",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .await
        .ok(),
        "4"
    );
    assert_eq!(
        k.go(&[
            "scale",
            "deployment",
            "demoapp",
            "--current-replicas=4",
            "--replicas=1"
        ])
        .await
        .ok(),
        "deployment.apps/demoapp scaled\n"
    );
    assert_eq!(
        k.go(&[
            "get",
            "deploy",
            "demoapp",
            "-o",
            "jsonpath={.spec.replicas}"
        ])
        .await
        .ok(),
        "1"
    );
    assert_eq!(
        k.go(&["expose", "deployment", "demoapp", "--port=80", "--name=exp"])
            .await
            .ok(),
        "service/exp exposed\n"
    );
    assert_eq!(
        k.go(&["get", "svc", "exp", "-o", "jsonpath={.spec.selector.app}"])
            .await
            .ok(),
        "demoapp"
    );
    assert_eq!(
        k.go(&["label", "svc", "exp", "tier=web"]).await.ok(),
        "service/exp labeled\n"
    );
    assert_eq!(
        k.go(&["annotate", "svc", "exp", "note=hi"]).await.ok(),
        "service/exp annotated\n"
    );
    let v = k
        .go(&[
            "get",
            "svc",
            "exp",
            "-o",
            "jsonpath={.metadata.labels.tier} {.metadata.annotations.note}",
        ])
        .await;
    assert_eq!(v.ok(), "web hi");
    assert_eq!(
        k.go(&["label", "svc", "exp", "tier-"]).await.ok(),
        "service/exp unlabeled\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_three_types_and_replace() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("c.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    let p = k
        .go(&[
            "patch",
            "svc",
            "demoapp-svc",
            "-p",
            r#"{"spec":{"ports":[{"port":80,"targetPort":9090}]}}"#,
        ])
        .await;
    assert_eq!(p.ok(), "service/demoapp-svc patched\n");
    let p = k
        .go(&[
            "patch",
            "svc",
            "demoapp-svc",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ])
        .await;
    assert_eq!(p.ok(), "service/demoapp-svc patched\n");
    let p = k
        .go(&[
            "patch",
            "svc",
            "demoapp-svc",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
        ])
        .await;
    assert_eq!(p.ok(), "service/demoapp-svc patched\n");
    let v = k.go(&["get", "svc", "demoapp-svc", "-o", "jsonpath={.spec.ports[0].name} {.spec.ports[0].targetPort} {.metadata.labels.m} {.metadata.labels.j}"]).await;
    assert_eq!(v.ok(), "http 9090 1 2");
    // replace with the current object works; with a stale resourceVersion it conflicts.
    let y = k
        .go(&["get", "svc", "demoapp-svc", "-o", "yaml"])
        .await
        .ok()
        .to_string();
    let f = k.file("cur.yaml", &y.replace("app: demoapp", "app: other"));
    assert_eq!(
        k.go(&["replace", "-f", &f]).await.ok(),
        "service/demoapp-svc replaced\n"
    );
    let out = k.go(&["replace", "-f", &f]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "Error from server (Conflict): error when replacing \"".to_string()
            + &f
            + "\": Operation cannot be fulfilled on services \"demoapp-svc\": the object has been modified; please apply your changes to the latest version and try again\n"
    );
    assert_eq!(
        k.go(&[
            "get",
            "svc",
            "demoapp-svc",
            "-o",
            "jsonpath={.spec.selector.app}"
        ])
        .await
        .ok(),
        "other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_server_changes_nothing() {
    let (_s, k) = setup().await;
    let f = k.file("c.yaml", SEED_CLUSTERIP);
    assert_eq!(
        k.go(&["apply", "-f", &f, "--dry-run=server"]).await.ok(),
        "service/demoapp-svc created (server dry run)\n"
    );
    let nf = k.go(&["get", "svc", "demoapp-svc"]).await;
    assert_eq!(nf.code, 1);
    k.go(&["apply", "-f", &f]).await.ok();
    assert_eq!(
        k.go(&["delete", "svc", "demoapp-svc", "--dry-run=server"])
            .await
            .ok(),
        "service \"demoapp-svc\" deleted (server dry run)\n"
    );
    assert_eq!(
        k.go(&["get", "svc", "demoapp-svc", "-o", "name"])
            .await
            .ok(),
        "service/demoapp-svc\n"
    );
    // A dry-run create of another service with the same IP is rejected like the real one.
    let dup = k.file("dup.yaml", &SEED_CLUSTERIP.replace("demoapp-svc", "dup"));
    let out = k.go(&["apply", "-f", &dup, "--dry-run=server"]).await;
    assert_eq!(out.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_name_and_file() {
    let (_s, k) = setup().await;
    let f = k.file("c.yaml", SEED_CLUSTERIP);
    k.go(&["apply", "-f", &f]).await.ok();
    assert_eq!(
        k.go(&["delete", "-f", &f]).await.ok(),
        "service \"demoapp-svc\" deleted\n"
    );
    k.go(&["apply", "-f", &f]).await.ok();
    assert_eq!(
        k.go(&["delete", "svc", "demoapp-svc"]).await.ok(),
        "service \"demoapp-svc\" deleted\n"
    );
    let nf = k.go(&["delete", "svc", "demoapp-svc"]).await;
    assert_eq!(
        (nf.code, nf.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): services \"demoapp-svc\" not found\n"
        )
    );
    // The IP was released.
    assert_eq!(
        k.go(&[
            "apply",
            "-f",
            &k.file("d.yaml", &SEED_CLUSTERIP.replace("demoapp-svc", "again"))
        ])
        .await
        .ok(),
        "service/again created\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion() {
    let (_s, k) = setup().await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\ndata:\n  a: b\n";
    k.go(&["apply", "-f", &k.file("cm.yaml", cm)]).await.ok();
    assert_eq!(
        k.go(&["delete", "cm", "held", "--wait=false"]).await.ok(),
        "configmap \"held\" deleted\n"
    );
    let ts = k
        .go(&[
            "get",
            "cm",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(!ts.ok().is_empty());
    k.go(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await
    .ok();
    let nf = k.go(&["get", "cm", "held"]).await;
    assert_eq!(nf.code, 1, "{}", nf.stdout);
    // Foreground cascading deletion leaves the object to the garbage collector with its finalizer.
    k.go(&["apply", "-f", &k.file("d.yaml", DEPLOYMENT)])
        .await
        .ok();
    k.go(&[
        "delete",
        "deploy",
        "demoapp",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await
    .ok();
    let f = k
        .go(&[
            "get",
            "deploy",
            "demoapp",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .await;
    assert_eq!(f.ok(), r#"["foregroundDeletion"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_delete_removes_contents() {
    let (_s, k) = setup().await;
    k.go(&[
        "apply",
        "-f",
        &k.file(
            "ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n",
        ),
    ])
    .await
    .ok();
    let svc = SEED_CLUSTERIP.replace("namespace: default", "namespace: scratch");
    k.go(&["apply", "-f", &k.file("c.yaml", &svc)]).await.ok();
    assert_eq!(
        k.go(&["delete", "ns", "scratch"]).await.ok(),
        "namespace \"scratch\" deleted\n"
    );
    let out = k.go(&["get", "svc", "-A", "-o", "name"]).await;
    assert_eq!(out.ok(), "service/kubernetes\n");
    // The cluster IP came back.
    k.go(&["apply", "-f", &k.file("c2.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    let out = k.go(&["delete", "ns", "default"]).await;
    assert_eq!((out.code, out.stderr.as_str()), (1, "Error from server (Forbidden): namespaces \"default\" is forbidden: this namespace may not be deleted\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_service_uses_endpointslices() {
    let (_s, k) = setup().await;
    let out = k.go(&["describe", "svc", "kubernetes"]).await;
    let t = out.ok();
    // describe aligns values to the longest label; compare label → value.
    let field = |label: &str| -> String {
        t.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{label}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(field("Name"), "kubernetes", "{t}");
    assert_eq!(field("IP"), "10.96.0.1", "{t}");
    assert_eq!(field("Port"), "https  443/TCP", "{t}");
    assert_eq!(
        field("Endpoints"),
        format!("127.0.0.1:{}", _s.url.rsplit(':').next().unwrap_or("")),
        "{t}"
    );
}

/// Needs apimachinery protobuf decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_generators_protobuf() {
    let (_s, k) = setup().await;
    assert_eq!(
        k.go(&["create", "namespace", "gen"]).await.ok(),
        "namespace/gen created\n"
    );
    assert_eq!(
        k.go(&[
            "create",
            "deployment",
            "web",
            "--image=ikubernetes/demoapp:v1.0",
            "--replicas=2"
        ])
        .await
        .ok(),
        "deployment.apps/web created\n"
    );
    assert_eq!(
        k.go(&["create", "service", "clusterip", "web", "--tcp=80:8080"])
            .await
            .ok(),
        "service/web created\n"
    );
    let v = k
        .go(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(v.ok(), "2 ikubernetes/demoapp:v1.0");
    let v = k
        .go(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort}",
        ])
        .await;
    assert_eq!(v.ok(), "80 8080");
}

/// Needs apimachinery server-side apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_server_side() {
    let (_s, k) = setup().await;
    let f = k.file("c.yaml", SEED_CLUSTERIP);
    assert_eq!(
        k.go(&["apply", "--server-side", "-f", &f]).await.ok(),
        "service/demoapp-svc serverside-applied\n"
    );
    let f2 = k.file(
        "c2.yaml",
        &SEED_CLUSTERIP.replace("targetPort: 80 ", "targetPort: 8080 "),
    );
    assert_eq!(
        k.go(&["apply", "--server-side", "-f", &f2]).await.ok(),
        "service/demoapp-svc serverside-applied\n"
    );
    let v = k
        .go(&[
            "get",
            "svc",
            "demoapp-svc",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}",
        ])
        .await;
    assert_eq!(v.ok(), "8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_with_scripted_editor() {
    let (_s, k) = setup().await;
    k.go(&["apply", "-f", &k.file("c.yaml", SEED_CLUSTERIP)])
        .await
        .ok();
    let editor = k.file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/app: demoapp/app: edited/' \"$1\"\n",
    );
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    let out = k
        .go_env(&["edit", "svc", "demoapp-svc"], &[("KUBE_EDITOR", &editor)])
        .await;
    assert_eq!(out.ok(), "service/demoapp-svc edited\n");
    assert_eq!(
        k.go(&[
            "get",
            "svc",
            "demoapp-svc",
            "-o",
            "jsonpath={.spec.selector.app}"
        ])
        .await
        .ok(),
        "edited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_pod_and_deployment_and_explain() {
    let (_s, k) = setup().await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  containers:\n  - name: c\n    image: ikubernetes/demoapp:v1.0\n    ports:\n    - containerPort: 80\n";
    assert_eq!(
        k.go(&["apply", "-f", &k.file("pod.yaml", pod)]).await.ok(),
        "pod/web created\n"
    );
    let out = k.go(&["describe", "pod", "web"]).await;
    let t = out.ok();
    let field = |t: &str, label: &str| -> String {
        t.lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(&format!("{label}:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(field(t, "Name"), "web", "{t}");
    assert_eq!(field(t, "Labels"), "app=web", "{t}");
    // Defaulted container port protocol (without defaulting kubectl prints `80/`).
    assert_eq!(field(t, "Port"), "80/TCP", "{t}");
    k.go(&["apply", "-f", &k.file("d.yaml", DEPLOYMENT)])
        .await
        .ok();
    let out = k.go(&["describe", "deploy", "demoapp"]).await;
    let t = out.ok();
    assert_eq!(field(t, "Selector"), "app=demoapp", "{t}");
    assert_eq!(field(t, "StrategyType"), "RollingUpdate", "{t}");
    let out = k.go(&["explain", "svc"]).await;
    assert!(
        out.ok()
            .starts_with("KIND:       Service\nVERSION:    v1\n"),
        "{}",
        out.stdout
    );
}
