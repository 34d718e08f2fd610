//! Integration fixes: unconditional writes under contention, Service type changes, SSA conflict messages,
//! decode errors, field selector labels, the binding's PodScheduled condition, in-process restart.

mod common;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use serde_json::json;
use skiff_api::testing::TestServer;

fn api_code(e: &kube::Error) -> Option<(u16, String)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.message.clone())),
        _ => None,
    }
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .expect("deployment")
}

/// Many writers without a resourceVersion on one object: merge, strategic, JSON patch, apply, PUT, status and
/// scale writes all succeed (upstream re-reads and retries); a PUT with a stale resourceVersion still gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_writes_retry_instead_of_conflicting() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("hot".into());
    cm.data = Some([("seed".to_string(), "0".to_string())].into());
    let first = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");

    const WRITERS: usize = 6;
    const ROUNDS: usize = 12;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cms = cms.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let key = format!("w{w}-r{r}");
                let res = match r % 4 {
                    0 => {
                        cms.patch(
                            "hot",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"data": {key.clone(): "v"}})),
                        )
                        .await
                    }
                    1 => {
                        cms.patch(
                            "hot",
                            &PatchParams::default(),
                            &Patch::Strategic(json!({"data": {key.clone(): "v"}})),
                        )
                        .await
                    }
                    2 => {
                        let p: json_patch::Patch = serde_json::from_value(
                            json!([{"op": "add", "path": format!("/data/{key}"), "value": "v"}]),
                        )
                        .expect("json patch");
                        cms.patch("hot", &PatchParams::default(), &Patch::<()>::Json(p))
                            .await
                    }
                    _ => {
                        let mgr = format!("mgr-{w}");
                        cms.patch(
                            "hot",
                            &PatchParams::apply(&mgr),
                            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "hot"}, "data": {key.clone(): "v"}})),
                        )
                        .await
                    }
                };
                if let Err(e) = res {
                    return Err(format!("{key}: {e}"));
                }
            }
            Ok(())
        }));
    }
    // PUT without a resourceVersion at the same time, on its own key
    let put_cms = cms.clone();
    let puts = tokio::spawn(async move {
        for r in 0..ROUNDS {
            let mut cur = put_cms.get("hot").await.map_err(|e| e.to_string())?;
            cur.metadata.resource_version = None;
            cur.metadata.managed_fields = None;
            cur.data
                .get_or_insert_with(Default::default)
                .insert("put".into(), r.to_string());
            put_cms
                .replace("hot", &PostParams::default(), &cur)
                .await
                .map_err(|e| format!("put {r}: {e}"))?;
        }
        Ok::<_, String>(())
    });
    for t in tasks {
        t.await.expect("join").expect("no 409 for patches");
    }
    puts.await
        .expect("join")
        .expect("no 409 for PUT without resourceVersion");
    let last = cms.get("hot").await.expect("get");
    let data = last.data.unwrap_or_default();
    // a PUT may overwrite keys patched after its read; the patches after the last PUT are all there, and every
    // patch returned success
    assert_eq!(data.get("put").map(String::as_str), Some("11"));

    // a PUT carrying a stale resourceVersion is still a conflict
    let mut stale = first.clone();
    stale.data = Some([("x".to_string(), "y".to_string())].into());
    let err = cms
        .replace("hot", &PostParams::default(), &stale)
        .await
        .expect_err("stale PUT");
    assert_eq!(api_code(&err).map(|c| c.0), Some(409), "{err}");

    // scale and status subresources under contention
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create deployment");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let deps = deps.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let res = match (w + r) % 3 {
                    0 => deps
                        .patch_scale(
                            "web",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"replicas": r + 1}})),
                        )
                        .await
                        .map(|_| ()),
                    1 => deps
                        .patch_status(
                            "web",
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"observedGeneration": r}})),
                        )
                        .await
                        .map(|_| ()),
                    _ => deps
                        .patch(
                            "web",
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"metadata": {"labels": {format!("w{w}"): r.to_string()}}}),
                            ),
                        )
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = res {
                    return Err(format!("writer {w} round {r}: {e}"));
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("no 409 on scale/status");
    }
    let d = deps.get("web").await.expect("get");
    let labels = d.metadata.labels.unwrap_or_default();
    // every writer's label patches landed (each writer had label rounds)
    for w in 0..WRITERS {
        assert!(labels.contains_key(&format!("w{w}")), "{labels:?}");
    }
    // the last scale write of some writer is what the deployment says
    let replicas = d.spec.and_then(|s| s.replicas).expect("replicas");
    assert!((1..=ROUNDS as i32).contains(&replicas), "{replicas}");
}

