//! `skiff demoapp`: the seeds' ikubernetes/demoapp. `GET /` answers
//! `iKubernetes demoapp v1.0 !! ClientIP: <client>, ServerName: <hostname>, ServerIP: <local address>!`,
//! `/hostname` the hostname, `/healthz` (and `/livez`, `/readyz`) OK.
//!
//! On SIGTERM (or SIGINT) it shuts down gracefully, so a rolling update loses no request: for
//! `--shutdown-delay` it keeps answering (new connections may still arrive until every node's proxy has
//! dropped the terminating endpoint; `/readyz` answers 503, responses say `Connection: close`), then it
//! stops accepting, lets the requests in flight finish and exits 0.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 80)]
    pub port: u16,
    /// Address to listen on; `::` (the default) also accepts IPv4 where the kernel allows dual-stack sockets.
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub host: IpAddr,
    /// Seconds it keeps serving after SIGTERM before it stops accepting connections.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value_t = 2.0)]
    pub shutdown_delay: f64,
}

impl Options {
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// An IPv4 peer seen through a dual-stack socket shows as ::ffff:a.b.c.d; report it as a.b.c.d.
fn plain_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The body of `GET /`.
pub fn greeting(client: IpAddr, server_name: &str, server: IpAddr) -> String {
    format!(
        "iKubernetes demoapp v1.0 !! ClientIP: {}, ServerName: {server_name}, ServerIP: {}!\n",
        plain_ip(client),
        plain_ip(server)
    )
}

fn respond(
    req: &Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
    stopping: bool,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/" => (StatusCode::OK, greeting(peer.ip(), &hostname(), local.ip())),
        "/hostname" => (StatusCode::OK, format!("ServerName: {}\n", hostname())),
        "/readyz" if stopping => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        ),
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "OK\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "Not Found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if stopping {
        // Clients open their next request on a new connection, which reaches a live endpoint.
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Serve until SIGTERM or SIGINT, then shut down gracefully (see the module documentation).
pub async fn run(listen: SocketAddr, shutdown_delay: std::time::Duration) -> std::io::Result<()> {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        // `::` without IPv6 in the namespace: serve IPv4 only.
        Err(_) if listen.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            tokio::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                listen.port(),
            ))
            .await?
        }
        Err(e) => return Err(e),
    };
    let stop = skiff_runtime::signal::terminated()?;
    serve_until(listener, stop, shutdown_delay).await
}

/// Serve on an already bound listener until the process ends (tests bind port 0).
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_until(listener, std::future::pending(), std::time::Duration::ZERO).await
}

/// Serve until `stop` completes; then serve on for `delay`, stop accepting, finish the connections in
/// flight (idle keep-alive connections are closed, a request being answered is completed) and return.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()>,
    delay: std::time::Duration,
) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    let mut stopped_at: Option<tokio::time::Instant> = None;
    loop {
        let until_close = async {
            match stopped_at {
                Some(at) => tokio::time::sleep_until(at + delay).await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            _ = &mut stop, if stopped_at.is_none() => {
                tracing::info!(delay_s = delay.as_secs_f64(), "SIGTERM: draining");
                stopped_at = Some(tokio::time::Instant::now());
                let _ = stopping_tx.send(true);
                continue;
            }
            _ = until_close => break,
            // Reap finished connection tasks as we go.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            // Out of descriptors and the like: keep serving the connections we have.
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let stopping = stopping_rx.clone();
        let mut closing = closing_rx.clone();
        conns.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let stopping = *stopping.borrow();
                async move { Ok::<_, Infallible>(respond(&req, peer, local, stopping)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let closed = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = closing.wait_for(|c| *c) => None,
            };
            let result = match closed {
                Some(r) => r,
                None => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let in_flight = conns.len();
    while conns.join_next().await.is_some() {}
    tracing::info!(in_flight, "shut down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn greeting_matches_the_seed() {
        assert_eq!(
            greeting("10.244.0.0".parse().unwrap(), "demoapp-66db74fcfc-9wkgj", "10.244.2.97".parse().unwrap()),
            "iKubernetes demoapp v1.0 !! ClientIP: 10.244.0.0, ServerName: demoapp-66db74fcfc-9wkgj, ServerIP: 10.244.2.97!\n"
        );
        assert_eq!(
            greeting(
                "::ffff:10.0.0.1".parse().unwrap(),
                "x",
                "::ffff:10.0.0.2".parse().unwrap()
            ),
            "iKubernetes demoapp v1.0 !! ClientIP: 10.0.0.1, ServerName: x, ServerIP: 10.0.0.2!\n"
        );
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let host = hostname();
        let root = get(addr, "/").await;
        assert!(root.starts_with("HTTP/1.1 200 OK\r\n"), "{root}");
        assert!(
            root.ends_with(&format!(
                "\r\n\r\niKubernetes demoapp v1.0 !! ClientIP: 127.0.0.1, ServerName: {host}, ServerIP: 127.0.0.1!\n"
            )),
            "{root}"
        );
        assert!(get(addr, "/hostname")
            .await
            .ends_with(&format!("\r\n\r\nServerName: {host}\n")));
        assert!(get(addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get(addr, "/nope")
            .await
            .starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    #[tokio::test]
    async fn sigterm_finishes_requests_in_flight_and_stops_accepting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_until(
            listener,
            async move {
                let _ = stop_rx.await;
            },
            std::time::Duration::from_millis(300),
        ));
        // A connection that has sent half a request when the shutdown starts.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stop_tx.send(()).unwrap();
        // During the delay new connections are still answered, and told to close.
        let during = get(addr, "/readyz").await;
        assert!(during.starts_with("HTTP/1.1 503"), "{during}");
        slow.write_all(b"\r\n").await.unwrap();
        let mut answer = String::new();
        slow.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), server)
            .await
            .expect("server ends after the delay")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
