//! The Skiff API server (kube-apiserver's job): REST + watch over HTTPS for kubectl and kube-rs.
//!
//! Contract used by the binary and by other crates' tests:
//! - `Options` (clap args of `skiff server`), `ServerConfig`, `serve(config) -> ApiServer`.
//! - `testing::TestServer::start()` starts a server on an ephemeral loopback port with a temporary store and
//!   returns its URL, a kubeconfig path and a kube-rs client (for tests of other crates).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod alloc;
mod discovery;
mod handlers;
mod openapi;
mod pki;
mod registry;
mod reservations;
mod status;
pub mod testing;

use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] skiff_store::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Pki(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `skiff server` arguments.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "api")]
pub struct Options {
    /// Directory for the store, CA and serving certificates, token and kubeconfigs.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    pub data_dir: PathBuf,
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// Address other network namespaces (nodes, pods) reach the API server at; in the serving certificate,
    /// `kubeconfig.internal` and the `kubernetes` Service's endpoints. Default: the listen address, or
    /// 127.0.0.1 when that is unspecified.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// The Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Ipv4Net,
    /// The NodePort range, `FIRST-LAST`.
    #[arg(long, default_value = "30000-32767")]
    pub node_port_range: String,
    /// Serve plain HTTP instead of HTTPS (testing only).
    #[arg(long)]
    pub insecure_http: bool,
    /// Bearer token to accept (default: generated once and kept in the data dir).
    #[arg(long, env = "SKIFF_TOKEN")]
    pub token: Option<String>,
    /// etcd client URLs, comma-separated (`http://10.0.0.1:2379,...`; `https://` with the TLS flags below).
    /// Without them the store is embedded (redb in the data dir) and only this server can use it.
    #[arg(long, value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// CA bundle to verify the etcd members' serving certificates.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// Private key of --etcd-certfile.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// Prepended to every key in etcd (the keys themselves start with `/registry/`), to keep clusters that
    /// share one etcd apart.
    #[arg(long, default_value = "")]
    pub etcd_prefix: String,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise_address: IpAddr,
    pub service_cidr: Ipv4Net,
    pub node_ports: std::ops::RangeInclusive<u16>,
    pub tls: bool,
    pub token: Option<String>,
    /// Watch history window (events) kept in memory (embedded store).
    pub history_window: usize,
    /// Store in etcd instead of the embedded redb file (`--etcd-servers`).
    pub etcd: Option<skiff_store::EtcdOptions>,
}

impl ServerConfig {
    pub fn from_options(o: &Options) -> Result<Self, Error> {
        let (a, b) = o.node_port_range.split_once('-').ok_or_else(|| {
            Error::Config(format!(
                "--node-port-range {:?}: want FIRST-LAST",
                o.node_port_range
            ))
        })?;
        let parse = |s: &str| {
            s.trim().parse::<u16>().map_err(|e| {
                Error::Config(format!("--node-port-range {:?}: {e}", o.node_port_range))
            })
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(Error::Config(format!(
                "--node-port-range {:?}: empty",
                o.node_port_range
            )));
        }
        let tls_given =
            o.etcd_cafile.is_some() || o.etcd_certfile.is_some() || o.etcd_keyfile.is_some();
        if o.etcd_servers.is_empty() && (tls_given || !o.etcd_prefix.is_empty()) {
            return Err(Error::Config(
                "--etcd-cafile, --etcd-certfile, --etcd-keyfile and --etcd-prefix need --etcd-servers"
                    .into(),
            ));
        }
        if o.etcd_certfile.is_some() != o.etcd_keyfile.is_some() {
            return Err(Error::Config(
                "--etcd-certfile and --etcd-keyfile go together".into(),
            ));
        }
        let etcd = (!o.etcd_servers.is_empty()).then(|| skiff_store::EtcdOptions {
            endpoints: o.etcd_servers.clone(),
            prefix: o.etcd_prefix.clone(),
            tls: tls_given.then(|| skiff_store::EtcdTls {
                ca_file: o.etcd_cafile.clone(),
                cert_file: o.etcd_certfile.clone(),
                key_file: o.etcd_keyfile.clone(),
            }),
            ..Default::default()
        });
        let advertise = o.advertise_address.unwrap_or_else(|| {
            if o.listen.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                o.listen.ip()
            }
        });
        Ok(Self {
            data_dir: o.data_dir.clone(),
            listen: o.listen,
            advertise_address: advertise,
            service_cidr: o.service_cidr,
            node_ports: a..=b,
            tls: !o.insecure_http,
            token: o.token.clone(),
            history_window: 20_000,
            etcd,
        })
    }
}

