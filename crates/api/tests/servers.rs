//! Several API servers sharing one etcd (a real etcd started by the test process): writes through one are
//! seen by watches on the others, and ClusterIP / NodePort allocations never collide, also when servers
//! allocate at the same moment.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use skiff_api::testing::{shared_etcd, TestServer};
use std::collections::HashSet;

async fn servers(n: usize, tweak: impl Fn(&mut skiff_api::ServerConfig)) -> Vec<TestServer> {
    let etcd = shared_etcd().expect("etcd");
    let mut v = Vec::new();
    for _ in 0..n {
        let etcd = etcd.clone();
        v.push(
            TestServer::start_with(|c| {
                c.etcd = Some(etcd);
                tweak(c);
            })
            .await
            .expect("server"),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_server_are_watched_on_another() {
    let s = servers(2, |_| {}).await;
    let a: Api<ConfigMap> = Api::namespaced(s[0].client().await.expect("client"), "default");
    let b: Api<ConfigMap> = Api::namespaced(s[1].client().await.expect("client"), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("first".into());
    let first = a.create(&PostParams::default(), &cm).await.expect("create");
    let rv = first.metadata.resource_version.clone().expect("rv");
    let mut w = b
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    cm.metadata.name = Some("second".into());
    let second = a.create(&PostParams::default(), &cm).await.expect("create");
    match w.try_next().await.expect("event") {
        Some(WatchEvent::Added(got)) => {
            assert_eq!(got.metadata.name.as_deref(), Some("second"));
            assert_eq!(
                got.metadata.resource_version,
                second.metadata.resource_version
            );
        }
        other => panic!("expected ADDED second, got {other:?}"),
    }
    // An update through B from A's resourceVersion after A changed it again: 409, as on one server.
    let mut stale = b.get("first").await.expect("get via b");
    let mut fresh = stale.clone();
    fresh.data = Some([("k".to_string(), "a".to_string())].into());
    a.replace("first", &PostParams::default(), &fresh)
        .await
        .expect("replace via a");
    stale.data = Some([("k".to_string(), "b".to_string())].into());
    match b.replace("first", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("stale replace: {other:?}"),
    }
    // Both servers list the same objects at the same resourceVersion semantics.
    let la = a.list(&Default::default()).await.expect("list a");
    let lb = b.list(&Default::default()).await.expect("list b");
    let names = |l: &kube::core::ObjectList<ConfigMap>| {
        l.items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&la), ["first", "second"]);
    assert_eq!(names(&la), names(&lb));
}

fn service(name: &str, cluster_ip: Option<&str>) -> Service {
    let mut spec = serde_json::json!({"type": "NodePort", "ports": [{"port": 80}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = serde_json::json!(ip);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_never_collide_across_servers() {
    // Small ranges so that random picks of two servers collide often.
    let s = servers(2, |c| {
        c.service_cidr = "10.100.0.0/25".parse().expect("cidr");
        c.node_ports = 30000..=30099;
    })
    .await;
    let apis: Vec<Api<Service>> = vec![
        Api::namespaced(s[0].client().await.expect("client"), "default"),
        Api::namespaced(s[1].client().await.expect("client"), "default"),
    ];
    let mut tasks = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        for j in 0..40 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                api.create(&PostParams::default(), &service(&format!("s{i}-{j}"), None))
                    .await
            }));
        }
    }
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let svc = t.await.expect("join").expect("create");
        let spec = svc.spec.expect("spec");
        let ip = spec.cluster_ip.expect("cluster ip");
        assert!(ips.insert(ip.clone()), "cluster IP {ip} handed out twice");
        let port = spec.ports.expect("ports")[0].node_port.expect("node port");
        assert!(ports.insert(port), "node port {port} handed out twice");
    }
    assert_eq!((ips.len(), ports.len()), (80, 80));
    // The same explicit IP asked of both servers at once: exactly one gets it.
    let want_ip = (2..126)
        .map(|i| format!("10.100.0.{i}"))
        .find(|ip| !ips.contains(ip))
        .expect("a free IP");
    let want = want_ip.as_str();
    let pp = PostParams::default();
    let (w0, w1) = (service("want-0", Some(want)), service("want-1", Some(want)));
    let (r0, r1) = tokio::join!(apis[0].create(&pp, &w0), apis[1].create(&pp, &w1));
    let (winner, loser, err) = match (r0, r1) {
        (Ok(_), Err(e)) => (0, 1, e),
        (Err(e), Ok(_)) => (1, 0, e),
        other => panic!("exactly one create may win: {other:?}"),
    };
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains("provided IP is already allocated"),
                "{}",
                e.message
            );
        }
        e => panic!("unexpected error {e}"),
    }
    // Freed through the loser's server, taken again through it: the release is seen by both.
    apis[loser]
        .delete(&format!("want-{winner}"), &DeleteParams::default())
        .await
        .expect("delete");
    let again = apis[loser]
        .create(&PostParams::default(), &service("again", Some(want)))
        .await
        .expect("create with the freed IP");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip).as_deref(), Some(want));
    // A server started later on the same etcd knows every allocation.
    let etcd = s[0].etcd.clone();
    let late = TestServer::start_with(|c| {
        c.etcd = etcd;
        c.service_cidr = "10.100.0.0/25".parse().expect("cidr");
        c.node_ports = 30000..=30099;
    })
    .await
    .expect("late server");
    let taken = ips.iter().next().expect("an ip").clone();
    let late_api: Api<Service> = Api::namespaced(late.client().await.expect("client"), "default");
    match late_api
        .create(&PostParams::default(), &service("late", Some(&taken)))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("taken IP via a new server: {other:?}"),
    }
}