/// LoadBalancer → ClusterIP via a strategic patch (kubectl patch) drops node ports and externalTrafficPolicy
/// and releases the node ports; ClusterIP → ExternalName releases the cluster IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_type_change_drops_and_releases_type_dependent_fields() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let lb: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 80, "nodePort": 30080}]}
    }))
    .expect("svc");
    let created = svcs
        .create(&PostParams::default(), &lb)
        .await
        .expect("create lb");
    let spec = created.spec.clone().expect("spec");
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(
        spec.ports.as_ref().expect("ports")[0].node_port,
        Some(30080)
    );

    let k = common::Kubectl::new(&s);
    k.go(&[
        "patch",
        "svc",
        "lb",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .await
    .ok();
    let got = svcs.get("lb").await.expect("get");
    let spec = got.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.expect("ports")[0].node_port, None);
    assert_eq!(spec.external_traffic_policy, None);
    assert_eq!(spec.allocate_load_balancer_node_ports, None);
    assert_eq!(
        spec.cluster_ip,
        created.spec.as_ref().and_then(|s| s.cluster_ip.clone())
    );

    // the node port is free again
    let np: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}
    }))
    .expect("svc");
    svcs.create(&PostParams::default(), &np)
        .await
        .expect("node port 30080 was released");

    // NodePort -> ClusterIP with a PUT (kube-rs replace of the object as read) works too
    let mut cur = svcs.get("np").await.expect("get np");
    if let Some(spec) = cur.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
    }
    let replaced = svcs
        .replace("np", &PostParams::default(), &cur)
        .await
        .expect("NodePort -> ClusterIP by PUT");
    assert_eq!(
        replaced.spec.expect("spec").ports.expect("ports")[0].node_port,
        None
    );

    // ClusterIP -> ExternalName releases the cluster IP
    let ip = got_ip(&svcs, "lb").await;
    svcs.patch(
        "lb",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ExternalName", "externalName": "example.com"}})),
    )
    .await
    .expect("to ExternalName");
    let en = svcs.get("lb").await.expect("get").spec.expect("spec");
    assert_eq!(en.cluster_ip, None);
    let reuse: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "reuse"},
        "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
    }))
    .expect("svc");
    svcs.create(&PostParams::default(), &reuse)
        .await
        .expect("cluster IP was released");
}

async fn got_ip(svcs: &Api<Service>, name: &str) -> String {
    svcs.get(name)
        .await
        .expect("get")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster ip")
}

