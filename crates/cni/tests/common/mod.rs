//! Kernel test helpers: uniquely named network namespaces removed on drop (also when a test fails), running
//! code inside them on dedicated threads, and a TCP probe that reports the source address a server saw.
#![allow(dead_code)]

pub mod nodes;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag: pid + counter + clock noise.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{:x}", std::process::id(), nanos & 0xfff)
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run a command inside the namespace; true when it exits 0.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh_ok(&full)
    }

    /// Run `f` on a fresh thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            skiff_cni::nl::enter_netns(&path).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
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
                .expect("runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Listen on `server_ip:port` inside `server`, connect from `client`, and return the peer address the server
/// saw (what the demoapp would report as ClientIP) and the echoed text.
pub fn tcp_probe(server: &Netns, server_ip: Ipv4Addr, client: &Netns) -> (SocketAddr, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = server.path();
    let server_thread = std::thread::spawn(move || {
        skiff_cni::nl::enter_netns(&path).expect("setns");
        let listener = TcpListener::bind((server_ip, 0)).expect("bind");
        tx.send(listener.local_addr().expect("addr").port())
            .expect("send");
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(format!("hello {peer}").as_bytes())
            .expect("write");
        peer
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server port");
    let text = client.run(move || {
        let mut conn = TcpStream::connect_timeout(
            &SocketAddr::from((server_ip, port)),
            Duration::from_secs(5),
        )
        .expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    });
    (server_thread.join().expect("server"), text)
}

/// Addresses (`a.b.c.d/len`) on `dev` inside `ns`.
pub fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip(&["-4", "-o", "addr", "show", "dev", dev])
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .map(str::to_string)
        })
        .collect()
}
