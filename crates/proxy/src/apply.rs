//! Kernel-facing commands: `nft -f -` (one transaction per call), nf_tables batches over netlink (endpoint
//! moves), `conntrack -D`, `ip addr` for LoadBalancer addresses. A `Runner` can target another network namespace
//! (tests and benchmarks): commands through `ip netns exec`, netlink from a short-lived thread of its own that
//! enters the namespace, so no runtime thread ever changes namespace.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::model::{Protocol, ServiceModel};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("entering network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the data-plane commands, in this namespace or (for tests) in a named one.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    pub netns: Option<String>,
    /// The netfilter netlink socket, kept between batches (shared by clones).
    netlink_socket: Arc<parking_lot::Mutex<Option<std::os::fd::OwnedFd>>>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    pub fn in_netns(name: impl Into<String>) -> Runner {
        Runner {
            netns: Some(name.into()),
            ..Runner::default()
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Run `program args` with `stdin`; Ok(stdout) on exit 0.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, ApplyError> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_err = |source| ApplyError::Spawn {
            program: program.to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data).await.map_err(spawn_err)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        Ok(Output {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Apply an nft script as one atomic transaction.
    pub async fn nft(&self, script: &str) -> Result<(), ApplyError> {
        if script.is_empty() {
            return Ok(());
        }
        self.nft_streamed(|out| {
            let _ = out.write_str(script);
        })
        .await
        .map(|_| ())
    }

    /// Apply an nf_tables batch (one atomic transaction) over netlink, on a socket kept for the next batches.
    pub async fn netlink(&self, batch: crate::netlink::Batch) -> Result<(), ApplyError> {
        let socket = Arc::clone(&self.netlink_socket);
        let netns = self.netns.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut slot = socket.lock();
            let fd = match slot.take() {
                Some(fd) => fd,
                None => open_netlink_socket(netns.as_deref())?,
            };
            crate::netlink::apply(&fd, &batch)?;
            // Only a socket whose replies were all read is reused.
            *slot = Some(fd);
            Ok(())
        })
        .await;
        joined.unwrap_or_else(|e| {
            Err(ApplyError::Netlink(crate::netlink::NetlinkError::Io(
                std::io::Error::other(e),
            )))
        })
    }

    /// Apply an nft script as one atomic transaction while `generate` writes it: `nft` parses the first parts
    /// while the rest is still being rendered (a full sync at 10,000 services renders ~6 MB). Returns the
    /// script's size.
    pub async fn nft_streamed(
        &self,
        generate: impl FnOnce(&mut dyn std::fmt::Write),
    ) -> Result<usize, ApplyError> {
        use std::io::Write as _;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => std::process::Command::new("nft"),
        };
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawn_err = |source| ApplyError::Spawn {
            program: "nft".into(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| spawn_err(std::io::Error::other("no stdin pipe")))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // A thread of its own, so that the pipe is fed while this one renders, whatever the runtime flavour.
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for chunk in rx {
                stdin.write_all(chunk.as_bytes())?;
            }
            Ok(())
        });
        let mut sink = ChunkSink {
            buf: String::new(),
            tx,
            total: 0,
        };
        generate(&mut sink);
        sink.flush();
        let total = sink.total;
        drop(sink);
        let out = tokio::task::spawn_blocking(move || {
            // A write error means nft exited early; its status and stderr tell why.
            let _ = writer.join();
            child.wait_with_output()
        })
        .await
        .map_err(|e| spawn_err(std::io::Error::other(e)))?
        .map_err(spawn_err)?;
        if out.status.success() {
            Ok(total)
        } else {
            Err(ApplyError::Failed {
                program: "nft".into(),
                status: out.status.to_string(),
                stderr: truncate(String::from_utf8_lossy(&out.stderr).into_owned()),
            })
        }
    }

    /// Delete the conntrack entries matching `filter`. "Nothing matched" is success.
    pub async fn conntrack_delete(&self, filter: &ConntrackFilter) -> Result<(), ApplyError> {
        let args = filter.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run("conntrack", &args, None).await?;
        // conntrack exits 1 with "0 flow entries have been deleted" when nothing matched.
        if out.success || out.stderr.contains("0 flow entries") {
            Ok(())
        } else {
            Err(ApplyError::Failed {
                program: "conntrack".into(),
                status: out.status,
                stderr: truncate(out.stderr),
            })
        }
    }

    /// Run `ip args...`.
    pub async fn ip(&self, args: &[&str]) -> Result<String, ApplyError> {
        let out = self.run("ip", args, None).await?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(ApplyError::Failed {
                program: format!("ip {}", args.join(" ")),
                status: out.status,
                stderr: truncate(out.stderr),
            })
        }
    }
}

