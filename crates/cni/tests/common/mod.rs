//! Kernel test helpers: the test kit's namespaces, and a TCP probe that reports the source address a server saw.
#![allow(dead_code)]

pub mod nodes;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[allow(unused_imports)] // each test file uses a different part
pub use skiff_testkit::{sh, unique, Netns};

/// Listen on `server_ip:port` inside `server`, connect from `client`, and return the peer address the server
/// saw (what the demoapp would report as ClientIP) and the echoed text.
pub fn tcp_probe(server: &Netns, server_ip: Ipv4Addr, client: &Netns) -> (SocketAddr, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = server.path();
    let server_thread = std::thread::spawn(move || {
        skiff_testkit::netns::enter(&path);
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

/// iperf3 from `client` to a one-shot server on `server_ip` inside `server`; received Gbit/s.
pub fn iperf(server: &Netns, server_ip: Ipv4Addr, client: &Netns, seconds: u32) -> f64 {
    let ip = server_ip.to_string();
    let mut srv = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &ip,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &client.name,
        "iperf3",
        "-c",
        &ip,
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}
