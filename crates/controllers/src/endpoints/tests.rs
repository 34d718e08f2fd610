use super::*;
use serde_json::json;

fn svc(spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "demoapp", "namespace": "default", "uid": "svc-uid", "labels": {"app": "demoapp"}},
        "spec": spec,
    }))
    .unwrap()
}

fn pod(name: &str, ip: Option<&str>, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
    let mut status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "demoapp"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
            "status": status,
        }))
        .unwrap(),
    )
}

fn no_zone(_: &str) -> Option<String> {
    None
}

fn web_service() -> Service {
    svc(
        json!({"selector": {"app": "demoapp"}, "clusterIP": "10.96.0.20",
               "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}),
    )
}

#[test]
fn one_slice_with_ready_and_not_ready_pods_and_no_ip_pods_skipped() {
    let pods = vec![
        pod(
            "b",
            Some("10.244.0.3"),
            false,
            json!([{"name": "web", "containerPort": 80}]),
        ),
        pod(
            "a",
            Some("10.244.0.2"),
            true,
            json!([{"name": "web", "containerPort": 80}]),
        ),
        pod(
            "c",
            None,
            false,
            json!([{"name": "web", "containerPort": 80}]),
        ),
    ];
    let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
    assert!(changes.update.is_empty() && changes.delete.is_empty());
    assert_eq!(changes.create.len(), 1);
    let got = serde_json::to_value(&changes.create[0]).unwrap();
    assert_eq!(
        got,
        json!({
            "addressType": "IPv4",
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "endpoints": [
                {"addresses": ["10.244.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default", "uid": "uid-a"}},
                {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": false, "terminating": false},
                 "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "default", "uid": "uid-b"}},
            ],
            "metadata": {
                "generateName": "demoapp-",
                "namespace": "default",
                "labels": {"app": "demoapp", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                           "kubernetes.io/service-name": "demoapp"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "demoapp", "uid": "svc-uid",
                                     "controller": true, "blockOwnerDeletion": true}],
            },
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        })
    );
}

#[test]
fn named_target_ports_differing_per_pod_make_separate_slices_and_subsets() {
    let pods = vec![
        pod(
            "a",
            Some("10.244.0.2"),
            true,
            json!([{"name": "web", "containerPort": 80}]),
        ),
        pod(
            "b",
            Some("10.244.1.2"),
            true,
            json!([{"name": "web", "containerPort": 8080}]),
        ),
        // No port named "web": this pod serves no port of the Service.
        pod(
            "c",
            Some("10.244.1.3"),
            true,
            json!([{"name": "other", "containerPort": 9090}]),
        ),
    ];
    let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
    let summary: Vec<(Vec<i32>, Vec<String>)> = changes
        .create
        .iter()
        .map(|s| {
            (
                s.ports.iter().flatten().filter_map(|p| p.port).collect(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (vec![], vec!["10.244.1.3".to_string()]),
            (vec![80], vec!["10.244.0.2".to_string()]),
            (vec![8080], vec!["10.244.1.2".to_string()]),
        ]
    );
    let ep = desired_endpoints(&web_service(), &pods);
    let got = serde_json::to_value(&ep.subsets).unwrap();
    assert_eq!(
        got,
        json!([
            {"addresses": [{"ip": "10.244.1.3", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "c", "namespace": "default", "uid": "uid-c"}}]},
            {"addresses": [{"ip": "10.244.0.2", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "default", "uid": "uid-a"}}],
             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.244.1.2", "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "default", "uid": "uid-b"}}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        ])
    );
}

#[test]
fn terminating_pods_are_not_ready_in_slices_and_absent_from_endpoints() {
    let mut p: Pod = (*pod(
        "a",
        Some("10.244.0.2"),
        true,
        json!([{"name": "web", "containerPort": 80}]),
    ))
    .clone();
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::UNIX_EPOCH,
    ));
    let pods = vec![Arc::new(p)];
    let changes = desired_endpoint_slices(&web_service(), &pods, &no_zone, &[]);
    assert_eq!(
        changes.create[0].endpoints[0].conditions,
        Some(EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true)
        })
    );
    assert_eq!(desired_endpoints(&web_service(), &pods).subsets, None);
}

#[test]
fn publish_not_ready_addresses_marks_everything_ready() {
    let mut s = web_service();
    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let pods = vec![pod(
        "a",
        Some("10.244.0.2"),
        false,
        json!([{"name": "web", "containerPort": 80}]),
    )];
    let changes = desired_endpoint_slices(&s, &pods, &no_zone, &[]);
    assert_eq!(
        changes.create[0].endpoints[0]
            .conditions
            .as_ref()
            .unwrap()
            .ready,
        Some(true)
    );
    let ep = desired_endpoints(&s, &pods);
    assert_eq!(
        ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
        "10.244.0.2"
    );
}

