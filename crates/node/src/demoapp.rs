//! `skiff demoapp`: the seeds' ikubernetes/demoapp. `GET /` answers
//! `iKubernetes demoapp v1.0 !! ClientIP: <client>, ServerName: <hostname>, ServerIP: <local address>!`,
//! `/hostname` the hostname, `/healthz` (and `/livez`, `/readyz`) OK.

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

fn respond(req: &Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/" => (StatusCode::OK, greeting(peer.ip(), &hostname(), local.ip())),
        "/hostname" => (StatusCode::OK, format!("ServerName: {}\n", hostname())),
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "OK\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "Not Found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serve until the process ends.
pub async fn run(listen: SocketAddr) -> std::io::Result<()> {
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
    serve(listener).await
}

/// Serve on an already bound listener (tests bind port 0).
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
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
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(respond(&req, peer, local))
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
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
}
