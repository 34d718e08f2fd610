//! Processes of the embedded cluster: starting detached `skiff` processes (optionally inside a node's
//! network namespace), pid files, finding processes by network namespace or ancestry, and stopping them.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Error;

/// Starts `exe args` in its own session (it must outlive `skiff up` and ignore the terminal's SIGHUP),
/// stdout/stderr appended to `log`, inside the network namespace at `netns` if given. Returns its pid.
pub fn spawn_detached(
    exe: &Path,
    args: &[String],
    log: &Path,
    netns: Option<&Path>,
) -> Result<u32, Error> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| Error::Io {
            what: format!("opening {}", log.display()),
            source,
        })?;
    let err = out.try_clone().map_err(|source| Error::Io {
        what: format!("duplicating {}", log.display()),
        source,
    })?;
    let ns_file = match netns {
        Some(p) => Some(File::open(p).map_err(|source| Error::Io {
            what: format!("opening {}", p.display()),
            source,
        })?),
        None => None,
    };
    let ns_fd = ns_file.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // A daemon must not keep descriptors its caller inherited without close-on-exec (a caller's
            // `flock` lock, a test harness's pipe): mark every descriptor above stdio close-on-exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Io {
        what: format!("starting {} {}", exe.display(), args.join(" ")),
        source,
    })?;
    Ok(child.id())
}

pub fn write_pid_file(path: &Path, pid: u32) -> Result<(), Error> {
    fs::write(path, format!("{pid}\n")).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// The pid recorded in `path`, if the file exists and that process still runs a `skiff` executable (a pid
/// file left by a crash may name a pid the kernel has since reused for something else).
pub fn read_live_pid(path: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (is_alive(pid) && is_skiff(pid)).then_some(pid)
}

fn is_skiff(pid: u32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(argv0)
        .rsplit('/')
        .next()
        .is_some_and(|n| n.contains("skiff"))
}

/// Alive = exists and is not a zombie (a zombie has released everything but its pid).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// (state, ppid) from /proc/<pid>/stat; the command name may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every live descendant of `roots` (not including the roots).
pub fn descendants(roots: &[u32]) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((_, ppid)) = parse_stat(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if out.insert(c) {
                stack.push(c);
            }
        }
    }
    out
}

/// Inode of a network namespace file (a /run/netns entry or /proc/<pid>/ns/net).
pub fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Every process whose network namespace is one of `inodes`.
pub fn pids_in_netns(inodes: &BTreeSet<u64>) -> BTreeSet<u32> {
    if inodes.is_empty() {
        return BTreeSet::new();
    }
    all_pids()
        .into_iter()
        .filter(|pid| {
            netns_inode(Path::new(&format!("/proc/{pid}/ns/net")))
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .collect()
}

/// SIGTERM, up to `grace` for them to exit, then SIGKILL; returns once all are gone (or after 3 s more).
pub fn terminate(pids: &BTreeSet<u32>, grace: Duration) {
    let me = std::process::id();
    let pids: Vec<u32> = pids.iter().copied().filter(|&p| p != me && p > 1).collect();
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if wait_gone(&pids, grace) {
        return;
    }
    for &pid in &pids {
        if is_alive(pid) {
            tracing::debug!(pid, "SIGKILL after grace period");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    wait_gone(&pids, Duration::from_secs(3));
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !is_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (a (weird) name) S 42 1234 1234 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_and_terminates_a_real_child_tree() {
        // sh starts a sleep child; both must be found as descendants and be gone after terminate().
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & wait")
            .spawn()
            .unwrap();
        let root = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = BTreeSet::new();
        while found.is_empty() && Instant::now() < deadline {
            found = descendants(&[root]);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "sleep child of sh");
        let mut all = found.clone();
        all.insert(root);
        terminate(&all, Duration::from_millis(500));
        let _ = child.wait();
        for pid in found {
            assert!(!is_alive(pid), "{pid} still alive");
        }
    }
}