#[test]
fn headless_service_gets_hostnames_and_label() {
    let s = svc(json!({"selector": {"app": "demoapp"}, "clusterIP": "None"}));
    let mut p: Pod = (*pod("web-0", Some("10.244.0.5"), true, json!([]))).clone();
    p.spec.as_mut().unwrap().hostname = Some("web-0".into());
    p.spec.as_mut().unwrap().subdomain = Some("demoapp".into());
    let pods = vec![Arc::new(p)];
    let changes = desired_endpoint_slices(&s, &pods, &no_zone, &[]);
    let slice = &changes.create[0];
    assert_eq!(slice.endpoints[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(
        slice
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get(LABEL_HEADLESS)
            .map(String::as_str),
        Some("")
    );
    assert_eq!(slice.ports, Some(vec![]));
    let ep = desired_endpoints(&s, &pods);
    assert_eq!(
        ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0]
            .hostname
            .as_deref(),
        Some("web-0")
    );
}

fn named(mut s: EndpointSlice, name: &str) -> Arc<EndpointSlice> {
    s.metadata.name = Some(name.to_string());
    s.metadata.generate_name = None;
    s.metadata.resource_version = Some("7".into());
    Arc::new(s)
}

#[test]
fn readiness_change_updates_only_the_slice_holding_the_pod() {
    let mk = |n: usize, ready_first: bool| -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    Some(&format!("10.244.{}.{}", i / 200, i % 200 + 2)),
                    i != 0 || ready_first,
                    json!([{"name": "web", "containerPort": 80}]),
                )
            })
            .collect()
    };
    let first = desired_endpoint_slices(&web_service(), &mk(250, true), &no_zone, &[]);
    assert_eq!(
        first
            .create
            .iter()
            .map(|s| s.endpoints.len())
            .collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
    let existing: Vec<Arc<EndpointSlice>> = first
        .create
        .into_iter()
        .enumerate()
        .map(|(i, s)| named(s, &format!("demoapp-{i}")))
        .collect();
    // Nothing changed: nothing to write.
    assert!(
        desired_endpoint_slices(&web_service(), &mk(250, true), &no_zone, &existing).is_empty()
    );
    // p000 becomes not ready: one update of the slice it lives in.
    let changes = desired_endpoint_slices(&web_service(), &mk(250, false), &no_zone, &existing);
    assert!(changes.create.is_empty() && changes.delete.is_empty());
    assert_eq!(changes.update.len(), 1);
    assert_eq!(
        changes.update[0].metadata.name.as_deref(),
        Some("demoapp-0")
    );
    // Scale down to 0: one placeholder remains, the others go.
    let changes = desired_endpoint_slices(&web_service(), &[], &no_zone, &existing);
    assert_eq!(
        changes.delete,
        vec!["demoapp-1".to_string(), "demoapp-2".to_string()]
    );
    assert_eq!(changes.update.len(), 1);
    assert!(changes.update[0].endpoints.is_empty());
    assert_eq!(changes.update[0].ports, None);
    // New pods fill the slice with room before a new slice is made.
    let changes = desired_endpoint_slices(&web_service(), &mk(260, true), &no_zone, &existing);
    assert!(changes.create.is_empty());
    assert_eq!(changes.update.len(), 1);
    assert_eq!(changes.update[0].endpoints.len(), 60);
}

#[test]
fn user_endpoints_are_mirrored() {
    let ep: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "external", "namespace": "default", "uid": "ep-uid"},
        "subsets": [{"addresses": [{"ip": "192.168.1.10"}], "notReadyAddresses": [{"ip": "192.168.1.11"}],
                     "ports": [{"name": "db", "port": 3306}]}]
    }))
    .unwrap();
    let changes = mirrored_endpoint_slices(&ep, &[]);
    let got = serde_json::to_value(&changes.create).unwrap();
    assert_eq!(
        got,
        json!([{
            "addressType": "IPv4",
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "endpoints": [
                {"addresses": ["192.168.1.10"], "conditions": {"ready": true, "serving": true, "terminating": false}},
                {"addresses": ["192.168.1.11"], "conditions": {"ready": false, "serving": false, "terminating": false}},
            ],
            "metadata": {"generateName": "external-", "namespace": "default",
                "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
                           "kubernetes.io/service-name": "external"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": "external", "uid": "ep-uid",
                                     "controller": true, "blockOwnerDeletion": true}]},
            "ports": [{"name": "db", "port": 3306, "protocol": "TCP"}],
        }])
    );
}
