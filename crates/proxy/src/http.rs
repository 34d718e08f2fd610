//! Small HTTP/1.1 servers: /metrics and /healthz, and the per-service health check node ports of
//! `externalTrafficPolicy: Local` LoadBalancer services (what cloud load balancers probe).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::model::{HealthCheck, ServiceKey};

/// A response: status code, extra headers, body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Read one request head and answer it; `handler` gets the path.
async fn handle<F>(mut stream: TcpStream, handler: Arc<F>)
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk)).await
        {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 16 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = path.split('?').next().unwrap_or("/").to_string();
    let resp = handler(&path);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&resp.body);
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serve `handler` on an already bound listener until the task is aborted.
pub fn serve<F>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(&str) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, handler.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// The body upstream's service health server returns.
pub fn health_check_response(namespace: &str, name: &str, local_endpoints: usize) -> Response {
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": true\n}}",
        serde_json::Value::String(namespace.into()),
        serde_json::Value::String(name.into()),
        local_endpoints
    );
    Response {
        status: if local_endpoints > 0 { 200 } else { 503 },
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("X-Content-Type-Options", "nosniff".into()),
            (
                "X-Load-Balancing-Endpoint-Weight",
                local_endpoints.to_string(),
            ),
        ],
        body,
    }
}

struct Server {
    key: ServiceKey,
    count: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The health check node port servers, one per port, reconciled after each sync.
pub struct HealthServers {
    bind_ip: std::net::IpAddr,
    servers: BTreeMap<u16, Server>,
}

impl HealthServers {
    pub fn new(bind_ip: std::net::IpAddr) -> HealthServers {
        HealthServers {
            bind_ip,
            servers: BTreeMap::new(),
        }
    }

    /// Make the running servers match `wanted`.
    pub async fn reconcile(&mut self, wanted: &BTreeMap<ServiceKey, HealthCheck>) {
        let mut by_port: BTreeMap<u16, (&ServiceKey, &HealthCheck)> = BTreeMap::new();
        for (k, h) in wanted {
            by_port.entry(h.port).or_insert((k, h));
        }
        let stale: Vec<u16> = self
            .servers
            .iter()
            .filter(|(p, s)| by_port.get(p).is_none_or(|(k, _)| **k != s.key))
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            if let Some(s) = self.servers.remove(&p) {
                s.task.abort();
            }
        }
        for (port, (key, hc)) in by_port {
            if let Some(s) = self.servers.get(&port) {
                s.count.store(hc.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, port);
            let listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "health check node port");
                    continue;
                }
            };
            let count = Arc::new(AtomicUsize::new(hc.local_endpoints));
            let (ns, name) = key.clone();
            let c = count.clone();
            let task = serve(listener, move |_| {
                health_check_response(&ns, &name, c.load(Ordering::Relaxed))
            });
            self.servers.insert(
                port,
                Server {
                    key: key.clone(),
                    count,
                    task,
                },
            );
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}
