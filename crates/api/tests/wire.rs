//! Wire-level behaviour (curl) and kube-rs clients against a TestServer.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use skiff_api::testing::TestServer;
use std::process::Command;

struct Curl {
    url: String,
    token: String,
    ca: tempfile::NamedTempFile,
}

struct Reply {
    code: u16,
    headers: String,
    body: String,
}

impl Curl {
    fn new(s: &TestServer) -> Self {
        let ca = tempfile::NamedTempFile::new().expect("ca file");
        std::fs::write(ca.path(), &s.ca_pem).expect("write ca");
        Self {
            url: s.url.clone(),
            token: s.token.clone(),
            ca,
        }
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<Vec<u8>>,
        auth: bool,
    ) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-D",
            "-",
            "--max-time",
            "5",
            "-X",
            method,
            "--cacert",
        ])
        .arg(self.ca.path());
        if auth {
            cmd.arg("-H")
                .arg(format!("Authorization: Bearer {}", self.token));
        }
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        let body_file = tempfile::NamedTempFile::new().expect("body file");
        if let Some(b) = body {
            std::fs::write(body_file.path(), b).expect("write body");
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_file.path().display()));
        }
        cmd.arg(format!("{}{}", self.url, path));
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = headers
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Reply {
            code,
            headers: headers.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_version_health_discovery() {
    let s = TestServer::start().await.expect("server");
    let c = Curl::new(&s);
    let r = c.req("GET", "/api/v1/namespaces", &[], None, false).await;
    assert_eq!(r.code, 401);
    assert_eq!(json(&r)["reason"], "Unauthorized");
    let r = c
        .req(
            "GET",
            "/api/v1/namespaces",
            &["Authorization: Bearer wrong"],
            None,
            false,
        )
        .await;
    assert_eq!(r.code, 401);
    let r = c.req("GET", "/version", &[], None, false).await;
    assert_eq!((r.code, json(&r)["minor"].as_str()), (200, Some("32")));
    assert_eq!(c.req("GET", "/readyz", &[], None, false).await.body, "ok");
    let accept = "Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let r = c.req("GET", "/apis", &[accept], None, true).await;
    assert!(r.headers.contains("content-type: application/json;g=apidiscovery.k8s.io;v=v2;as=apigroupdiscoverylist\r\n"), "{}", r.headers);
    let groups: Vec<String> = json(&r)["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|g| g["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        groups,
        [
            "discovery.k8s.io",
            "apps",
            "networking.k8s.io",
            "coordination.k8s.io",
            "events.k8s.io"
        ]
    );
    let r = c.req("GET", "/api/v1", &[], None, true).await;
    let names: Vec<String> = json(&r)["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|x| x["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        names.contains(&"services/status".to_string()) && names.contains(&"endpoints".to_string()),
        "{names:?}"
    );
    let r = c.req("GET", "/openapi/v3", &[], None, true).await;
    assert!(json(&r)["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .is_some_and(|u| u.starts_with("/openapi/v3/apis/apps/v1?hash=")));
    // /openapi/v2: upstream's definitions, as JSON or as the protobuf kubectl asks for first.
    let r = c.req("GET", "/openapi/v2", &[], None, true).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(
        json(&r)["definitions"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]["items"]
            ["$ref"],
        "#/definitions/io.k8s.api.core.v1.ServicePort"
    );
    let r = c
        .req(
            "GET",
            "/openapi/v2",
            &["Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf"],
            None,
            true,
        )
        .await;
    assert_eq!(r.code, 200);
    assert!(
        r.headers.contains(
            "content-type: application/com.github.proto-openapi.spec.v2.v1.0+protobuf\r\n"
        ),
        "{}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_limits_and_tables() {
    // A short watch history so that revision 1 falls out of it.
    let s = TestServer::start_with_short_history()
        .await
        .expect("server");
    let c = Curl::new(&s);
    let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"k":"v"}}"#
        .to_vec();
    let r = c
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &["Content-Type: application/json"],
            Some(cm.clone()),
            true,
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let created = json(&r);
    assert_eq!(created["metadata"]["generation"], 1);
    let r = c
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &["Content-Type: application/json"],
            Some(cm),
            true,
        )
        .await;
    assert_eq!(
        (
            r.code,
            json(&r)["reason"].as_str(),
            json(&r)["message"].as_str()
        ),
        (
            409,
            Some("AlreadyExists"),
            Some("configmaps \"a\" already exists")
        )
    );
    // YAML body.
    let y = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n".to_vec();
    let r = c
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &["Content-Type: application/yaml"],
            Some(y),
            true,
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    // Stale update.
    let mut stale = created.clone();
    stale["data"]["k"] = serde_json::json!("w");
    let body = serde_json::to_vec(&stale).expect("json");
    let r = c
        .req(
            "PUT",
            "/api/v1/namespaces/default/configmaps/a",
            &["Content-Type: application/json"],
            Some(body.clone()),
            true,
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = c
        .req(
            "PUT",
            "/api/v1/namespaces/default/configmaps/a",
            &["Content-Type: application/json"],
            Some(body),
            true,
        )
        .await;
    assert_eq!(r.code, 409);
    assert_eq!(json(&r)["message"], "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again");
    // Unsupported media type, oversized body, unknown path, bad method.
    let r = c
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &["Content-Type: text/csv"],
            Some(b"a,b".to_vec()),
            true,
        )
        .await;
    assert_eq!(
        (r.code, json(&r)["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"k":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let r = c
        .req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &["Content-Type: application/json"],
            Some(big.into_bytes()),
            true,
        )
        .await;
    assert_eq!(
        (r.code, json(&r)["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );
    assert_eq!(
        c.req(
            "GET",
            "/api/v1/namespaces/default/configmaps/big",
            &[],
            None,
            true
        )
        .await
        .code,
        404
    );
    assert_eq!(
        c.req("GET", "/api/v1/nosuch", &[], None, true).await.code,
        404
    );
    assert_eq!(
        c.req(
            "POST",
            "/api/v1/namespaces/default/configmaps/a",
            &[],
            Some(b"{}".to_vec()),
            true
        )
        .await
        .code,
        405
    );
    // Garbage bodies never crash the server.
    for junk in [
        &b"\x00\xff\xfe"[..],
        b"k8s\x00\x01\x02",
        b"[1,2",
        b"null",
        b"{\"metadata\":5}",
    ] {
        for ct in [
            "application/json",
            "application/yaml",
            "application/vnd.kubernetes.protobuf",
        ] {
            let r = c
                .req(
                    "POST",
                    "/api/v1/namespaces/default/services",
                    &[&format!("Content-Type: {ct}")],
                    Some(junk.to_vec()),
                    true,
                )
                .await;
            assert!(
                (400..500).contains(&r.code),
                "{ct} {junk:?}: {} {}",
                r.code,
                r.body
            );
        }
    }
    assert_eq!(c.req("GET", "/healthz", &[], None, false).await.code, 200);
    // Table output with PartialObjectMetadata rows and a list resourceVersion.
    let accept = "Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let r = c
        .req(
            "GET",
            "/api/v1/namespaces/default/configmaps?limit=500",
            &[accept],
            None,
            true,
        )
        .await;
    let t = json(&r);
    assert_eq!(t["kind"], "Table");
    assert!(t["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "a");
    // Paging.
    let r = c
        .req(
            "GET",
            "/api/v1/namespaces/default/configmaps?limit=1",
            &[],
            None,
            true,
        )
        .await;
    let p1 = json(&r);
    assert_eq!(p1["items"].as_array().map(|a| a.len()), Some(1));
    let cont = p1["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let r = c
        .req(
            "GET",
            &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={cont}"),
            &[],
            None,
            true,
        )
        .await;
    let p2 = json(&r);
    assert_eq!(p2["items"][0]["metadata"]["name"], "y");
    assert!(p2["metadata"].get("continue").is_none());
    // Watch from a revision that left the history window: one ERROR event with a 410 Status.
    s.compact_history().await.expect("compact");
    let r = c
        .req(
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
            &[],
            None,
            true,
        )
        .await;
    assert_eq!(r.code, 200);
    let ev: serde_json::Value =
        serde_json::from_str(r.body.lines().next().unwrap_or("")).expect("event");
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["code"].as_u64()),
        (Some("ERROR"), Some(410))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_list_watch_patch() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kr".into());
    cm.data = Some([("a".to_string(), "1".to_string())].into());
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().fields("metadata.name=kr"), &rv)
        .await
        .expect("watch")
        .boxed();
    let patch = serde_json::json!({"data": {"b": "2"}});
    cms.patch("kr", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.try_next())
        .await
        .expect("event in time")
        .expect("ok");
    match ev {
        Some(WatchEvent::Modified(o)) => assert_eq!(
            o.data.and_then(|d| d.get("b").cloned()),
            Some("2".to_string())
        ),
        other => panic!("unexpected {other:?}"),
    }
    cms.delete("kr", &Default::default()).await.expect("delete");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.try_next())
        .await
        .expect("event in time")
        .expect("ok");
    assert!(matches!(ev, Some(WatchEvent::Deleted(_))), "{ev:?}");
    let svcs: Api<Service> = Api::all(client.clone());
    let list = svcs.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0]
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .as_deref(),
        Some("10.96.0.1")
    );
    // A kube-runtime watcher sees the initial list.
    let w = kube::runtime::watcher(svcs, kube::runtime::watcher::Config::default());
    let mut w = w.boxed();
    let mut seen = false;
    for _ in 0..5 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), w.try_next())
            .await
            .expect("in time")
            .expect("ok")
        {
            Some(kube::runtime::watcher::Event::InitApply(o)) => {
                seen = o.metadata.name.as_deref() == Some("kubernetes");
            }
            Some(kube::runtime::watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert!(seen);
}

/// The scheduler's binding subresource and graceful pod deletion as the kubelet sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_binding_and_graceful_delete() {
    use k8s_openapi::api::core::v1::{Binding, Pod};
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let binding: Binding = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "node-1"}
    }))
    .expect("binding");
    let _: serde_json::Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding)
        .await
        .expect("bind");
    let got = pods.get("p").await.expect("get");
    assert_eq!(
        got.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-1")
    );
    let again = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "p",
            &PostParams::default(),
            &binding,
        )
        .await;
    assert!(
        matches!(again, Err(kube::Error::Api(ref e)) if e.code == 409),
        "{again:?}"
    );
    // A bound pod is only marked for deletion; the kubelet's grace-0 delete removes it.
    pods.delete("p", &Default::default()).await.expect("delete");
    let marked = pods.get("p").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    pods.delete(
        "p",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete now");
    assert!(pods.get_opt("p").await.expect("get").is_none());
}

