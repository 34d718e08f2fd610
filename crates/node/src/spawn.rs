//! Starting a container process inside the pod's namespaces. The namespace work happens in the forked child
//! (pre_exec), never on an agent thread: join the pod's network namespace, get a UTS namespace with the pod's
//! hostname and a private mount namespace where the pod's resolv.conf and hosts cover the node's.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub arg0: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The pod's network namespace; None for hostNetwork pods.
    pub netns: Option<PathBuf>,
    /// Join these namespaces of a running container instead (exec probes): net, uts, mnt.
    pub join_pid: Option<i32>,
    pub hostname: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    /// stdout and stderr go here (appended); None: discarded.
    pub log: Option<PathBuf>,
    /// The pod's volumes, bind-mounted in the container's mount namespace (after resolv.conf and hosts).
    pub mounts: Vec<crate::volumes::Mount>,
    /// `securityContext.runAsUser` / `runAsGroup` / `supplementalGroups`: switched to right before exec.
    pub user: Option<User>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn last_err(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A tokio Command set up to start in the pod's namespaces.
pub fn command(spec: &SpawnSpec) -> io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.arg0(&spec.arg0)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().cloned());
    cmd.stdin(Stdio::null());
    match &spec.log {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    // Everything the child needs is opened / allocated here: after fork only syscalls are safe.
    let mut ns_files: Vec<(File, libc::c_int)> = Vec::new();
    if let Some(pid) = spec.join_pid {
        for (name, flag) in [
            ("net", libc::CLONE_NEWNET),
            ("uts", libc::CLONE_NEWUTS),
            ("mnt", libc::CLONE_NEWNS),
        ] {
            ns_files.push((File::open(format!("/proc/{pid}/ns/{name}"))?, flag));
        }
    } else if let Some(netns) = &spec.netns {
        ns_files.push((File::open(netns)?, libc::CLONE_NEWNET));
    }
    let joining = spec.join_pid.is_some();
    let hostname = spec.hostname.clone().filter(|_| !joining);
    let mut binds: Vec<(CString, CString, bool)> = if joining {
        Vec::new()
    } else {
        [
            (&spec.resolv_conf, "/etc/resolv.conf"),
            (&spec.hosts, "/etc/hosts"),
        ]
        .into_iter()
        .filter_map(|(src, dst)| src.as_ref().map(|s| (s.clone(), dst)))
        .map(|(src, dst)| Ok((cpath(&src)?, cpath(Path::new(dst))?, false)))
        .collect::<io::Result<_>>()?
    };
    if !joining {
        for m in &spec.mounts {
            binds.push((cpath(&m.source)?, cpath(&m.target)?, m.read_only));
        }
    }
    let user = spec.user.clone();
    // chdir after the mounts, so a working directory inside a volume is the volume's.
    let working_dir = spec.working_dir.as_deref().map(cpath).transpose()?;
    let groups: Vec<libc::gid_t> = user
        .as_ref()
        .map(|u| u.groups.iter().map(|g| *g as libc::gid_t).collect())
        .unwrap_or_default();
    let root = CString::new("/").unwrap_or_default();
    let new_mount_ns = !binds.is_empty();
    // SAFETY: the closure only makes system calls on data prepared above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            for (file, flag) in &ns_files {
                last_err(libc::setns(
                    BorrowedFd::borrow_raw(file.as_raw_fd()).as_raw_fd(),
                    *flag,
                ))?;
            }
            if !joining {
                let mut flags = 0;
                if hostname.is_some() {
                    flags |= libc::CLONE_NEWUTS;
                }
                if new_mount_ns {
                    flags |= libc::CLONE_NEWNS;
                }
                if flags != 0 {
                    last_err(libc::unshare(flags))?;
                }
                if let Some(h) = &hostname {
                    last_err(libc::sethostname(
                        h.as_ptr() as *const libc::c_char,
                        h.len(),
                    ))?;
                }
                if new_mount_ns {
                    // Private, so the pod's bind mounts never propagate back to the node.
                    last_err(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    for (src, dst, read_only) in &binds {
                        last_err(libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        if *read_only {
                            last_err(libc::mount(
                                std::ptr::null(),
                                dst.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                                std::ptr::null(),
                            ))?;
                        }
                    }
                }
            }
            if let Some(dir) = &working_dir {
                last_err(libc::chdir(dir.as_ptr()))?;
            }
            if let Some(u) = &user {
                // Groups first: once the uid is no longer 0 they cannot be changed.
                last_err(libc::setgroups(groups.len(), groups.as_ptr()))?;
                last_err(libc::setgid(u.gid as libc::gid_t))?;
                last_err(libc::setuid(u.uid as libc::uid_t))?;
            }
            last_err(libc::setsid())?;
            Ok(())
        });
    }
    Ok(cmd)
}

/// The kernel's start time of a process (clock ticks since boot; field 22 of /proc/<pid>/stat): with the pid it
/// identifies the process across agent restarts (pids are reused).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks` (and not a zombie).
pub fn alive(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 2..].chars().next();
    state != Some('Z') && start_ticks(pid) == Some(ticks)
}

/// Signal the container's process group (it is a session leader), falling back to the process alone.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let target = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::killpg(target, sig).is_err() {
        let _ = nix::sys::signal::kill(target, sig);
    }
}

/// Wait until a process that is not our child exits (adopted after an agent restart), via a pidfd.
pub async fn wait_foreign(pid: i32, ticks: u64) {
    // SAFETY: pidfd_open returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if fd < 0 || !alive(pid, ticks) {
        if fd >= 0 {
            // SAFETY: closes the descriptor pidfd_open just gave us, once.
            unsafe { libc::close(fd) };
        }
        return;
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the descriptor for its whole registration.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    } {
        Ok(async_fd) => {
            // The pidfd wakes us when the process exits; the check also catches a process that stays a
            // zombie of another parent (then the pidfd may not become readable).
            loop {
                tokio::select! {
                    _ = async_fd.readable() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                        if !alive(pid, ticks) {
                            return;
                        }
                    }
                }
            }
        }
        Err(_) => {
            while alive(pid, ticks) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}
