mod common;
use common::Kubectl;
use skiff_api::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_namespaces_and_unauthorized() {
    let s = TestServer::start().await.expect("server");
    let k = Kubectl::new(&s);
    let out = tokio::task::spawn_blocking(move || (k.run(&["get", "ns"]), k))
        .await
        .expect("join");
    let (o, _k) = out;
    let text = o.ok().to_string();
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"],
        "{text}"
    );
}