/// A netfilter netlink socket in this namespace, or in the named one (opened from a thread of its own, so that
/// entering the namespace never affects a runtime thread; the socket stays in that namespace).
fn open_netlink_socket(netns: Option<&str>) -> Result<std::os::fd::OwnedFd, ApplyError> {
    let Some(ns) = netns else {
        return Ok(crate::netlink::open_socket()?);
    };
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        Ok(crate::netlink::open_socket()?)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(ApplyError::Netlink(crate::netlink::NetlinkError::Io(
            std::io::Error::other("netlink socket thread panicked"),
        )))
    })
}

/// Move the calling thread into the named network namespace (`ip netns` naming).
fn enter_netns(name: &str) -> Result<(), ApplyError> {
    use std::os::fd::AsRawFd;
    let err = |source| ApplyError::Netns {
        netns: name.to_string(),
        source,
    };
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).map_err(err)?;
    // SAFETY: setns on a valid namespace descriptor; only this thread's namespace changes.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Collects rendered text and hands it to the pipe writer in large chunks.
struct ChunkSink {
    buf: String,
    tx: std::sync::mpsc::Sender<String>,
    total: usize,
}

impl ChunkSink {
    const CHUNK: usize = 256 * 1024;

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.total += self.buf.len();
            // The writer only stops early when nft has exited; the result then comes from nft itself.
            let _ = self.tx.send(std::mem::take(&mut self.buf));
        }
    }
}

impl std::fmt::Write for ChunkSink {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= Self::CHUNK {
            self.flush();
        }
        Ok(())
    }
}

struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

fn truncate(mut s: String) -> String {
    if s.len() > 4000 {
        let mut cut = 4000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Which UDP flows to forget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConntrackFilter {
    /// Flows to a service address that were DNATed to an endpoint which is gone.
    ServiceToEndpoint {
        service_ip: IpAddr,
        endpoint_ip: IpAddr,
    },
    /// Flows to a node port DNATed to an endpoint which is gone.
    NodePortToEndpoint { node_port: u16, endpoint_ip: IpAddr },
    /// Flows to a service address and port that was not served before (they never reached a pod).
    ServicePort { service_ip: IpAddr, port: u16 },
}

impl ConntrackFilter {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        match self {
            ConntrackFilter::ServiceToEndpoint {
                service_ip,
                endpoint_ip,
            } => {
                a.extend(["--orig-dst".into(), service_ip.to_string()]);
                a.extend(["--dst-nat".into(), endpoint_ip.to_string()]);
            }
            ConntrackFilter::NodePortToEndpoint {
                node_port,
                endpoint_ip,
            } => {
                a.extend(["--orig-port-dst".into(), node_port.to_string()]);
                a.extend(["--dst-nat".into(), endpoint_ip.to_string()]);
            }
            ConntrackFilter::ServicePort { service_ip, port } => {
                a.extend(["--orig-dst".into(), service_ip.to_string()]);
                a.extend(["--orig-port-dst".into(), port.to_string()]);
            }
        }
        a
    }
}

/// The UDP conntrack entries made stale by a service changing from `old` to `new` (pure). UDP has no
/// connection end, so without this a client keeps sending to a dead pod (the DNS blackhole).
pub fn stale_udp_flows(
    old: Option<&ServiceModel>,
    new: Option<&ServiceModel>,
) -> Vec<ConntrackFilter> {
    let mut out = Vec::new();
    let empty = ServiceModel::default();
    let old = old.unwrap_or(&empty);
    let new = new.unwrap_or(&empty);
    for p in old
        .ports
        .iter()
        .filter(|p| p.name.protocol == Protocol::Udp)
    {
        let after = new.ports.iter().find(|n| n.name == p.name);
        let still = |ip: &IpAddr| {
            after.is_some_and(|n| {
                n.cluster_endpoints
                    .iter()
                    .chain(&n.local_endpoints)
                    .any(|e| &e.ip == ip)
            })
        };
        let mut gone: Vec<IpAddr> = p
            .cluster_endpoints
            .iter()
            .chain(&p.local_endpoints)
            .map(|e| e.ip)
            .filter(|ip| !still(ip))
            .collect();
        gone.sort();
        gone.dedup();
        for ep in gone {
            for sip in p.service_ips() {
                out.push(ConntrackFilter::ServiceToEndpoint {
                    service_ip: *sip,
                    endpoint_ip: ep,
                });
            }
            if let Some(np) = p.node_port {
                out.push(ConntrackFilter::NodePortToEndpoint {
                    node_port: np,
                    endpoint_ip: ep,
                });
            }
        }
    }
    for n in new
        .ports
        .iter()
        .filter(|p| p.name.protocol == Protocol::Udp)
    {
        let before = old.ports.iter().find(|p| p.name == n.name);
        if n.has_endpoints() && !before.is_some_and(|b| b.has_endpoints()) {
            for sip in n.service_ips() {
                out.push(ConntrackFilter::ServicePort {
                    service_ip: *sip,
                    port: n.name.port,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
