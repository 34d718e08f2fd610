//! End-to-end (issue 4, "Nodes and pods"): 200 pod create/delete cycles on a real two-node `skiff up`
//! cluster leak nothing — no pod network namespace, no veth in a node namespace, no IPAM allocation, no agent
//! pod record, no container process — and no pod IP is handed out twice while its first holder lives.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;
const PODS_PER_ROUND: usize = 20;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The node's directory in the cluster's data dir (`nodes/<i>`).
fn node_dir(c: &TestCluster, i: u32) -> PathBuf {
    c.data_dir.join(format!("nodes/{i}"))
}

/// veth links inside node `i`'s network namespace (the host ends of pod interfaces).
fn node_veths(c: &TestCluster, i: u32) -> BTreeSet<String> {
    let out = c.in_node(i, &["ip", "-o", "link", "show", "type", "veth"]);
    assert!(out.status.success(), "ip link in node-{i}: {}", text(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

/// Where node `i`'s IPAM keeps its allocation files, read from the network configuration its agent uses
/// (`ipam.dataDir`, host-local's default `/var/lib/cni/networks` when absent, plus the network name), and the
/// node's pod subnet.
fn ipam_dir(c: &TestCluster, i: u32) -> (PathBuf, Subnet) {
    let conf_dir = node_dir(c, i).join("cni/net.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&conf_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", conf_dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let first = files
        .first()
        .unwrap_or_else(|| panic!("no conflist in {}", conf_dir.display()));
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(first).expect("reading the conflist"))
            .expect("conflist is JSON");
    let ipam = &conf["plugins"][0]["ipam"];
    let base = ipam["dataDir"]
        .as_str()
        .unwrap_or("/var/lib/cni/networks")
        .to_string();
    let network = conf["name"].as_str().expect("network name");
    let subnet = ipam["subnet"]
        .as_str()
        .and_then(Subnet::parse)
        .expect("ipam.subnet");
    (Path::new(&base).join(network), subnet)
}

/// An IPv4 subnet `a.b.c.d/len` (kept here rather than pulling a crate into the binary's dependencies).
#[derive(Debug, Clone, Copy)]
struct Subnet {
    network: u32,
    mask: u32,
}

impl Subnet {
    fn parse(s: &str) -> Option<Subnet> {
        let (addr, len) = s.split_once('/')?;
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        Some(Subnet {
            network: u32::from(addr) & mask,
            mask,
        })
    }
    fn contains(&self, a: &std::net::Ipv4Addr) -> bool {
        u32::from(*a) & self.mask == self.network
    }
}

/// Addresses of node `i`'s pod subnet that have an allocation file.
fn ipam_allocations(c: &TestCluster, i: u32) -> BTreeSet<std::net::Ipv4Addr> {
    let (dir, subnet) = ipam_dir(c, i);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .filter(|a| subnet.contains(a))
        .collect()
}

/// Pod records the agent of node `i` keeps (`<state>/pods/<uid>`).
fn pod_records(c: &TestCluster, i: u32) -> BTreeSet<String> {
    std::fs::read_dir(node_dir(c, i).join("state/pods"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Network namespace inode of every process, by pid.
fn process_netns() -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            out.insert(pid, meta.ino());
        }
    }
    out
}

/// Kernel start time (clock ticks since boot) of a pid: with the pid it identifies a process.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Fields after the command: state is field 3; starttime is field 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Clock ticks since boot now (the unit of a process's start time in /proc/<pid>/stat).
fn now_ticks() -> u64 {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/uptime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    (uptime * hz) as u64
}

/// One pod as the test saw it while it was Running.
#[derive(Debug)]
struct Seen {
    name: String,
    node: u32,
    ip: std::net::Ipv4Addr,
    netns: String,
    netns_inode: u64,
    /// Clock ticks since boot when its deletion was requested.
    deleted_at: u64,
    /// (pid, start ticks) of each container process, from the agent's record.
    processes: Vec<(u32, u64)>,
}

fn manifest(round: usize) -> String {
    let mut m = String::new();
    for k in 0..PODS_PER_ROUND {
        // `registry.k8s.io/pause` runs `sleep infinity`, which ends on SIGTERM: deletion is as quick as the
        // agent, not a grace period.
        m += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: r{round}-p{k}\n  labels:\n    round: \"{round}\"\nspec:\n  containers:\n  - name: pause\n    image: registry.k8s.io/pause:3.10\n---\n"
        );
    }
    m
}

/// The pods of a round: name -> (phase, podIP, nodeName, uid), from one listing.
fn list_round(c: &TestCluster, round: usize) -> BTreeMap<String, (String, String, String, String)> {
    let out = c.kubectl(&["get", "pods", "-l", &format!("round={round}"), "-o", "json"]);
    assert!(out.status.success(), "kubectl get pods: {}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("pod list JSON");
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                (
                    s(&p["status"]["phase"]),
                    s(&p["status"]["podIP"]),
                    s(&p["spec"]["nodeName"]),
                    s(&p["metadata"]["uid"]),
                ),
            )
        })
        .collect()
}

