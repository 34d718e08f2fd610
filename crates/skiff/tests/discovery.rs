//! End-to-end service discovery and pod network on a real `skiff up` cluster: cluster DNS as a pod sees it
//! (`dig` against kube-dns, the C library resolver through the pod's resolv.conf search path, `wget` by
//! service name), the service environment variables a pod starts with, and pod-to-pod traffic across nodes
//! keeping the caller's pod IP (VXLAN and host-gw).

mod common;

use common::*;
use std::process::Output;
use std::time::Duration;

/// `kubectl create -f` of an inline manifest (written next to the cluster's data dir).
fn create(c: &TestCluster, name: &str, yaml: &str) {
    let path = c.data_dir.with_file_name(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("writing manifest");
    let out = c.kubectl(&["create", "-f", &path.display().to_string()]);
    assert!(
        out.status.success(),
        "kubectl create {name}: {}",
        text(&out)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn jsonpath(c: &TestCluster, kind: &str, ns: &str, name: &str, path: &str) -> String {
    stdout(&c.kubectl(&[
        "get",
        kind,
        "-n",
        ns,
        name,
        "-o",
        &format!("jsonpath={path}"),
    ]))
}

/// Waits until pod `ns/name` is Ready and returns its IP.
fn wait_ready(c: &TestCluster, ns: &str, name: &str) -> String {
    let ok = wait_until(Duration::from_secs(30), || {
        jsonpath(
            c,
            "pod",
            ns,
            name,
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    });
    let pod = c.kubectl(&["get", "pod", "-n", ns, name, "-o", "yaml"]);
    assert!(ok, "pod {ns}/{name} not Ready: {}", text(&pod));
    jsonpath(c, "pod", ns, name, "{.status.podIP}")
}

/// Waits until a run-to-completion pod has finished (Succeeded or Failed) and returns its container's log,
/// read from the file its node's agent writes (`kubectl logs` is not served).
fn finished_log(c: &TestCluster, ns: &str, name: &str, container: &str) -> String {
    let done = wait_until(Duration::from_secs(30), || {
        matches!(
            jsonpath(c, "pod", ns, name, "{.status.phase}").as_str(),
            "Succeeded" | "Failed"
        )
    });
    let pod = c.kubectl(&["get", "pod", "-n", ns, name, "-o", "yaml"]);
    assert!(done, "pod {ns}/{name} did not finish: {}", text(&pod));
    let uid = jsonpath(c, "pod", ns, name, "{.metadata.uid}");
    let node = jsonpath(c, "pod", ns, name, "{.spec.nodeName}");
    let index = node.strip_prefix("node-").unwrap_or(&node).to_string();
    let path = c.data_dir.join(format!(
        "nodes/{index}/state/pods/{uid}/logs/{container}/0.log"
    ));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", path.display(), text(&pod)))
}

fn kube_dns_ip(c: &TestCluster) -> String {
    let ip = jsonpath(c, "svc", "kube-system", "kube-dns", "{.spec.clusterIP}");
    // The 10th address of the test's own service range, as kubeadm places kube-dns.
    let prefix = c.service_cidr().trim_end_matches(".0.0/16").to_string();
    assert_eq!(ip, format!("{prefix}.0.10"));
    ip
}

/// `dig` from inside pod `ns/pod` against the cluster DNS; returns the whole printed reply.
fn dig(c: &TestCluster, ns: &str, pod: &str, dns: &str, name: &str, qtype: &str) -> String {
    let server = format!("@{dns}");
    let out = c.in_pod(
        ns,
        pod,
        &[
            "dig", "+tries=1", "+time=2", "+nocmd", "+nostats", &server, name, qtype,
        ],
    );
    stdout(&out)
}

/// The records of the answer section as `name ttl class type data` with single spaces.
fn answers(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in reply.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            out.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

fn rcode(reply: &str) -> String {
    reply
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("no reply")
        .to_string()
}

/// Answer records with the TTL column dropped (TTL checked separately).
fn records(reply: &str) -> Vec<String> {
    answers(reply)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mut v = vec![f[0]];
            v.extend(&f[2..]);
            v.join(" ")
        })
        .collect()
}

fn demoapp_pod(ns: &str, name: &str, node: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {app}
spec:
  nodeName: {node}
  containers:
  - name: demoapp
    image: ikubernetes/demoapp:v1.0
    ports:
    - name: http
      containerPort: 80
---
"#
    )
}

fn service(ns: &str, name: &str, app: &str, headless: bool) -> String {
    let cluster_ip = if headless { "\n  clusterIP: None" } else { "" };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    app: {app}{cluster_ip}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 80
---
"#
    )
}

fn busybox_pod(ns: &str, name: &str, script: &str) -> String {
    // The script as one YAML double-quoted string.
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "{script}"]
---
"#
    )
}