/// Server-side apply conflicts use upstream's message; wrongly typed fields are 400; unknown field selector
/// labels are 400; a PUT omitting allocated values keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_conflict_decode_error_field_labels_and_kept_allocations() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pp = PostParams {
        field_manager: Some("kubectl-client-side-apply".into()),
        ..Default::default()
    };
    deps.create(&pp, &deployment("d")).await.expect("create");
    let err = deps
        .patch(
            "d",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"replicas": 3}}),
            ),
        )
        .await
        .expect_err("conflict");
    assert_eq!(
        api_code(&err),
        Some((
            409,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
                .to_string()
        ))
    );

    // replicas as a string: 400, not 422 / 201
    let req = http::Request::post("/apis/apps/v1/namespaces/default/deployments")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
                "spec": {"replicas": "three", "selector": {"matchLabels": {"a": "b"}},
                         "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
            .expect("body"),
        )
        .expect("request");
    let err = client
        .request::<serde_json::Value>(req)
        .await
        .expect_err("decode error");
    let (code, msg) = api_code(&err).expect("api error");
    assert_eq!(code, 400, "{msg}");
    assert!(
        msg.starts_with("Deployment in version \"v1\" cannot be handled as a Deployment: "),
        "{msg}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let err = pods
        .list(&ListParams::default().fields("foo=bar"))
        .await
        .expect_err("unsupported label");
    assert_eq!(
        api_code(&err),
        Some((400, "field label not supported: foo".to_string()))
    );
    pods.list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("supported label");
    let err = pods
        .watch(&WatchParams::default().fields("foo=bar"), "0")
        .await
        .map(|_| ())
        .expect_err("unsupported label on watch");
    assert_eq!(api_code(&err).map(|c| c.0), Some(400));

    // a PUT that omits clusterIP and nodePort keeps the allocated ones
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let np: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]}
    }))
    .expect("svc");
    let created = svcs
        .create(&PostParams::default(), &np)
        .await
        .expect("create");
    let cspec = created.spec.clone().expect("spec");
    let put: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("svc");
    let after = svcs
        .replace("np", &PostParams::default(), &put)
        .await
        .expect("PUT without allocated values");
    let aspec = after.spec.expect("spec");
    assert_eq!(aspec.cluster_ip, cspec.cluster_ip);
    assert_eq!(
        aspec.ports.expect("ports")[0].node_port,
        cspec.ports.expect("ports")[0].node_port
    );
    assert_eq!(after.metadata.uid, created.metadata.uid);
}

/// The binding subresource marks the pod PodScheduled=True, as upstream's binding REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_sets_pod_scheduled_condition() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let req = http::Request::post("/api/v1/namespaces/default/pods/p/binding")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": "p", "annotations": {"scheduler.example/why": "test"}},
                "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}))
            .expect("body"),
        )
        .expect("request");
    client
        .request::<serde_json::Value>(req)
        .await
        .expect("bind");
    let p = pods.get("p").await.expect("get");
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    let conds = p.status.and_then(|s| s.conditions).unwrap_or_default();
    let sched: Vec<_> = conds.iter().filter(|c| c.type_ == "PodScheduled").collect();
    assert_eq!(sched.len(), 1, "{conds:?}");
    assert_eq!(sched[0].status, "True");
    assert!(sched[0].last_transition_time.is_some());
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("scheduler.example/why"))
            .map(String::as_str),
        Some("test")
    );
}

/// Shutting down closes watches and idle connections, so a new server can open the same data dir and port in
/// the same process while a kube-rs client still exists; the client's next request reaches the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_process_while_clients_hold_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = skiff_api::ServerConfig {
        history_window: 1000,
        ..skiff_api::testing::config(dir.path()).expect("config")
    };
    let first = skiff_api::serve(cfg.clone()).await.expect("first server");
    let kc = kube::config::Kubeconfig::read_from(&first.kubeconfig_path).expect("kubeconfig");
    let kconf = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(kconf).expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("before".into());
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let mut watch = cms
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    // the watch is established (initial ADDED arrives)
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
        .await
        .expect("first event");

    let addr = first.local_addr;
    first.shutdown();
    // the watch stream ends rather than hanging
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(ev) = watch.next().await {
            if ev.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "watch not closed by shutdown");

    let second = skiff_api::serve(skiff_api::ServerConfig {
        listen: addr,
        ..cfg.clone()
    })
    .await
    .expect("second server on the same data dir and port");
    let got = cms
        .get("before")
        .await
        .expect("client works against the new server");
    assert_eq!(got.metadata.name.as_deref(), Some("before"));
    drop(first);

    // dropping (without shutdown) releases the store too
    drop(second);
    let third = skiff_api::serve(skiff_api::ServerConfig {
        listen: addr,
        ..cfg
    })
    .await
    .expect("third server after drop");
    cms.get("before")
        .await
        .expect("client works against the third server");
    third.stop().await;
}
