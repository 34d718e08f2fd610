//! A real API server for tests (this crate's and other crates'): HTTPS on an ephemeral 127.0.0.1 port, a
//! temporary data dir, a generated token and kubeconfig.
//!
//! The store backend comes from `SKIFF_TEST_STORE`: unset or `redb` for the embedded store, `etcd` for a real
//! etcd (Debian's binary, one member started per test process on loopback; every server gets a key prefix
//! of its own). CI runs the API suites once per backend.

use crate::{serve, ApiServer, Error, ServerConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The etcd store a test server should use per `SKIFF_TEST_STORE` (None: the embedded store).
pub fn etcd_from_env() -> Result<Option<skiff_store::EtcdOptions>, Error> {
    match std::env::var("SKIFF_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("redb") => Ok(None),
        Ok("etcd") => shared_etcd().map(Some),
        Ok(other) => Err(Error::Config(format!(
            "SKIFF_TEST_STORE={other}: want redb or etcd"
        ))),
    }
}

/// A fresh key prefix on the test process's etcd member (started on first use).
pub fn shared_etcd() -> Result<skiff_store::EtcdOptions, Error> {
    static N: AtomicU32 = AtomicU32::new(0);
    let cluster = skiff_store::etcd_testing::EtcdCluster::shared().map_err(Error::Config)?;
    Ok(skiff_store::EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: format!(
            "/test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ),
        ..Default::default()
    })
}

/// The configuration test servers start from: loopback, an ephemeral port, TLS, the default ranges, data in
/// `dir` and the store `SKIFF_TEST_STORE` selects. Clones share the store (restart tests).
pub fn config(dir: &Path) -> Result<ServerConfig, Error> {
    Ok(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        advertise_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        service_cidr: "10.96.0.0/12"
            .parse()
            .map_err(|e| Error::Config(format!("{e}")))?,
        node_ports: 30000..=32767,
        tls: true,
        token: None,
        history_window: 20_000,
        etcd: etcd_from_env()?,
    })
}

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
    /// The etcd the server stores in (None: the embedded store).
    pub etcd: Option<skiff_store::EtcdOptions>,
    server: ApiServer,
    _private_etcd: Option<skiff_store::etcd_testing::EtcdCluster>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Start a server with default settings (service CIDR 10.96.0.0/12, node ports 30000-32767).
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(|_| {}).await
    }

    /// Start a server whose watch history can be cut short: a history window of 5 events on the embedded
    /// store, an etcd of its own (compacted by [`TestServer::compact_history`]) on etcd.
    pub async fn start_with_short_history() -> Result<Self, Error> {
        if etcd_from_env()?.is_none() {
            return Self::start_with(|c| c.history_window = 5).await;
        }
        let cluster =
            tokio::task::spawn_blocking(|| skiff_store::etcd_testing::EtcdCluster::start(1))
                .await
                .map_err(|e| Error::Config(e.to_string()))?
                .map_err(Error::Config)?;
        let endpoints = cluster.endpoints();
        let mut s = Self::start_with(|c| {
            c.etcd = Some(skiff_store::EtcdOptions {
                endpoints,
                ..Default::default()
            })
        })
        .await?;
        s._private_etcd = Some(cluster);
        Ok(s)
    }

    /// Make the history before now unavailable to watches and continued lists (etcd: compact; the embedded
    /// store's short window already drops old events).
    pub async fn compact_history(&self) -> Result<(), Error> {
        if let Some(etcd) = &self.etcd {
            skiff_store::EtcdStore::connect(etcd.clone())
                .await?
                .compact()
                .await?;
        }
        Ok(())
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
        let mut cfg = config(dir.path())?;
        tweak(&mut cfg);
        let etcd = cfg.etcd.clone();
        let server = serve(cfg).await?;
        Ok(Self {
            url: server.url.clone(),
            kubeconfig_path: server.kubeconfig_path.clone(),
            token: server.token.clone(),
            ca_pem: server.ca_pem.clone().unwrap_or_default(),
            data_dir: dir.path().to_path_buf(),
            etcd,
            server,
            _private_etcd: None,
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
