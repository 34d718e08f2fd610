//! `skiff dns`: cluster DNS per the Kubernetes DNS-Based Service Discovery specification 1.1.0, behaving as
//! CoreDNS's `kubernetes` plugin where the spec is silent.
//!
//! Layers (dependency direction): [`convert`] (API objects → compact specs) → [`model`] (the immutable
//! [`Snapshot`] and its incremental builder) → [`answer`] (pure: snapshot + query → response; cannot fail) →
//! [`wire`] (defensive decoding, size-limited encoding) → [`server`] / [`forward`] / [`watch`] / [`metrics`]
//! (I/O).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod answer;
pub mod convert;
pub mod forward;
pub mod metrics;
pub mod model;
pub mod server;
pub mod testing;
mod udp;
pub mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use answer::{answer, Answer, Forward};
pub use model::{Snapshot, SnapshotBuilder};
pub use server::DnsServer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding DNS listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding metrics listener {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ResolvConf {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS server stopped unexpectedly")]
    Stopped,
    #[error("installing the SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Command-line options of `skiff dns` (the binary adds `--kubeconfig`).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "dns")]
pub struct Options {
    /// Address to serve DNS on (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// The cluster domain (zone) served.
    #[arg(long, default_value = skiff_runtime::defaults::CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// TTL of answers, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Upstream resolvers for names outside the zone (ip or ip:port, repeatable; `none`: answer them
    /// SERVFAIL without forwarding). Default: the nameservers of --resolv-conf, excluding this server itself.
    #[arg(long = "upstream")]
    pub upstream: Vec<String>,
    /// resolv.conf read for upstreams when --upstream is not given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: String,
    /// Address serving Prometheus /metrics (and /health, /ready).
    #[arg(long, default_value = "0.0.0.0:9153")]
    pub metrics_addr: SocketAddr,
    /// Seconds to go on answering after SIGTERM (CoreDNS's `health { lameduck 5s }`): clients keep
    /// reaching a terminating replica until every node's proxy has dropped its endpoint.
    #[arg(long, default_value_t = 5.0)]
    pub lameduck: f64,
}

impl Options {
    /// Defaults as the command line has them.
    pub fn with_listen(listen: SocketAddr, metrics_addr: SocketAddr) -> Options {
        Options {
            listen,
            cluster_domain: skiff_runtime::defaults::CLUSTER_DOMAIN.to_string(),
            ttl: 5,
            upstream: Vec::new(),
            resolv_conf: "/etc/resolv.conf".to_string(),
            metrics_addr,
            lameduck: 5.0,
        }
    }

    fn upstreams(&self) -> Result<Vec<SocketAddr>, Error> {
        if self.upstream.iter().any(|u| u == "none") {
            return Ok(Vec::new());
        }
        if !self.upstream.is_empty() {
            return Ok(self
                .upstream
                .iter()
                .filter_map(|u| {
                    u.parse::<SocketAddr>()
                        .ok()
                        .or_else(|| {
                            u.parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .or_else(|| {
                            tracing::warn!(upstream = %u, "ignoring unparsable upstream");
                            None
                        })
                })
                .collect());
        }
        match std::fs::read_to_string(&self.resolv_conf) {
            Ok(text) => Ok(forward::parse_resolv_conf(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(Error::ResolvConf {
                path: self.resolv_conf.clone(),
                source,
            }),
        }
    }
}

/// A running DNS server (listeners bound, not necessarily synced).
pub struct Running {
    pub server: Arc<DnsServer>,
    pub dns_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub handle: tokio::task::JoinHandle<()>,
}

/// Bind the DNS and metrics listeners and serve `initial` (e.g. a fixed snapshot in tests and benchmarks).
pub async fn serve_snapshot(initial: Snapshot, options: &Options) -> Result<Running, Error> {
    let upstreams = options.upstreams()?;
    let server_label = format!("dns://:{}", options.listen.port());
    let metrics = Arc::new(metrics::Metrics::new(server_label));
    // Exclude ourselves by the configured address; the bound one matters when port 0 was asked for.
    let forwarder = forward::Forwarder::new(upstreams, &[options.listen], Duration::from_secs(2));
    let server = DnsServer::new(initial, forwarder, metrics.clone());
    let (dns_addr, handle) = server::bind_and_serve(server.clone(), options.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
    metrics.set_server(format!("dns://:{}", dns_addr.port()));
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| Error::Metrics {
            addr: options.metrics_addr,
            source,
        })?;
    let metrics_addr = listener.local_addr().map_err(|source| Error::Metrics {
        addr: options.metrics_addr,
        source,
    })?;
    let ready_server = server.clone();
    let ready: Arc<dyn Fn() -> bool + Send + Sync> =
        Arc::new(move || ready_server.snapshot().synced());
    tokio::spawn(async move {
        if let Err(e) = metrics::serve_http(listener, metrics, ready).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    tracing::info!(%dns_addr, %metrics_addr, upstreams = ?server.upstreams(), "serving DNS");
    let probe_server = server.clone();
    tokio::spawn(async move {
        let looping = probe_server.probe_loops().await;
        if looping > 0 {
            tracing::error!(
                looping,
                "upstream resolvers forward back to this server; they are not used"
            );
        }
    });
    Ok(Running {
        server,
        dns_addr,
        metrics_addr,
        handle,
    })
}

/// Serve cluster DNS from the API (`client`) until SIGTERM or SIGINT, then answer on for `--lameduck`
/// seconds and return; an error if the listeners fail first.
pub async fn run(client: kube::Client, options: Options) -> Result<(), Error> {
    let stop = skiff_runtime::signal::terminated().map_err(Error::Signal)?;
    let running = start(client, &options).await?;
    let mut handle = running.handle;
    tokio::select! {
        _ = &mut handle => return Err(Error::Stopped),
        _ = stop => {}
    }
    let lameduck = std::time::Duration::from_secs_f64(options.lameduck.max(0.0));
    tracing::info!(?lameduck, "stopping: answering on while endpoints drain");
    tokio::select! {
        _ = handle => Err(Error::Stopped),
        _ = tokio::time::sleep(lameduck) => Ok(()),
    }
}

/// Bind, start watching, and return (for tests that need the bound address).
pub async fn start(client: kube::Client, options: &Options) -> Result<Running, Error> {
    let builder = SnapshotBuilder::new(&options.cluster_domain, options.ttl);
    let initial = Snapshot::unsynced(&options.cluster_domain, options.ttl);
    let running = serve_snapshot(initial, options).await?;
    let server = running.server.clone();
    tokio::spawn(async move {
        let publish_to = server.clone();
        watch::watch(client, builder, move |snap| publish_to.store(snap)).await;
    });
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(upstream: &[&str]) -> Options {
        let mut o = Options::with_listen(
            "127.0.0.1:53".parse().expect("literal"),
            "127.0.0.1:9153".parse().expect("literal"),
        );
        o.upstream = upstream.iter().map(|s| s.to_string()).collect();
        o.resolv_conf = "/nonexistent/resolv.conf".into();
        o
    }

    #[test]
    fn upstreams_parse_addresses_and_none_disables_forwarding() {
        let explicit = options(&["10.0.0.2", "10.0.0.3:5353"])
            .upstreams()
            .expect("parsed");
        assert_eq!(
            explicit,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().expect("literal"),
                "10.0.0.3:5353".parse().expect("literal")
            ]
        );
        assert_eq!(options(&["none"]).upstreams().expect("parsed"), vec![]);
    }
}
