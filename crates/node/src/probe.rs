//! Probes (httpGet, tcpSocket, exec) run from inside the pod's network namespace, with kubelet's
//! threshold logic.

use crate::spawn::{self, SpawnSpec};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_ip: IpAddr,
    pub netns: Option<PathBuf>,
    /// The container's process (exec probes join its namespaces).
    pub pid: i32,
    /// The exec probe's process, resolved through the image catalog.
    pub exec: Option<SpawnSpec>,
}

pub fn timeout(probe: &Probe) -> Duration {
    Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64)
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("couldn't find port: {name} in container")),
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("no address for {host}")))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// One network probe attempt, blocking (runs on a thread inside the pod's network namespace).
fn network_attempt(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Outcome {
    if let Some(tcp) = &probe.tcp_socket {
        let port = match resolve_port(&tcp.port, container) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match connect(&host, port, timeout) {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match resolve_port(&http.port, container) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let url_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let url = format!("http://{url_host}:{port}{path}");
        if http.scheme.as_deref() == Some("HTTPS") {
            return Outcome::Failure(format!(
                "Get \"https://{url_host}:{port}{path}\": HTTPS probes are not supported by skiff"
            ));
        }
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let result = connect(&host, port, timeout).and_then(|mut s| {
            s.write_all(request.as_bytes())?;
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while !got.windows(2).any(|w| w == b"\r\n") {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(got)
        });
        return match result {
            Ok(bytes) => {
                let line = String::from_utf8_lossy(&bytes);
                let code: Option<u16> = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
                match code {
                    Some(c) if (200..400).contains(&c) => Outcome::Success,
                    Some(c) => Outcome::Failure(format!("HTTP probe failed with statuscode: {c}")),
                    None => Outcome::Failure(format!("Get \"{url}\": malformed HTTP response")),
                }
            }
            Err(e) => Outcome::Failure(format!("Get \"{url}\": {e}")),
        };
    }
    Outcome::Failure("probe has no handler".into())
}

/// One probe attempt.
pub async fn attempt(probe: &Probe, container: &Container, target: &Target) -> Outcome {
    let timeout = timeout(probe);
    if probe.exec.is_some() {
        let Some(spec) = target.exec.clone() else {
            return Outcome::Failure("exec probe has no command".into());
        };
        let spec = SpawnSpec {
            join_pid: Some(target.pid),
            ..spec
        };
        let mut child = match spawn::command(&spec).and_then(|mut c| c.kill_on_drop(true).spawn()) {
            Ok(c) => c,
            Err(e) => return Outcome::Failure(format!("exec probe failed to start: {e}")),
        };
        return match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Outcome::Success,
            Ok(Ok(status)) => Outcome::Failure(format!(
                "command {:?} exited with {}",
                std::iter::once(spec.arg0.clone())
                    .chain(spec.args.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
                status.code().unwrap_or(-1)
            )),
            Ok(Err(e)) => Outcome::Failure(e.to_string()),
            Err(_) => Outcome::Failure(format!("command timed out after {}s", timeout.as_secs())),
        };
    }
    let probe = probe.clone();
    let container = container.clone();
    let pod_ip = target.pod_ip;
    let netns = target.netns.clone();
    let run = move || {
        if let Some(ns) = &netns {
            if let Err(e) = crate::netns::enter(ns) {
                return Outcome::Failure(format!("entering pod network namespace: {e}"));
            }
        }
        network_attempt(&probe, &container, pod_ip, timeout)
    };
    match crate::netns::on_own_thread(run).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failure(e.to_string()),
    }
}

/// kubelet's result counting: the result flips after `successThreshold` successes or `failureThreshold`
/// failures in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    success: i32,
    failure: i32,
    successes: i32,
    failures: i32,
    pub current: Option<bool>,
}

impl Thresholds {
    pub fn new(probe: &Probe, initial: Option<bool>) -> Self {
        Thresholds {
            success: probe.success_threshold.unwrap_or(1).max(1),
            failure: probe.failure_threshold.unwrap_or(3).max(1),
            successes: 0,
            failures: 0,
            current: initial,
        }
    }

    /// Record one attempt; Some(new result) when the result changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success && self.current != Some(true) {
                self.current = Some(true);
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure && self.current != Some(false) {
                self.current = Some(false);
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let mut t = Thresholds::new(&probe, None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None);
        // Liveness starts out "alive": only failures change it.
        let mut live = Thresholds::new(&Probe::default(), Some(true));
        assert_eq!(live.record(true), None);
        assert_eq!(
            (live.record(false), live.record(false), live.record(false)),
            (None, None, Some(false))
        );
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(crate::demoapp::serve(listener));
        let container = Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: port as i32,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let target = Target {
            pod_ip: "127.0.0.1".parse().unwrap(),
            netns: None,
            pid: 0,
            exec: None,
        };
        let http = |path: &str, port: IntOrString| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            attempt(
                &http("/healthz", IntOrString::String("http".into())),
                &container,
                &target
            )
            .await,
            Outcome::Success
        );
        assert_eq!(
            attempt(
                &http("/missing", IntOrString::Int(port as i32)),
                &container,
                &target
            )
            .await,
            Outcome::Failure("HTTP probe failed with statuscode: 404".into())
        );
        assert_eq!(
            attempt(
                &http("/", IntOrString::String("nope".into())),
                &container,
                &target
            )
            .await,
            Outcome::Failure("couldn't find port: nope in container".into())
        );
        let tcp = |p: i32| Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(p),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            attempt(&tcp(port as i32), &container, &target).await,
            Outcome::Success
        );
        // A port nothing listens on (bound and dropped to learn a free one).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            matches!(attempt(&tcp(free as i32), &container, &target).await, Outcome::Failure(m) if m.starts_with(&format!("dial tcp 127.0.0.1:{free}: ")))
        );
    }
}