/// Issue 6: the record matrix with `dig` from a pod, then the pod's own resolver (resolv.conf search path,
/// ndots:5) with glibc `getent`, busybox `nslookup` and `wget` by short and namespace-qualified names.
#[test]
fn cluster_dns_answers_pods_for_services_across_namespaces() {
    let c = TestCluster::new(2);
    let out = c.up(&[]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let dns = kube_dns_ip(&c);

    let mut m = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n---\n");
    m += &demoapp_pod("default", "web-1", "node-1", "web");
    m += &demoapp_pod("default", "web-2", "node-2", "web");
    m += &demoapp_pod("other", "api-1", "node-2", "api");
    m += &service("default", "web", "web", false);
    m += &service("default", "web-headless", "web", true);
    m += &service("other", "api", "api", false);
    m += r#"apiVersion: v1
kind: Service
metadata:
  name: ext
  namespace: default
spec:
  type: ExternalName
  externalName: api.other.svc.cluster.local
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
spec:
  nodeName: node-1
  containers:
  - name: pause
    image: registry.k8s.io/pause:3.9
"#;
    create(&c, "matrix", &m);
    let web1 = wait_ready(&c, "default", "web-1");
    let web2 = wait_ready(&c, "default", "web-2");
    wait_ready(&c, "other", "api-1");
    wait_ready(&c, "default", "client");
    let web_ip = jsonpath(&c, "svc", "default", "web", "{.spec.clusterIP}");
    let api_ip = jsonpath(&c, "svc", "other", "api", "{.spec.clusterIP}");
    assert!(!web_ip.is_empty() && !api_ip.is_empty());

    // The DNS follows the API through watches: wait until the last objects are visible, then check.
    let web_fqdn = "web.default.svc.cluster.local.";
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = dig(
                &c,
                "default",
                "client",
                &dns,
                "web-headless.default.svc.cluster.local",
                "A",
            );
            records(&r).len() == 2
                && records(&dig(
                    &c,
                    "default",
                    "client",
                    &dns,
                    "ext.default.svc.cluster.local",
                    "A",
                ))
                .len()
                    == 2
        }),
        "{}",
        dig(
            &c,
            "default",
            "client",
            &dns,
            "web-headless.default.svc.cluster.local",
            "A"
        )
    );

    // A of a ClusterIP service: authoritative, the default TTL of 5 s.
    let r = dig(&c, "default", "client", &dns, web_fqdn, "A");
    assert_eq!(rcode(&r), "NOERROR", "{r}");
    assert!(r.contains(" aa "), "not authoritative: {r}");
    assert_eq!(answers(&r), [format!("{web_fqdn} 5 IN A {web_ip}")], "{r}");
    // Case-insensitive, answering with the name as asked.
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "WEB.Default.SVC.cluster.local",
        "A",
    );
    assert_eq!(
        records(&r),
        [format!("WEB.Default.SVC.cluster.local. IN A {web_ip}")],
        "{r}"
    );
    // The other namespace's service.
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "api.other.svc.cluster.local",
        "A",
    );
    assert_eq!(
        records(&r),
        [format!("api.other.svc.cluster.local. IN A {api_ip}")],
        "{r}"
    );

    // Headless: one A per ready endpoint, the pod IPs.
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "web-headless.default.svc.cluster.local",
        "A",
    );
    let mut got = records(&r);
    got.sort();
    let mut want = vec![
        format!("web-headless.default.svc.cluster.local. IN A {web1}"),
        format!("web-headless.default.svc.cluster.local. IN A {web2}"),
    ];
    want.sort();
    assert_eq!(got, want, "{r}");

    // SRV for the named port: port 80, target the service name.
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "_http._tcp.web.default.svc.cluster.local",
        "SRV",
    );
    let srv = records(&r);
    assert_eq!(srv.len(), 1, "{r}");
    assert!(
        srv[0].starts_with("_http._tcp.web.default.svc.cluster.local. IN SRV ")
            && srv[0].ends_with(&format!(" 80 {web_fqdn}")),
        "{r}"
    );
    assert!(
        r.contains(&format!("{web_fqdn}")) && r.contains(&web_ip),
        "SRV glue: {r}"
    );

    // ExternalName: a CNAME, chased to the target's address.
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "ext.default.svc.cluster.local",
        "A",
    );
    assert_eq!(
        records(&r),
        [
            "ext.default.svc.cluster.local. IN CNAME api.other.svc.cluster.local.".to_string(),
            format!("api.other.svc.cluster.local. IN A {api_ip}"),
        ],
        "{r}"
    );

    // PTR of the ClusterIP.
    let o: Vec<&str> = web_ip.split('.').collect();
    let arpa = format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
    let r = dig(&c, "default", "client", &dns, &arpa, "PTR");
    assert_eq!(records(&r), [format!("{arpa} IN PTR {web_fqdn}")], "{r}");

    // Missing names: NXDOMAIN with an SOA in the authority section; the namespace name itself exists.
    for missing in [
        "nope.default.svc.cluster.local",
        "web.nosuchns.svc.cluster.local",
        "api.default.svc.cluster.local",
    ] {
        let r = dig(&c, "default", "client", &dns, missing, "A");
        assert_eq!(rcode(&r), "NXDOMAIN", "{missing}: {r}");
        let soa = r
            .lines()
            .skip_while(|l| !l.starts_with(";; AUTHORITY SECTION:"))
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        assert!(
            soa.starts_with("cluster.local. 5 IN SOA "),
            "{missing}: no SOA: {r}"
        );
    }
    let r = dig(
        &c,
        "default",
        "client",
        &dns,
        "other.svc.cluster.local",
        "A",
    );
    assert_eq!(rcode(&r), "NOERROR", "{r}");
    assert!(answers(&r).is_empty(), "{r}");

    // The pod's own resolver: its resolv.conf, the search path, glibc and busybox clients, HTTP by name.
    // (No `wget -T`: Debian's busybox-static 1.35 wget crashes with a timeout option, even on the host.)
    create(
        &c,
        "resolver",
        &busybox_pod(
            "default",
            "resolver",
            "cat /etc/resolv.conf; \
             echo getent-web: $(/usr/bin/getent hosts web); \
             echo getent-api: $(/usr/bin/getent hosts api.other); \
             echo getent-missing: $(/usr/bin/getent hosts nope || echo none); \
             echo wget-web: $(wget -q -O- http://web); \
             echo wget-api: $(wget -q -O- http://api.other/)",
        ),
    );
    let log = finished_log(&c, "default", "resolver", "main");
    assert!(log.contains(&format!("nameserver {dns}")), "{log}");
    assert!(
        log.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{log}"
    );
    assert!(log.contains("options ndots:5"), "{log}");
    assert!(
        log.contains(&format!(
            "getent-web: {web_ip} web.default.svc.cluster.local"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("getent-api: {api_ip} api.other.svc.cluster.local")),
        "{log}"
    );
    assert!(log.contains("getent-missing: none"), "{log}");
    let wget_web = log
        .lines()
        .find_map(|l| l.strip_prefix("wget-web: "))
        .unwrap_or_default();
    assert!(
        wget_web.starts_with("iKubernetes demoapp v1.0 !! ClientIP: ")
            && (wget_web.contains("ServerName: web-1,") || wget_web.contains("ServerName: web-2,")),
        "{log}"
    );
    let wget_api = log
        .lines()
        .find_map(|l| l.strip_prefix("wget-api: "))
        .unwrap_or_default();
    assert!(wget_api.contains("ServerName: api-1, ServerIP: "), "{log}");
}

