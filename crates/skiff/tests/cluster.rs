//! End-to-end: `skiff up` builds a real embedded cluster (host bridge, node namespaces, server and agent
//! processes) under unique names, and `skiff down` removes every trace of it; the seed-004 demo from the host.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

#[test]
fn up_builds_a_ready_cluster_and_down_removes_every_trace() {
    let c = TestCluster::new(2);
    let out = c.up(&["--update-kubeconfig"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", c.kubeconfig().display())),
        "{stdout}"
    );

    // What a user sees: both nodes Ready in kubectl, with their node IPs.
    let nodes = c.kubectl(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let listing = String::from_utf8_lossy(&nodes.stdout).to_string();
    assert!(nodes.status.success(), "{}", text(&nodes));
    for i in 1..=2 {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("node-{i} ")))
            .unwrap_or_else(|| panic!("node-{i} missing:\n{listing}"));
        assert!(line.contains(" Ready "), "{line}");
        assert!(line.contains(&c.node_ip(i)), "{line}");
    }

    // --update-kubeconfig: the user's kubeconfig gets context skiff-<name> as the current one.
    let ctx = Command::new("kubectl")
        .args(["config", "current-context"])
        .env("KUBECONFIG", c.user_kubeconfig())
        .output()
        .expect("kubectl config");
    assert_eq!(
        String::from_utf8_lossy(&ctx.stdout).trim(),
        format!("skiff-{}", c.name),
        "{}\n{}",
        text(&ctx),
        std::fs::read_to_string(c.user_kubeconfig()).unwrap_or_default()
    );
    let via_user = Command::new("kubectl")
        .args(["get", "nodes", "--no-headers"])
        .env("KUBECONFIG", c.user_kubeconfig())
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&via_user.stdout).lines().count(),
        2,
        "{}",
        text(&via_user)
    );

    // The host reaches the nodes over the bridge, and node 1 reaches node 2 and the host.
    let ping = Command::new("busybox")
        .args(["ping", "-c1", "-W2", &c.node_ip(1)])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "host -> node-1: {}", text(&ping));
    let ping = c.in_node(1, &["busybox", "ping", "-c1", "-W2", &c.node_ip(2)]);
    assert!(ping.status.success(), "node-1 -> node-2: {}", text(&ping));

    // A second `skiff up` of a running cluster refuses and leaves it alone.
    let again = c.up(&[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is already running"),
        "{}",
        text(&again)
    );

    // `skiff status` reports the server and both nodes Ready.
    let st = Command::new(SKIFF)
        .args([
            "status",
            "--name",
            &c.name,
            "--data-dir",
            &c.data_dir.display().to_string(),
        ])
        .output()
        .expect("skiff status");
    let st_out = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.status.success(), "{}", text(&st));
    assert!(st_out.starts_with("server: running"), "{st_out}");
    assert_eq!(
        st_out
            .lines()
            .filter(|l| l.starts_with("node-") && l.contains(" Ready "))
            .count(),
        2,
        "{st_out}"
    );

    let before = c.leftovers();
    assert!(before.iter().any(|l| l.starts_with("netns")), "{before:?}");
    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
    let user_kc = std::fs::read_to_string(c.user_kubeconfig()).unwrap_or_default();
    assert!(!user_kc.contains(&format!("skiff-{}", c.name)), "{user_kc}");
    // Idempotent.
    let again = c.down();
    assert!(
        again.status.success(),
        "second skiff down: {}",
        text(&again)
    );
}

#[test]
fn down_and_up_clean_up_after_a_crash() {
    let c = TestCluster::new(1);
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    // Crash: SIGKILL the server and the agent (and the host's BIRD with --backend bgp); namespaces, bridge
    // and routes stay behind.
    for name in ["server", "node-1", "bird-host"] {
        let pid = pid_file(&c.data_dir, name);
        if name == "bird-host" && pid == 0 {
            continue;
        }
        assert!(pid > 1, "{name} pid file");
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(wait_until(Duration::from_secs(5), || processes_mentioning(
        &c.data_dir.display().to_string()
    )
    .is_empty()));
    assert!(!c.leftovers().is_empty());

    // A new `skiff up` of the same name removes the leftovers first and comes up again.
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(
        out.status.success(),
        "second skiff up failed: {}",
        text(&out)
    );
    let nodes = c.kubectl(&["get", "nodes", "--no-headers"]);
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains(" Ready "),
        "{}",
        text(&nodes)
    );

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `ServerName: <pod>` from a demoapp answer.
fn server_name(answer: &str) -> Option<String> {
    let rest = answer.split("ServerName: ").nth(1)?;
    Some(rest.split(',').next()?.to_string())
}

/// The seed-004 tutorial, as its reader does it from the master node: `skiff up --demo`, then curl the
/// ClusterIP (answers from both pods), the NodePort on a node IP, the LoadBalancer address and the external IP.
#[test]
fn seed_004_demo_answers_on_every_service_type_from_the_host() {
    let _fixed = fixed_addresses_lock();
    let mut c = TestCluster::new(3);
    c.service_cidr = Some("10.97.0.0/16".to_string());
    let out = c.up(&["--demo"]);
    assert!(
        out.status.success(),
        "skiff up --demo failed: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("curl 10.97.72.1"), "{stdout}");

    let pods = c.kubectl(&["get", "pods", "-l", "app=demoapp", "--no-headers"]);
    let pod_names: BTreeSet<String> = String::from_utf8_lossy(&pods.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(pod_names.len(), 2, "{}", text(&pods));

    // Inside each pod's network namespace, eth0 carries the pod IP kubectl shows.
    for pod in &pod_names {
        let ip = c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
        let ip = String::from_utf8_lossy(&ip.stdout).to_string();
        let addrs = c.in_pod(
            "default",
            pod,
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
        assert!(
            !ip.is_empty() && addrs.contains(&format!("inet {ip}/")),
            "{pod}: podIP {ip:?}, eth0: {addrs}"
        );
    }

    // ClusterIP: every answer comes from one of the demo pods, and both pods answer.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let answer = curl("http://10.97.72.1/");
        assert!(
            answer.starts_with("iKubernetes demoapp v1.0 !! ClientIP: "),
            "{answer:?}"
        );
        seen.insert(server_name(&answer).unwrap_or_default());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, pod_names);

    let node2 = c.node_ip(2);
    let answer = curl(&format!("http://{node2}:31399/"));
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "NodePort: {answer:?}"
    );

    let lb = c.kubectl(&[
        "get",
        "svc",
        "demoapp-loadbalancer-svc",
        "-o",
        "jsonpath={.status.loadBalancer.ingress[0].ip}",
    ]);
    let lb_ip = String::from_utf8_lossy(&lb.stdout).to_string();
    assert!(
        lb_ip.starts_with(&format!("172.31.{}.2", c.octet)),
        "LoadBalancer ingress {lb_ip:?}"
    );
    let answer = curl(&format!("http://{lb_ip}/"));
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "LoadBalancer: {answer:?}"
    );

    let answer = curl("http://172.30.0.100/");
    assert!(
        pod_names.contains(&server_name(&answer).unwrap_or_default()),
        "externalIPs: {answer:?}"
    );

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