#[test]
fn two_hundred_pod_create_delete_cycles_leak_nothing() {
    let c = TestCluster::new(2);
    let out = c.up(&["--dns-replicas", "0"]);
    assert!(out.status.success(), "skiff up failed: {}", text(&out));
    let nodes = [1u32, 2];
    // A node can report Ready before its agent has written the network configuration (it waits for the
    // podCIDR first); the IPAM location is read from that file.
    assert!(
        wait_until(Duration::from_secs(10), || nodes.iter().all(|&i| {
            std::fs::read_dir(node_dir(&c, i).join("cni/net.d")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "conflist"))
            })
        })),
        "no network configuration written by the agents"
    );

    // The start state every check returns to.
    let veths0: Vec<BTreeSet<String>> = nodes.iter().map(|&i| node_veths(&c, i)).collect();
    let ipam0: Vec<BTreeSet<std::net::Ipv4Addr>> =
        nodes.iter().map(|&i| ipam_allocations(&c, i)).collect();
    let records0: Vec<BTreeSet<String>> = nodes.iter().map(|&i| pod_records(&c, i)).collect();
    let subnets: Vec<Subnet> = nodes.iter().map(|&i| ipam_dir(&c, i).1).collect();

    let started = Instant::now();
    let mut all: Vec<Seen> = Vec::new();
    let mut per_node = [0usize; 2];
    for round in 0..ROUNDS {
        let path = c.data_dir.with_file_name(format!("round-{round}.yaml"));
        std::fs::write(&path, manifest(round)).expect("writing manifest");
        let out = c.kubectl(&["create", "-f", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "round {round}: create: {}",
            text(&out)
        );

        // Every pod Running with an IP.
        let mut pods = BTreeMap::new();
        let ok = wait_until(Duration::from_secs(30), || {
            pods = list_round(&c, round);
            pods.len() == PODS_PER_ROUND
                && pods
                    .values()
                    .all(|(phase, ip, _, _)| phase == "Running" && !ip.is_empty())
        });
        assert!(
            ok,
            "round {round}: pods not Running with an IP after 30 s: {pods:#?}"
        );

        // While all of them live: distinct addresses, each inside its node's pod subnet and allocated in its
        // node's IPAM; one veth per pod in the node; the sandbox and processes the agent recorded exist.
        let mut round_seen = Vec::new();
        for (name, (_, ip, node, uid)) in &pods {
            let i: u32 = node
                .strip_prefix("node-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} on unexpected node {node:?}"));
            let ip: std::net::Ipv4Addr = ip.parse().expect("podIP is IPv4");
            assert!(
                subnets[(i - 1) as usize].contains(&ip),
                "{name}: {ip} outside {node}'s pod subnet"
            );
            let record_path = node_dir(&c, i).join(format!("state/pods/{uid}/state.json"));
            let record: Value = serde_json::from_str(
                &std::fs::read_to_string(&record_path)
                    .unwrap_or_else(|e| panic!("{name}: {}: {e}", record_path.display())),
            )
            .expect("pod record JSON");
            let netns = record["netns"]
                .as_str()
                .expect("netns recorded")
                .to_string();
            let netns_inode = std::fs::metadata(Path::new("/run/netns").join(&netns))
                .unwrap_or_else(|e| panic!("{name}: /run/netns/{netns}: {e}"))
                .ino();
            let processes: Vec<(u32, u64)> = record["containers"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(|c| {
                    let r = &c["running"];
                    Some((r["pid"].as_u64()? as u32, r["start_ticks"].as_u64()?))
                })
                .collect();
            assert_eq!(processes.len(), 1, "{name}: container process: {record}");
            for &(pid, ticks) in &processes {
                assert_eq!(
                    start_ticks(pid),
                    Some(ticks),
                    "{name}: process {pid} not alive"
                );
            }
            per_node[(i - 1) as usize] += 1;
            round_seen.push(Seen {
                name: name.clone(),
                node: i,
                ip,
                netns,
                netns_inode,
                deleted_at: 0,
                processes,
            });
        }
        let ips: BTreeSet<_> = round_seen.iter().map(|s| s.ip).collect();
        assert_eq!(
            ips.len(),
            PODS_PER_ROUND,
            "round {round}: live pods share addresses: {round_seen:#?}"
        );
        for (k, &i) in nodes.iter().enumerate() {
            let here: BTreeSet<_> = round_seen
                .iter()
                .filter(|s| s.node == i)
                .map(|s| s.ip)
                .collect();
            let allocated = ipam_allocations(&c, i);
            assert_eq!(
                allocated
                    .difference(&ipam0[k])
                    .copied()
                    .collect::<BTreeSet<_>>(),
                here,
                "round {round}: node-{i}'s IPAM allocations are not its live pods' addresses"
            );
            assert_eq!(
                node_veths(&c, i).len(),
                veths0[k].len() + here.len(),
                "round {round}: node-{i}: one veth per pod"
            );
        }

        let deleted_at = now_ticks();
        for seen in &mut round_seen {
            seen.deleted_at = deleted_at;
        }
        let out = c.kubectl(&[
            "delete",
            "pods",
            "-l",
            &format!("round={round}"),
            "--wait=false",
        ]);
        assert!(
            out.status.success(),
            "round {round}: delete: {}",
            text(&out)
        );
        let gone = wait_until(Duration::from_secs(30), || list_round(&c, round).is_empty());
        assert!(
            gone,
            "round {round}: pods still listed 30 s after deletion: {:#?}",
            list_round(&c, round)
        );
        all.extend(round_seen);
    }
    assert_eq!(all.len(), ROUNDS * PODS_PER_ROUND);
    // Both nodes ran pods, so both agents' clean-up is what the checks below cover.
    assert!(
        per_node.iter().all(|&n| n > 0),
        "pods per node: {per_node:?}"
    );

    // Back to the start state. A pod object disappears once its agent has torn the sandbox down (the agent's
    // final delete), so this holds at once; the short wait only absorbs a listing racing that last step.
    let settled = wait_until(Duration::from_secs(10), || {
        nodes.iter().enumerate().all(|(k, &i)| {
            node_veths(&c, i) == veths0[k]
                && ipam_allocations(&c, i) == ipam0[k]
                && pod_records(&c, i) == records0[k]
        })
    });
    for (k, &i) in nodes.iter().enumerate() {
        let veths = node_veths(&c, i);
        assert_eq!(
            veths.difference(&veths0[k]).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "node-{i}: veths left behind"
        );
        let ipam = ipam_allocations(&c, i);
        assert_eq!(
            ipam.difference(&ipam0[k]).collect::<Vec<_>>(),
            Vec::<&std::net::Ipv4Addr>::new(),
            "node-{i}: IPAM allocations left behind in {}",
            ipam_dir(&c, i).0.display()
        );
        assert_eq!(ipam, ipam0[k], "node-{i}: IPAM allocations changed");
        assert_eq!(
            pod_records(&c, i),
            records0[k],
            "node-{i}: pod records left"
        );
    }
    assert!(settled);
    let netns_left: Vec<&str> = all
        .iter()
        .filter(|s| Path::new("/run/netns").join(&s.netns).exists())
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        netns_left.is_empty(),
        "pod network namespaces left: {netns_left:?}"
    );
    // No process of any pod: neither a recorded container process nor anything else still inside a pod's
    // network namespace (which would also keep the namespace alive after its /run/netns name is gone).
    // The kernel reuses namespace inode numbers once a namespace is freed, so a process in a namespace another
    // test created since then may show one of these numbers: only a process that started before its pod's
    // deletion was requested can be a leftover of that pod.
    let inodes: BTreeMap<u64, &Seen> = all.iter().map(|s| (s.netns_inode, s)).collect();
    let in_pod_netns: Vec<String> = process_netns()
        .into_iter()
        .filter_map(|(pid, ino)| {
            let pod = inodes.get(&ino)?;
            (start_ticks(pid)? < pod.deleted_at).then(|| format!("{pid} in {}", pod.name))
        })
        .collect();
    assert!(
        in_pod_netns.is_empty(),
        "processes left in pod network namespaces: {in_pod_netns:?}"
    );
    let alive: Vec<String> = all
        .iter()
        .flat_map(|s| s.processes.iter().map(move |p| (s.name.as_str(), *p)))
        .filter(|(_, (pid, ticks))| start_ticks(*pid) == Some(*ticks))
        .map(|(pod, (pid, _))| format!("{pid} of {pod}"))
        .collect();
    assert!(alive.is_empty(), "container processes left: {alive:?}");
    // 200 distinct sandboxes.
    assert_eq!(
        all.iter().map(|s| &s.netns).collect::<BTreeSet<_>>().len(),
        ROUNDS * PODS_PER_ROUND
    );
    eprintln!(
        "{} pods created and deleted in {:.1?} (node-1 {}, node-2 {})",
        all.len(),
        started.elapsed(),
        per_node[0],
        per_node[1]
    );

    let out = c.down();
    assert!(out.status.success(), "skiff down failed: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
