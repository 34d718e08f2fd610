//! The host as every node's external BGP peer (`skiff up --backend bgp`): a BIRD of its own in the host's
//! network namespace that accepts sessions from the node network and installs what the nodes announce (pod
//! CIDRs, the service CIDR, LoadBalancer and external IPs) into the cluster's route table, which one
//! `ip rule` consults before `main`. Nothing here installs a route itself.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use skiff_cni::bgp::bird::{self, HostBird};
use skiff_cni::bgp::supervisor::{self, Session};

use crate::layout::{Layout, HOST_RULE_PRIORITY};
use crate::{procs, Error};

pub const BIRD: &str = "/usr/sbin/bird";
pub const BIRDC: &str = "/usr/sbin/birdc";

pub fn host_config(layout: &Layout) -> Result<String, Error> {
    let timers = bird::Timers::new(layout.bgp_hold_time, None, 1)
        .map_err(|e| Error::InvalidOption(format!("--bgp-hold-time: {e}")))?;
    Ok(bird::render_host(&HostBird {
        cluster: layout.name.clone(),
        router_id: layout.bridge_ip,
        node_networks: std::iter::once((layout.bridge_ip, layout.node_network))
            .chain(layout.second_bridge_ip().zip(layout.second_network))
            .collect(),
        local_as: bird::Asn::default(),
        cluster_cidr: layout.cluster_cidr,
        service_cidr: layout.service_cidr,
        kernel_table: layout.host_route_table(),
        timers,
    }))
}

fn socket(layout: &Layout) -> std::path::PathBuf {
    layout.host_bird_dir().join("bird.ctl")
}

async fn ip(args: &[String]) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn rule_args(verb: &str, layout: &Layout) -> Vec<String> {
    vec![
        "-4".into(),
        "rule".into(),
        verb.into(),
        "priority".into(),
        HOST_RULE_PRIORITY.to_string(),
        "lookup".into(),
        layout.host_route_table().to_string(),
    ]
}

/// Start the host's BIRD and the rule that makes its table count; returns its pid once it answers.
pub async fn start(layout: &Layout) -> Result<u32, Error> {
    let dir = layout.host_bird_dir();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let conf = dir.join("bird.conf");
    std::fs::write(&conf, host_config(layout)?).map_err(|source| Error::Io {
        what: format!("writing {}", conf.display()),
        source,
    })?;
    let sock = socket(layout);
    let _ = std::fs::remove_file(&sock);
    if !Path::new(BIRD).exists() {
        return Err(Error::Other(format!(
            "--backend bgp needs BIRD ({BIRD}; Debian package bird2)"
        )));
    }
    let pid = procs::spawn_detached(
        Path::new(BIRD),
        &[
            "-f".into(),
            "-c".into(),
            conf.display().to_string(),
            "-s".into(),
            sock.display().to_string(),
        ],
        &layout.host_bird_log(),
        None,
    )?;
    procs::write_pid_file(&layout.host_bird_pid_file(), pid)?;
    if ip(&rule_args("show", layout))
        .await
        .map(|o| o.trim().is_empty())
        .unwrap_or(true)
    {
        ip(&rule_args("add", layout))
            .await
            .map_err(|e| Error::Other(format!("adding the host's ip rule: {e}")))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !procs::is_alive(pid) {
            return Err(Error::Other(format!(
                "the host's BIRD exited; {}:\n{}",
                layout.host_bird_log().display(),
                procs::log_tail(&layout.host_bird_log(), 20)
            )));
        }
        if supervisor::birdc_at(Path::new(BIRDC), &sock, &["show", "status"])
            .await
            .is_ok_and(|o| o.contains("Daemon is up and running"))
        {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout("the host's BIRD does not answer".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The destinations in the cluster's host route table (what the host learned over BGP).
pub async fn learned_routes(layout: &Layout) -> BTreeSet<Ipv4Net> {
    let out = ip(&[
        "-4".into(),
        "route".into(),
        "show".into(),
        "table".into(),
        layout.host_route_table().to_string(),
    ])
    .await
    .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|d| {
            d.parse::<Ipv4Net>()
                .ok()
                .or_else(|| d.parse::<std::net::Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .collect()
}

/// Remove the rule and whatever is left in the table (BIRD withdraws its routes when it stops; a killed
/// one cannot). Idempotent.
pub async fn cleanup(layout: &Layout) {
    for _ in 0..8 {
        if ip(&rule_args("del", layout)).await.is_err() {
            break;
        }
    }
    let _ = ip(&[
        "-4".into(),
        "route".into(),
        "flush".into(),
        "table".into(),
        layout.host_route_table().to_string(),
    ])
    .await;
    let _ = std::fs::remove_file(socket(layout));
}

/// BGP sessions of the BIRD at `socket`, or why they cannot be read.
pub async fn sessions(socket: &Path) -> Result<Vec<Session>, String> {
    supervisor::birdc_at(Path::new(BIRDC), socket, &["show", "protocols"])
        .await
        .map(|t| supervisor::parse_protocols(&t))
        .map_err(|e| e.to_string())
}

/// The host's sessions with the nodes (not the template protocol that accepts them).
pub async fn host_sessions(layout: &Layout) -> Result<Vec<Session>, String> {
    sessions(&socket(layout)).await.map(|s| {
        s.into_iter()
            .filter(|s| !s.name.starts_with("skiff_nodes"))
            .collect()
    })
}

/// One line: `2/3 Established (mesh_172_30_0_4: Active Socket: Connection refused)`.
pub fn summary(sessions: &Result<Vec<Session>, String>) -> String {
    match sessions {
        Err(e) => format!("BIRD not answering ({})", e.lines().next().unwrap_or("")),
        Ok(s) => {
            let up = s
                .iter()
                .filter(|x| x.info.starts_with("Established"))
                .count();
            let down: Vec<String> = s
                .iter()
                .filter(|x| !x.info.starts_with("Established"))
                .map(|x| format!("{}: {} {}", x.name, x.state, x.info))
                .collect();
            if down.is_empty() {
                format!("{up}/{} Established", s.len())
            } else {
                format!("{up}/{} Established ({})", s.len(), down.join(", "))
            }
        }
    }
}

/// The host BIRD's pid, if its pid file names a live BIRD running this cluster's configuration.
pub fn host_pid(layout: &Layout) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(layout.host_bird_pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours =
        String::from_utf8_lossy(&cmdline).contains(&layout.host_bird_dir().display().to_string());
    (procs::is_alive(pid) && ours).then_some(pid)
}
