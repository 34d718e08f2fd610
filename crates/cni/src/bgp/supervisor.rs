//! Running BIRD: one `bird -f` child per node in the node's network namespace, with its own control socket in
//! the agent's data dir; reconfiguration through `birdc configure`; its stderr forwarded to the agent's log.

// Fork hooks (setns, parent-death signal) and signalling our own child: each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bird exited ({status}): {log}")]
    Exited { status: String, log: String },
    #[error("bird did not answer on {socket} within {secs}s: {detail}")]
    NoAnswer {
        socket: String,
        secs: u64,
        detail: String,
    },
    #[error("birdc {command}: {output}")]
    Birdc { command: String, output: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Paths and binaries of one node's BIRD.
#[derive(Debug, Clone)]
pub struct BirdPaths {
    pub bird: PathBuf,
    pub birdc: PathBuf,
    pub dir: PathBuf,
}

impl BirdPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }
}

/// A running BIRD. Dropping it kills the process.
pub struct Bird {
    child_pid: Option<u32>,
    exit: tokio::sync::watch::Receiver<Option<String>>,
    log: Arc<Mutex<VecDeque<String>>>,
}

const LOG_LINES: usize = 12;

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    log.lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

impl Bird {
    /// Start `bird -f` in the network namespace at `netns` (None: this process's) and wait until its control
    /// socket answers. BIRD dies with the agent (parent-death signal), so a killed agent leaves no BIRD behind.
    pub async fn start(
        paths: &BirdPaths,
        netns: Option<&Path>,
        on_exit: impl Fn() + Send + 'static,
    ) -> Result<Bird, BirdError> {
        use std::os::fd::AsRawFd;
        let socket = paths.socket();
        // A stale socket of a previous BIRD would make `bird` refuse to start.
        let _ = std::fs::remove_file(&socket);
        let mut cmd = tokio::process::Command::new(&paths.bird);
        cmd.arg("-f")
            .arg("-c")
            .arg(paths.config())
            .arg("-s")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let ns_file = match netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|source| BirdError::Io {
                what: format!("opening {}", p.display()),
                source,
            })?),
            None => None,
        };
        let fd = ns_file.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: only async-signal-safe syscalls (prctl, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| BirdError::Spawn {
            binary: paths.bird.display().to_string(),
            source,
        })?;
        drop(ns_file);
        let log: Arc<Mutex<VecDeque<String>>> = Default::default();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "bird", "{line}");
                    if let Ok(mut l) = log.lock() {
                        if l.len() == LOG_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                }
            });
        }
        let child_pid = child.id();
        let (tx, exit) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("waiting for bird: {e}"),
            };
            let _ = tx.send(Some(status));
            on_exit();
        });
        let bird = Bird {
            child_pid,
            exit,
            log,
        };
        // Ready once the control socket answers; an early exit (bad config, socket in use) is the error.
        let secs = 10;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut last;
        loop {
            if let Some(status) = bird.exited() {
                // Give the stderr forwarder a moment to catch BIRD's last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(BirdError::Exited {
                    status,
                    log: tail(&bird.log),
                });
            }
            match birdc(paths, &["show", "status"]).await {
                Ok(out) if out.contains("Daemon is up and running") => return Ok(bird),
                Ok(out) => last = out,
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BirdError::NoAnswer {
                    socket: socket.display().to_string(),
                    secs,
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, once BIRD has exited.
    pub fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// BIRD's last log lines (for error reports).
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child_pid
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // The waiter task owns the child; end BIRD by its pid so it removes its kernel routes on the way out.
        if let (Some(pid), None) = (self.child_pid, self.exited()) {
            // SAFETY: plain kill(2) on the pid of our own, still unreaped child.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

/// Run `birdc -s <socket> <args>` and return its output; a `birdc` failure or a BIRD error reply (codes
/// 8xxx/9xxx) is an error.
pub async fn birdc(paths: &BirdPaths, args: &[&str]) -> Result<String, BirdError> {
    birdc_at(&paths.birdc, &paths.socket(), args).await
}

pub async fn birdc_at(birdc: &Path, socket: &Path, args: &[&str]) -> Result<String, BirdError> {
    let command = args.join(" ");
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(birdc)
            .arg("-s")
            .arg(socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| BirdError::Birdc {
        command: command.clone(),
        output: "no answer within 10s".into(),
    })?
    .map_err(|source| BirdError::Io {
        what: format!("running {}", birdc.display()),
        source,
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("Unable to connect") {
        return Err(BirdError::Birdc {
            command,
            output: text.trim().to_string(),
        });
    }
    Ok(text)
}

/// `birdc configure`: BIRD re-reads its configuration file and adds, removes or restarts only the protocols
/// that changed. A configuration BIRD rejects is an error (the running one stays).
pub async fn configure(paths: &BirdPaths) -> Result<(), BirdError> {
    let out = birdc(paths, &["configure"]).await?;
    if out.contains("Reconfigured")
        || out.contains("Reconfiguration in progress")
        || out.contains("Reconfiguration already in progress")
    {
        Ok(())
    } else {
        Err(BirdError::Birdc {
            command: "configure".into(),
            output: out.trim().to_string(),
        })
    }
}

/// One BGP session as `birdc show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    /// `up` / `start` / `down` ...
    pub state: String,
    /// The BGP state and detail: `Established`, `Active Socket: Connection refused`, ...
    pub info: String,
}

/// The BGP protocols of a `birdc show protocols` listing.
pub fn parse_protocols(text: &str) -> Vec<Session> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Name Proto Table State Since Info: the table column is `---` for BGP; `since` is one token with
        // `timeformat protocol iso long`... or two (date and time) with other formats: find the state after
        // the table column.
        if f.len() < 5 || f[1] != "BGP" {
            continue;
        }
        let state = f[3].to_string();
        let rest: Vec<&str> = f[4..]
            .iter()
            .skip_while(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .copied()
            .collect();
        out.push(Session {
            name: f[0].to_string(),
            state,
            info: rest.join(" "),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_protocols() {
        let text = "BIRD 2.0.12 ready.\n\
                    Name       Proto      Table      State  Since         Info\n\
                    device1    Device     ---        up     2026-12-02 14:24:08  \n\
                    mesh_172_30_0_3 BGP        ---        up     2026-12-02 14:24:09  Established   \n\
                    peer_172_30_0_1 BGP        ---        start  2026-12-02 14:24:08  Active        Socket: Connection refused\n";
        assert_eq!(
            parse_protocols(text),
            vec![
                Session {
                    name: "mesh_172_30_0_3".into(),
                    state: "up".into(),
                    info: "Established".into()
                },
                Session {
                    name: "peer_172_30_0_1".into(),
                    state: "start".into(),
                    info: "Active Socket: Connection refused".into()
                },
            ]
        );
    }
}
