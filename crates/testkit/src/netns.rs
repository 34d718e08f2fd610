//! Named network namespaces for kernel tests, removed on drop together with every process still in them.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::cmd::sh;

/// A named network namespace (`ip netns add`) with `lo` up. On drop, processes left inside (a failed test's
/// servers) are killed and the namespace is deleted.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `prefix` + a unique suffix.
    pub fn new(prefix: &str) -> Netns {
        Netns::named(crate::unique(prefix))
    }

    /// A new namespace with exactly this name.
    pub fn named(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args...`; fails the test unless it succeeds. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run a command inside the namespace and return its output, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {}: {e}", self.name))
    }

    /// Run a command inside the namespace; true when it exits 0.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        self.exec(args).status.success()
    }

    /// Run `f` on a fresh thread that has entered this namespace (threads it spawns inherit it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Run an async block on a current-thread runtime inside this namespace.
    pub fn block_on<T, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime")
                .block_on(f())
        })
    }

    /// Pids of the processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Enter the network namespace at `path` on the calling thread (a thread the test owns, never a shared
/// runtime worker).
pub fn enter(path: &std::path::Path) {
    let file = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("opening netns {}: {e}", path.display()));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering netns {}: {e}", path.display()));
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