/// Issue 6: a pod started after a service sees the service's variables, Docker-links style, and the
/// `kubernetes` service's; a service created after the pod started is not in its environment.
#[test]
fn pods_see_environment_variables_of_services_that_existed_before_them() {
    let c = TestCluster::new(1);
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    create(
        &c,
        "redis",
        r#"apiVersion: v1
kind: Service
metadata:
  name: redis-master
spec:
  selector:
    app: redis
  ports:
  - name: redis
    port: 6379
    targetPort: 6379
"#,
    );
    let ip = jsonpath(&c, "svc", "default", "redis-master", "{.spec.clusterIP}");
    let api_ip = jsonpath(&c, "svc", "default", "kubernetes", "{.spec.clusterIP}");
    assert!(!ip.is_empty() && !api_ip.is_empty());
    create(&c, "env", &busybox_pod("default", "env", "env | sort"));
    let log = finished_log(&c, "default", "env", "main");
    let env: Vec<&str> = log.lines().collect();
    for want in [
        format!("REDIS_MASTER_SERVICE_HOST={ip}"),
        "REDIS_MASTER_SERVICE_PORT=6379".to_string(),
        "REDIS_MASTER_SERVICE_PORT_REDIS=6379".to_string(),
        format!("REDIS_MASTER_PORT=tcp://{ip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP=tcp://{ip}:6379"),
        "REDIS_MASTER_PORT_6379_TCP_PROTO=tcp".to_string(),
        "REDIS_MASTER_PORT_6379_TCP_PORT=6379".to_string(),
        format!("REDIS_MASTER_PORT_6379_TCP_ADDR={ip}"),
        format!("KUBERNETES_SERVICE_HOST={api_ip}"),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
        "KUBERNETES_SERVICE_PORT_HTTPS=443".to_string(),
        format!("KUBERNETES_PORT=tcp://{api_ip}:443"),
    ] {
        assert!(env.contains(&want.as_str()), "missing {want}:\n{log}");
    }

    // A service created after the pod started is not injected into it (nor into a restarted container).
    create(
        &c,
        "late",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: late\nspec:\n  ports:\n  - port: 81\n",
    );
    create(&c, "env2", &busybox_pod("default", "env2", "env | sort"));
    let log2 = finished_log(&c, "default", "env2", "main");
    assert!(log2.contains("LATE_SERVICE_HOST="), "{log2}");
    assert!(!log.contains("LATE_"), "{log}");
    // enableServiceLinks: false keeps only the kubernetes service.
    create(
        &c,
        "nolinks",
        &busybox_pod("default", "nolinks", "env | sort").replace(
            "  restartPolicy: Never\n",
            "  restartPolicy: Never\n  enableServiceLinks: false\n",
        ),
    );
    let log3 = finished_log(&c, "default", "nolinks", "main");
    assert!(!log3.contains("REDIS_MASTER"), "{log3}");
    assert!(
        log3.contains(&format!("KUBERNETES_SERVICE_HOST={api_ip}")),
        "{log3}"
    );
}

