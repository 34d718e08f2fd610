//! Named network namespaces (`/run/netns/<name>`, as `ip netns add` makes them, so `ip netns exec` and CNI
//! plugins work with them), and running blocking code inside one on a thread of its own: setns/unshare never
//! happen on a tokio worker.

// Kernel access that std does not wrap (setns/fork hooks, raw sockets): each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub const NETNS_DIR: &str = "/run/netns";

/// The sandbox's namespace name: unique per pod (the uid), and recognisable as Skiff's.
pub fn netns_name(pod_uid: &str) -> String {
    format!("skiff-{pod_uid}")
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Run `f` on a fresh OS thread (which may change its namespaces and then dies) and wait for it.
pub async fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| io::Error::other("namespace thread panicked"))
}

/// Enter the network namespace at `path` on the current thread (which must be one we own).
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(errno)
}

/// iproute2 makes /run/netns a shared mount point so namespace mounts propagate to other mount namespaces.
fn prepare_dir() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_err() {
        mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(errno)?;
        shared().map_err(errno)?;
    }
    Ok(())
}

fn set_loopback_up() -> io::Result<()> {
    // SAFETY: plain ioctls on a socket we own, with a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Create the named namespace with its loopback up. Blocking; run it on its own thread.
fn create_blocking(name: &str) -> io::Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    prepare_dir()?;
    let path = netns_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let result = (|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(errno)?;
        let tid = nix::unistd::gettid();
        let own = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(own.as_str()),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno)?;
        set_loopback_up()
    })();
    if let Err(err) = result {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        return Err(err);
    }
    Ok(path)
}

pub async fn create(name: &str) -> io::Result<PathBuf> {
    let name = name.to_string();
    on_own_thread(move || create_blocking(&name)).await?
}

/// Remove the named namespace (its mount and file); a missing one is fine.
pub fn remove(name: &str) -> io::Result<()> {
    let path = netns_path(name);
    let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Whether the named namespace is mounted (so it is a live namespace, not a stale file).
pub fn exists(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let path = netns_path(name);
    // A mounted nsfs file has a different device than the directory holding it.
    match (std::fs::metadata(&path), std::fs::metadata(NETNS_DIR)) {
        (Ok(file), Ok(dir)) => file.dev() != dir.dev(),
        _ => false,
    }
}

/// (device, inode) identifying a network namespace file, to find processes inside it.
pub fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every process whose network namespace is `ns` (to leave nothing behind when a sandbox goes).
pub fn pids_in(ns: (u64, u64)) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(ns))
        .collect()
}
