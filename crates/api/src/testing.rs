//! A real API server for tests (this crate's and other crates'): HTTPS on an ephemeral 127.0.0.1 port, a
//! temporary data dir, a generated token and kubeconfig.

use crate::{serve, ApiServer, Error, ServerConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

pub struct TestServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Kubeconfig (server, CA, token) for kubectl / kube-rs.
    pub kubeconfig_path: PathBuf,
    /// The bearer token.
    pub token: String,
    /// PEM of the server's CA.
    pub ca_pem: String,
    /// The temporary data dir (store, pki, kubeconfig); removed on drop.
    pub data_dir: PathBuf,
    server: ApiServer,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Start a server with default settings (service CIDR 10.96.0.0/12, node ports 30000-32767).
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(|_| {}).await
    }

    /// Start a server after letting `tweak` adjust the configuration (e.g. a smaller history window).
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-api-test-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "creating temp dir".into(),
                source,
            })?;
        let mut cfg = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service_cidr: "10.96.0.0/12"
                .parse()
                .map_err(|e| Error::Config(format!("{e}")))?,
            node_ports: 30000..=32767,
            tls: true,
            token: None,
            history_window: 20_000,
        };
        tweak(&mut cfg);
        let server = serve(cfg).await?;
        Ok(Self {
            url: server.url.clone(),
            kubeconfig_path: server.kubeconfig_path.clone(),
            token: server.token.clone(),
            ca_pem: server.ca_pem.clone().unwrap_or_default(),
            data_dir: dir.path().to_path_buf(),
            server,
            _dir: dir,
        })
    }

    /// A kube-rs client for this server (from its kubeconfig).
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig_path)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        kube::Client::try_from(config)
    }

    /// The underlying server.
    pub fn server(&self) -> &ApiServer {
        &self.server
    }
}