/// A running API server.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT` (or the listen address when it is a specific one).
    pub url: String,
    /// The bound address (port resolved when listening on port 0).
    pub local_addr: SocketAddr,
    /// Kubeconfig for the host user (server = 127.0.0.1).
    pub kubeconfig_path: PathBuf,
    /// Kubeconfig for agents and pods in other network namespaces (server = the advertise address).
    pub internal_kubeconfig_path: PathBuf,
    /// The bearer token clients must send.
    pub token: String,
    /// PEM of the CA that signed the serving certificate (None with plain HTTP).
    pub ca_pem: Option<String>,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ApiServer {
    /// Run until the process ends (or `shutdown` is called).
    pub async fn wait(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
    /// Stop: no new connections, and every open one (watches and idle keep-alive connections too) is closed,
    /// so the store is released shortly after and a new server may open the same data dir (`serve` waits
    /// for that briefly). Clients reconnect on their next request.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
    /// `shutdown` and wait until the server's connections have ended.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Tell connection and watch tasks to end (they are not children of the accept task).
        self.stop.send_replace(true);
    }
}

/// Retry `f` while it fails with an error `busy` recognizes (a previous server in this process still letting
/// go of the port or the store), for up to 5 seconds.
async fn retry_busy<T, E>(
    mut f: impl FnMut() -> Result<T, E>,
    busy: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// Start the API server: open the store, bootstrap, write certificates and kubeconfigs, listen.
pub async fn serve(config: ServerConfig) -> Result<ApiServer, Error> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_err(format!("creating {}", config.data_dir.display())))?;
    let store: Arc<dyn skiff_store::Store> = match &config.etcd {
        Some(etcd) => Arc::new(skiff_store::EtcdStore::connect(etcd.clone()).await?),
        None => Arc::new(
            retry_busy(
                || {
                    skiff_store::RedbStore::open(
                        &config.data_dir.join("store.redb"),
                        skiff_store::RedbOptions {
                            history_window: config.history_window,
                            ..Default::default()
                        },
                    )
                },
                |e| matches!(e, skiff_store::Error::Backend(m) if m.contains("already open")),
            )
            .await?,
        ),
    };
    let token = match &config.token {
        Some(t) => t.clone(),
        None => pki::load_or_create_token(&config.data_dir)?,
    };
    let listener = retry_busy(
        || {
            let sock = if config.listen.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            // as tokio's bind: connections this process closed (TIME_WAIT) must not block a restart
            sock.set_reuseaddr(true)?;
            sock.bind(config.listen)?;
            sock.listen(1024)
        },
        |e| e.kind() == std::io::ErrorKind::AddrInUse && config.listen.port() != 0,
    )
    .await
    .map_err(io_err(format!("listening on {}", config.listen)))?;
    let local_addr = listener.local_addr().map_err(io_err("local address"))?;
    let host_ip = if local_addr.ip().is_unspecified() || local_addr.ip().is_loopback() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        local_addr.ip()
    };
    let scheme = if config.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", SocketAddr::new(host_ip, local_addr.port()));
    let internal_url = format!(
        "{scheme}://{}",
        SocketAddr::new(config.advertise_address, local_addr.port())
    );

    let (acceptor, ca_pem) = if config.tls {
        let (server_config, ca_pem) = pki::tls_config(
            &config.data_dir,
            config.advertise_address,
            &config.service_cidr,
        )?;
        (
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config))),
            Some(ca_pem),
        )
    } else {
        (None, None)
    };
    let kubeconfig_path = config.data_dir.join("kubeconfig");
    let internal_kubeconfig_path = config.data_dir.join("kubeconfig.internal");
    pki::write_kubeconfig(&kubeconfig_path, &url, ca_pem.as_deref(), &token)?;
    pki::write_kubeconfig(
        &internal_kubeconfig_path,
        &internal_url,
        ca_pem.as_deref(),
        &token,
    )?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = handlers::Ctx::new(store, token.clone(), &config, local_addr.port(), stop_rx).await?;
    handlers::bootstrap(&ctx).await?;
    tracing::info!(%url, kubeconfig = %kubeconfig_path.display(), "API server listening");

    let task = tokio::spawn(handlers::accept_loop(listener, acceptor, ctx));
    Ok(ApiServer {
        url,
        local_addr,
        kubeconfig_path,
        internal_kubeconfig_path,
        token,
        ca_pem,
        task: Some(task),
        stop,
    })
}