/// Allocations are derived from stored Services at start: a restarted server does not hand out a taken IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_allocations() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = skiff_api::ServerConfig {
        history_window: 1000,
        ..skiff_api::testing::config(dir.path()).expect("config")
    };
    let svc = serde_json::json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"keep"},"spec":{"clusterIP":"10.97.72.1","ports":[{"port":80}]}});
    let token;
    {
        let srv = skiff_api::serve(cfg.clone()).await.expect("serve");
        token = srv.token.clone();
        let client = skiff_runtime_client(&srv.kubeconfig_path).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        api.create(
            &PostParams::default(),
            &serde_json::from_value(svc.clone()).expect("svc"),
        )
        .await
        .expect("create");
        srv.shutdown();
    }
    // The store file is released once the old server's tasks are gone.
    let mut srv = None;
    for _ in 0..100 {
        match skiff_api::serve(cfg.clone()).await {
            Ok(s) => {
                srv = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let srv = srv.expect("restart");
    assert_eq!(srv.token, token, "token persists");
    let client = skiff_runtime_client(&srv.kubeconfig_path).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    assert!(api.get("keep").await.is_ok());
    let mut other = svc.clone();
    other["metadata"]["name"] = serde_json::json!("other");
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(other).expect("svc"),
        )
        .await
        .expect_err("taken");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 422),
        e => panic!("{e}"),
    }
}

