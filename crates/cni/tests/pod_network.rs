//! Kernel tests: the CNI runtime side running skiff-cni and Debian's reference plugins (bridge + host-local)
//! in throwaway "node" and "pod" namespaces; pods get addresses and routes, reach each other and the node,
//! DEL is idempotent, and bad input yields spec error objects.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{addrs, tcp_probe, Netns};
use skiff_cni::runtime::{CniRuntime, PodRef};

const PLUGIN: &str = env!("CARGO_BIN_EXE_skiff-cni");

/// A temp dir holding conf/, bin/ (skiff-cni) and cache/, plus the runtime over it.
struct Setup {
    dir: tempfile::TempDir,
    runtime: CniRuntime,
}

fn setup(conflist: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (conf, bin) = (dir.path().join("conf"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(PLUGIN, bin.join("skiff-cni")).unwrap();
    let conflist = conflist.replace("@DATA@", &dir.path().join("ipam").display().to_string());
    std::fs::write(conf.join("10-test.conflist"), conflist).unwrap();
    // A later file must be ignored: the lexically first wins.
    std::fs::write(conf.join("99-ignored.conflist"), "{not json").unwrap();
    let runtime = CniRuntime::new(
        conf,
        vec![bin, PathBuf::from("/usr/lib/cni")],
        dir.path().join("cache"),
    );
    Setup { dir, runtime }
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn skiff_conflist_for_test(subnet: &str) -> String {
    // The agent's real conflist, pointed at a private IPAM directory.
    let mut v: serde_json::Value = serde_json::from_str(&skiff_cni::config::skiff_conflist(
        "skifftest",
        subnet.parse().unwrap(),
        1450,
    ))
    .unwrap();
    v["plugins"][0]["ipam"]["dataDir"] = "@DATA@".into();
    v.to_string()
}

#[test]
fn skiff_cni_pods_get_addresses_routes_and_reach_each_other() {
    let node = Netns::new("skcn");
    let (pa, pb) = (Netns::new("skcp"), Netns::new("skcp"));
    let s = setup(&skiff_conflist_for_test("10.123.4.0/24"));
    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    let (ra, rb) = node.block_on(move || async move {
        let ra = rt.add("ctr-a", &a_path, "eth0", &pod("a")).await.unwrap();
        let rb = rt.add("ctr-b", &b_path, "eth0", &pod("b")).await.unwrap();
        (ra, rb)
    });
    let (ip_a, ip_b) = (ra.pod_ipv4().unwrap(), rb.pod_ipv4().unwrap());
    assert_eq!(ip_a, Ipv4Addr::new(10, 123, 4, 2));
    assert_eq!(ip_b, Ipv4Addr::new(10, 123, 4, 3));

    // Inside the pod: <podIP>/32 on eth0 with the configured MTU, gateway route + default route.
    assert_eq!(addrs(&pa, "eth0"), vec!["10.123.4.2/32"]);
    assert!(pa.ip(&["link", "show", "eth0"]).contains("mtu 1450"));
    let routes = pa.ip(&["-4", "route"]);
    assert!(
        routes.contains("default via 10.123.4.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.123.4.1 dev eth0 scope link"),
        "{routes}"
    );
    // On the node: the host end carries the gateway, and the /32 route points at it.
    let host_if = &ra.interfaces[0].name;
    assert!(host_if.starts_with("skf"));
    assert_eq!(addrs(&node, host_if), vec!["10.123.4.1/32"]);
    assert!(node
        .ip(&["-4", "route"])
        .contains(&format!("10.123.4.2 dev {host_if}")));

    // Pod to pod keeps the source address; the node reaches pods; pods reach the node.
    let (peer, text) = tcp_probe(&pb, ip_b, &pa);
    assert_eq!(peer.ip(), ip_a);
    assert!(text.starts_with("hello 10.123.4.2:"), "{text}");
    assert!(node.exec_ok(&["busybox", "ping", "-c1", "-W2", "10.123.4.3"]));
    assert!(pa.exec_ok(&["busybox", "ping", "-c1", "-W2", "10.123.4.1"]));

    // CHECK passes while everything is in place, fails once the pod's interface is gone.
    let rt = s.runtime.clone();
    let a_path = pa.path();
    node.block_on(
        move || async move { rt.check("ctr-a", &a_path, "eth0", &pod("a")).await.unwrap() },
    );

    // DEL twice (idempotent), then the address is free again and the veth is gone.
    let rt = s.runtime.clone();
    let a_path = pa.path();
    node.block_on(move || async move {
        rt.del("ctr-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("ctr-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("ctr-never", None, "eth0", &pod("x")).await.unwrap();
    });
    assert!(!node.ip(&["link"]).contains(host_if.as_str()));
    assert!(pa.ip(&["link"]).lines().all(|l| !l.contains("eth0")));
    assert!(!s.dir.path().join("ipam/skifftest/10.123.4.2").exists());
    assert!(s.dir.path().join("ipam/skifftest/10.123.4.3").exists());
    let rt = s.runtime.clone();
    let a_path = pa.path();
    let err = node.block_on(move || async move {
        rt.check("ctr-a", &a_path, "eth0", &pod("a"))
            .await
            .unwrap_err()
    });
    assert!(err.to_string().contains("no cached result"), "{err}");

    // DEL after the pod's namespace vanished still cleans up.
    let b_path = pb.path();
    drop(pb);
    let rt = s.runtime.clone();
    node.block_on(move || async move {
        rt.del("ctr-b", Some(&b_path), "eth0", &pod("b"))
            .await
            .unwrap()
    });
    assert!(!s.dir.path().join("ipam/skifftest/10.123.4.3").exists());
    assert!(node.ip(&["link"]).lines().all(|l| !l.contains("skf")));
}

#[test]
fn reference_bridge_and_host_local_plugins_work_through_the_runtime() {
    let node = Netns::new("skcn");
    let (pa, pb) = (Netns::new("skcp"), Netns::new("skcp"));
    let bridge = common::unique("skb");
    let bridge = &bridge[..bridge.len().min(15)];
    let s = setup(&format!(
        r#"{{"cniVersion":"1.0.0","name":"reftest","plugins":[
            {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
              "ipam":{{"type":"host-local","subnet":"10.124.0.0/24","dataDir":"@DATA@"}}}}]}}"#
    ));
    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    let (ra, rb) = node.block_on(move || async move {
        let ra = rt.add("ref-a", &a_path, "eth0", &pod("a")).await.unwrap();
        let rb = rt.add("ref-b", &b_path, "eth0", &pod("b")).await.unwrap();
        rt.check("ref-a", &a_path, "eth0", &pod("a")).await.unwrap();
        (ra, rb)
    });
    let (ip_a, ip_b) = (ra.pod_ipv4().unwrap(), rb.pod_ipv4().unwrap());
    assert_ne!(ip_a, ip_b);
    assert_eq!(addrs(&pa, "eth0"), vec![format!("{ip_a}/24")]);
    let (peer, _) = tcp_probe(&pb, ip_b, &pa);
    assert_eq!(peer.ip(), ip_a);

    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    node.block_on(move || async move {
        rt.del("ref-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("ref-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("ref-b", Some(&b_path), "eth0", &pod("b"))
            .await
            .unwrap();
    });
    assert!(pa.ip(&["link"]).lines().all(|l| !l.contains("eth0")));
    assert!(!s.dir.path().join(format!("ipam/reftest/{ip_a}")).exists());
}

#[test]
fn double_add_of_distinct_containers_gets_distinct_ips_and_same_container_fails_cleanly() {
    let node = Netns::new("skcn");
    let pa = Netns::new("skcp");
    let s = setup(&skiff_conflist_for_test("10.125.0.0/24"));
    let rt = s.runtime.clone();
    let a_path = pa.path();
    let (first, second) = node.block_on(move || async move {
        let first = rt.add("dup", &a_path, "eth0", &pod("a")).await.unwrap();
        // Same netns and ifname again: eth0 exists, the plugin refuses, and nothing leaks.
        let second = rt
            .add("dup2", &a_path, "eth0", &pod("a"))
            .await
            .unwrap_err();
        (first, second)
    });
    assert_eq!(first.pod_ipv4(), Some(Ipv4Addr::new(10, 125, 0, 2)));
    let cni = second.cni_error().expect("a spec error object");
    assert!(cni.msg.contains("already exists"), "{second}");
    // The failed ADD released its address and removed its host end.
    let ipam: Vec<_> = std::fs::read_dir(s.dir.path().join("ipam/skifftest"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert_eq!(ipam, vec!["10.125.0.2"]);
    assert_eq!(
        node.ip(&["-o", "link"])
            .lines()
            .filter(|l| l.contains("skf"))
            .count(),
        1
    );
}

/// Run the plugin executable as a runtime would; returns (exit success, stdout JSON).
fn invoke(env: &[(&str, &str)], stdin: &str) -> (bool, serde_json::Value) {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn malformed_config_and_env_answer_spec_error_objects() {
    let good = r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni","ipam":{"subnet":"10.126.0.0/24","dataDir":"/nonexistent-skiff-test"}}"#;
    let base = [
        ("CNI_CONTAINERID", "c"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/skiff-no-such-ns"),
    ];
    // (environment, stdin, expected error code)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, u64);
    let cases: Vec<Case> = vec![
        (base.to_vec(), good, 4), // no CNI_COMMAND
        ([&base[..], &[("CNI_COMMAND", "ADD")]].concat(), "{nope", 6), // undecodable
        (
            [&base[..], &[("CNI_COMMAND", "ADD")]].concat(),
            r#"{"cniVersion":"0.1.0","name":"n","type":"skiff-cni"}"#,
            1,
        ),
        (
            [&base[..], &[("CNI_COMMAND", "ADD")]].concat(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"skiff-cni"}"#,
            7,
        ),
        ([&base[..], &[("CNI_COMMAND", "ADD")]].concat(), good, 4), // netns does not exist
        (
            vec![("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
            good,
            4,
        ), // no container id
        (
            [
                &base[..],
                &[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "K8S_POD_NAME")],
            ]
            .concat(),
            good,
            4,
        ),
    ];
    for (env, stdin, code) in cases {
        let (ok, out) = invoke(&env, stdin);
        assert!(!ok, "{env:?} {stdin} should fail");
        assert_eq!(out["code"], code, "{env:?} {stdin}: {out}");
        assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
        assert_eq!(out["cniVersion"], "1.0.0");
    }
    let (ok, out) = invoke(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    assert_eq!(
        out["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    // DEL of something that never existed succeeds (no netns, no allocation).
    let dir = tempfile::tempdir().unwrap();
    let conf = good.replace("/nonexistent-skiff-test", &dir.path().display().to_string());
    let (ok, out) = invoke(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "gone"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    );
    assert!(ok, "{out}");
    // CHECK of an unknown container: code 3.
    let (ok, out) = invoke(
        &[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "gone"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
        ],
        &conf.replace(
            "\"ipam\"",
            "\"prevResult\":{\"cniVersion\":\"1.0.0\"},\"ipam\"",
        ),
    );
    assert!(!ok);
    assert_eq!(out["code"], 3, "{out}");
}

#[test]
fn missing_plugin_binary_is_reported() {
    let s = setup(r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}"#);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(
            s.runtime
                .add("c", Path::new("/proc/self/ns/net"), "eth0", &pod("p")),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to find plugin \"no-such-plugin\""),
        "{err}"
    );
}

#[test]
fn two_hundred_add_del_cycles_leak_nothing() {
    let node = Netns::new("skcn");
    let pa = Netns::new("skcp");
    let s = setup(&skiff_conflist_for_test("10.127.0.0/24"));
    let rt = s.runtime.clone();
    let a_path = pa.path();
    let ips = node.block_on(move || async move {
        let mut ips = std::collections::BTreeSet::new();
        for i in 0..200 {
            let id = format!("cycle-{i}");
            let r = rt.add(&id, &a_path, "eth0", &pod("c")).await.unwrap();
            ips.insert(r.pod_ipv4().unwrap());
            rt.del(&id, Some(&a_path), "eth0", &pod("c")).await.unwrap();
        }
        ips
    });
    // Round robin through the range (253 usable addresses minus the gateway) instead of reusing one.
    assert_eq!(ips.len(), 200);
    assert_eq!(
        node.ip(&["-o", "link"]).lines().count(),
        1,
        "only lo remains on the node"
    );
    assert_eq!(
        pa.ip(&["-o", "link"]).lines().count(),
        1,
        "only lo remains in the pod"
    );
    assert_eq!(node.ip(&["-4", "route"]).trim(), "");
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path().join("ipam/skifftest"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let cached = std::fs::read_dir(s.dir.path().join("cache/results"))
        .unwrap()
        .count();
    assert_eq!(cached, 0);
}

#[test]
fn skiff_cni_delegates_to_the_reference_host_local_ipam() {
    let node = Netns::new("skcn");
    let (pa, pb) = (Netns::new("skcp"), Netns::new("skcp"));
    let s = setup(
        r#"{"cniVersion":"1.0.0","name":"delegated","plugins":[{"type":"skiff-cni","mtu":1500,
            "ipam":{"type":"host-local","subnet":"10.128.0.0/24","gateway":"10.128.0.1","dataDir":"@DATA@"}}]}"#,
    );
    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    let (ra, rb) = node.block_on(move || async move {
        let ra = rt.add("dl-a", &a_path, "eth0", &pod("a")).await.unwrap();
        let rb = rt.add("dl-b", &b_path, "eth0", &pod("b")).await.unwrap();
        rt.check("dl-a", &a_path, "eth0", &pod("a")).await.unwrap();
        (ra, rb)
    });
    let (ip_a, ip_b) = (ra.pod_ipv4().unwrap(), rb.pod_ipv4().unwrap());
    assert_eq!(
        (ip_a, ip_b),
        (Ipv4Addr::new(10, 128, 0, 2), Ipv4Addr::new(10, 128, 0, 3))
    );
    assert_eq!(addrs(&pa, "eth0"), vec!["10.128.0.2/32"]);
    // host-local's own allocation file records the container.
    assert!(
        std::fs::read_to_string(s.dir.path().join("ipam/delegated/10.128.0.2"))
            .unwrap()
            .starts_with("dl-a")
    );
    let (peer, _) = tcp_probe(&pb, ip_b, &pa);
    assert_eq!(peer.ip(), ip_a);
    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    node.block_on(move || async move {
        rt.del("dl-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("dl-a", Some(&a_path), "eth0", &pod("a"))
            .await
            .unwrap();
        rt.del("dl-b", Some(&b_path), "eth0", &pod("b"))
            .await
            .unwrap();
    });
    assert!(!s.dir.path().join("ipam/delegated/10.128.0.2").exists());
    assert!(!s.dir.path().join("ipam/delegated/10.128.0.3").exists());
}

#[test]
fn gc_deletes_attachments_no_longer_valid_and_releases_leaked_addresses() {
    let node = Netns::new("skcn");
    let (pa, pb) = (Netns::new("skcp"), Netns::new("skcp"));
    let s = setup(&skiff_conflist_for_test("10.129.0.0/24"));
    // An address leaked by a crash between IPAM and the cache: an allocation file nobody knows about.
    let leaked = s.dir.path().join("ipam/skifftest/10.129.0.200");
    std::fs::create_dir_all(leaked.parent().unwrap()).unwrap();
    std::fs::write(&leaked, "crashed-ctr\r\neth0").unwrap();
    let rt = s.runtime.clone();
    let (a_path, b_path) = (pa.path(), pb.path());
    let deleted = node.block_on(move || async move {
        rt.add("keep", &a_path, "eth0", &pod("a")).await.unwrap();
        rt.add("stale", &b_path, "eth0", &pod("b")).await.unwrap();
        rt.gc(&[("keep".to_string(), "eth0".to_string())])
            .await
            .unwrap()
    });
    assert_eq!(deleted, vec![("stale".to_string(), "eth0".to_string())]);
    assert!(
        !leaked.exists(),
        "the plugin's GC released the leaked address"
    );
    assert!(
        s.dir.path().join("ipam/skifftest/10.129.0.2").exists(),
        "the valid attachment keeps its address"
    );
    assert!(!s.dir.path().join("ipam/skifftest/10.129.0.3").exists());
    assert!(pb.ip(&["link"]).lines().all(|l| !l.contains("eth0")));
    assert_eq!(addrs(&pa, "eth0"), vec!["10.129.0.2/32"]);
}