/// Issue 4: two demoapp pods on different nodes; each reaches the other by pod IP and the answer shows the
/// caller's own pod IP (no NAT between nodes); the host reaches pod IPs; a pod reaches the host's bridge
/// address (the API server port).
fn pod_network_across_nodes(overlay: &str) {
    let c = TestCluster::new(2);
    let out = c.up(&["--dns-replicas", "0", "--overlay", overlay]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let mut m = demoapp_pod("default", "a", "node-1", "a");
    m += &demoapp_pod("default", "b", "node-2", "b");
    create(&c, "pods", &m);
    let a = wait_ready(&c, "default", "a");
    let b = wait_ready(&c, "default", "b");
    assert_ne!(
        a.rsplitn(2, '.').nth(1),
        b.rsplitn(2, '.').nth(1),
        "pods on different nodes share a podCIDR: {a} {b}"
    );
    for (from, from_ip, to, to_ip) in [("a", &a, "b", &b), ("b", &b, "a", &a)] {
        let out = c.in_pod(
            "default",
            from,
            &["curl", "-s", "-m", "3", &format!("http://{to_ip}/")],
        );
        assert_eq!(
            stdout(&out),
            format!(
                "iKubernetes demoapp v1.0 !! ClientIP: {from_ip}, ServerName: {to}, ServerIP: {to_ip}!"
            ),
            "{from} -> {to} over {overlay}: {}",
            text(&out)
        );
    }
    // The host reaches both pods (as the seeds' master node does).
    for (name, ip) in [("a", &a), ("b", &b)] {
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "3", &format!("http://{ip}/hostname")])
            .output()
            .expect("curl");
        assert!(
            stdout(&out).contains(name),
            "host -> {name}: {}",
            text(&out)
        );
    }
    // A pod reaches the host's bridge address: the API server answers (any HTTP status is an answer).
    let host = format!("172.31.{}.1", c.octet);
    let out = c.in_pod(
        "default",
        "b",
        &[
            "curl",
            "-sk",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{host}:{}/version", c.api_port),
        ],
    );
    let code = stdout(&out);
    assert!(
        code.len() == 3 && code != "000",
        "pod b -> host API {host}: {}",
        text(&out)
    );
}

#[test]
fn pods_on_different_nodes_reach_each_other_without_nat_over_vxlan() {
    pod_network_across_nodes("vxlan");
}

#[test]
fn pods_on_different_nodes_reach_each_other_without_nat_over_host_gw() {
    pod_network_across_nodes("host-gw");
}