async fn skiff_runtime_client(path: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

/// Mutated and random request bodies, in every accepted content type, never crash the server or produce a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_bodies_never_crash() {
    let s = TestServer::start().await.expect("server");
    let client = s.client().await.expect("client");
    let seed_json = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "fz", "labels": {"a": "b"}},
        "spec": {"type": "NodePort", "selector": {"a": "b"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
    }))
    .expect("json");
    let targets: [(&str, &str, &str); 7] = [
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/yaml",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/vnd.kubernetes.protobuf",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/kubernetes",
            "application/strategic-merge-patch+json",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/kubernetes",
            "application/merge-patch+json",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/kubernetes",
            "application/json-patch+json",
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/x?fieldManager=f",
            "application/apply-patch+yaml",
        ),
    ];
    let mut rng_state: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for i in 0..400 {
        let mut body = seed_json.clone();
        match i % 4 {
            0 => {
                for _ in 0..(1 + next() % 8) {
                    let at = (next() as usize) % body.len();
                    body[at] = next() as u8;
                }
            }
            1 => body.truncate((next() as usize) % body.len()),
            2 => body = (0..(next() % 300)).map(|_| next() as u8).collect(),
            _ => {
                let mut p = b"k8s\0".to_vec();
                p.extend((0..(next() % 200)).map(|_| next() as u8));
                body = p;
            }
        }
        let (method, path, ct) = targets[(next() as usize) % targets.len()];
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", ct)
            .body(body.clone())
            .expect("request");
        let resp = client
            .send(req.map(kube::client::Body::from))
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {ct} {body:?}: {e}"));
        assert!(
            resp.status().as_u16() < 500,
            "{method} {path} {ct} {body:?}: {}",
            resp.status()
        );
    }
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let k = svcs
        .get("kubernetes")
        .await
        .expect("kubernetes service intact");
    assert_eq!(
        k.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.0.1")
    );
}

/// `--insecure-http`: plain HTTP, still token-authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_http_still_needs_the_token() {
    let s = TestServer::start_with(|c| c.tls = false)
        .await
        .expect("server");
    assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
    let client = s.client().await.expect("client");
    let svcs: Api<Service> = Api::namespaced(client, "default");
    assert!(svcs.get("kubernetes").await.is_ok());
    let url = format!("{}/api/v1/namespaces", s.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output()
    })
    .await
    .expect("join")
    .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
