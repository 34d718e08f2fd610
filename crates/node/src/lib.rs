//! The Skiff node agent (kubelet): Node registration and Lease heartbeat, pod sandboxes (network, UTS and mount
//! namespaces), container processes from the host filesystem resolved through the image catalog, probes,
//! restart back-off, pod status and events, service environment variables, resolv.conf and hosts; and the
//! built-in `demoapp` server.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod catalog;
pub mod demoapp;
pub mod dnsconf;
pub mod envvars;
pub mod status;

mod events;
pub mod lifecycle;
pub mod netns;
pub mod node;
mod pod;
pub mod probe;
pub mod resources;
pub mod security;
pub mod sources;
pub mod spawn;
pub mod state;
pub mod volumes;

use std::path::PathBuf;

/// `skiff agent` options.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "node")]
pub struct Options {
    /// Where pod state, generated resolv.conf/hosts files and container logs live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    /// CNI network configuration directory (the first *.conflist, by name, is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries (repeatable).
    #[arg(long = "cni-bin-dir", default_values = ["/opt/cni/bin", "/usr/lib/cni"])]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The cluster DNS server written into pods' resolv.conf.
    #[arg(long, default_value = skiff_runtime::defaults::KUBE_DNS_SERVICE_IP)]
    pub cluster_dns: String,
    #[arg(long, default_value = skiff_runtime::defaults::CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// YAML file mapping image names to argv, added to (and overriding) the built-in catalog.
    #[arg(long)]
    pub image_catalog: Option<PathBuf>,
    /// The skiff binary used for built-in images (demoapp, dns); defaults to this executable.
    #[arg(long)]
    pub skiff_exe: Option<PathBuf>,
    /// Kubeconfig handed to system pods (e.g. DNS) that need API access.
    #[arg(long)]
    pub internal_kubeconfig: Option<PathBuf>,
    /// MTU of pod interfaces in the network configuration the agent writes (1450 leaves room for VXLAN).
    #[arg(long, default_value_t = 1450)]
    pub pod_mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Catalog(#[from] catalog::LoadError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub client: kube::Client,
    pub node: skiff_runtime::NodeIdentity,
    pub options: Options,
    pub catalog: catalog::Catalog,
    pub host_resolv: dnsconf::ResolvConf,
    pub services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    pub cni: skiff_cni::runtime::CniRuntime,
    /// Origin of the monotonic offsets the back-off works with.
    pub origin: std::time::Instant,
    /// Bounds the API requests pod workers have in flight (status updates, events, final deletes). Without
    /// it a burst of pods opens one HTTP/1.1 + TLS connection per concurrent request, and the client's pool
    /// keeps them all (with their buffers) afterwards; kubelet bounds the same traffic with its client QPS.
    pub api_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Awaited (bounded by `POD_GATE_TIMEOUT`) after a pod's sandbox is set up, before its containers start.
    pub pod_gate: Option<std::sync::Arc<dyn skiff_runtime::gate::PodStartGate>>,
}

/// How long a pod start waits for its gate (network policy) before starting anyway with a warning.
pub const POD_GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Pod-worker API requests in flight at once (see [`Ctx::api_slots`]).
pub const POD_API_CONCURRENCY: usize = 8;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Whether the conf dir holds a network configuration (any *.conflist, *.conf or *.json, as runtimes look).
fn has_cni_config(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            matches!(
                e.path().extension().and_then(|x| x.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
    })
}

/// Where the agent's network configuration keeps IPAM allocations (`<data-dir>/ipam/<network>/<address>`).
/// Absolute, because the plugin reads it from the configuration, not relative to the agent.
pub fn ipam_data_dir(data_dir: &std::path::Path) -> PathBuf {
    std::path::absolute(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .join("ipam")
}

/// Write Skiff's network configuration when the conf dir has none (an existing one is the user's choice).
fn ensure_cni_config(options: &Options, pod_cidr: &str) -> Result<(), Error> {
    if has_cni_config(&options.cni_conf_dir) {
        return Ok(());
    }
    let cidr: ipnet::Ipv4Net = pod_cidr.parse().map_err(|e| Error::Io {
        context: format!("node podCIDR {pod_cidr:?}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    std::fs::create_dir_all(&options.cni_conf_dir).map_err(io_err(format!(
        "creating {}",
        options.cni_conf_dir.display()
    )))?;
    // Allocations live under the agent's own data dir, not the machine-wide /var/lib/cni/networks: removing a
    // node (`skiff down` deletes its data dir) then removes its allocations too, instead of leaving addresses
    // reserved for the next cluster that gets the same podCIDR.
    let text = skiff_cni::config::skiff_conflist_in(
        "skiff",
        cidr,
        options.pod_mtu,
        &ipam_data_dir(&options.data_dir),
    );
    let path = options.cni_conf_dir.join(skiff_cni::config::CONFLIST_FILE);
    let tmp = options
        .cni_conf_dir
        .join(format!(".{}.tmp", skiff_cni::config::CONFLIST_FILE));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(io_err(format!("writing {}", path.display())))?;
    tracing::info!(path = %path.display(), pod_cidr, "wrote CNI network configuration");
    Ok(())
}

/// Hand memory freed after a burst of pod starts or deletions back to the kernel. A burst allocates in several
/// glibc arenas at once (sandbox setups run concurrently on every worker thread); glibc returns an arena's free
/// pages only when its top chunk is free, so without this the agent's resident size stays at the burst's peak.
#[allow(unsafe_code)] // malloc_trim: no safe binding
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own arenas under their locks; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Each pod's worker by pod uid: the channel that hands it the watched pod, and its task.
type PodWorkers = std::collections::HashMap<
    String,
    (
        tokio::sync::watch::Sender<Option<std::sync::Arc<k8s_openapi::api::core::v1::Pod>>>,
        tokio::task::JoinHandle<()>,
    ),
>;

/// Run the node agent until the process ends: register the Node, heartbeat, and run the pods bound to it.
pub async fn run(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: Options,
) -> Result<(), Error> {
    run_gated(client, node, options, None).await
}

/// As `run`, with a gate every pod start awaits between its sandbox and its containers.
pub async fn run_gated(
    client: kube::Client,
    node: skiff_runtime::NodeIdentity,
    options: Options,
    pod_gate: Option<std::sync::Arc<dyn skiff_runtime::gate::PodStartGate>>,
) -> Result<(), Error> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    use std::collections::{HashMap, HashSet};

    let skiff_exe = match &options.skiff_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io_err("finding the skiff executable"))?,
    };
    let mut catalog = catalog::Catalog::new(skiff_exe, options.internal_kubeconfig.clone());
    if let Some(path) = &options.image_catalog {
        catalog = catalog.load_user_file(path)?;
    }
    std::fs::create_dir_all(state::pods_dir(&options.data_dir))
        .map_err(io_err(format!("creating {}", options.data_dir.display())))?;
    let host_resolv = dnsconf::ResolvConf::parse(
        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    );

    let since = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let network_ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(has_cni_config(
        &options.cni_conf_dir,
    )));
    let ready_at_start = network_ready.load(std::sync::atomic::Ordering::Relaxed);
    let registered = node::register(&client, &node, &since, ready_at_start).await?;
    tracing::info!(node = %node.name, ip = %node.ip, "node registered");
    tokio::spawn(node::heartbeat(
        client.clone(),
        node.clone(),
        registered.metadata.uid.clone(),
        since.clone(),
        network_ready.clone(),
    ));

    if !ready_at_start {
        let cidr = node::wait_pod_cidr(&client, &node).await;
        ensure_cni_config(&options, &cidr)?;
        network_ready.store(true, std::sync::atomic::Ordering::Relaxed);
        node::post_status(&client, &node, &since, true).await?;
    }

    // Services for the pods' environment variables.
    let (services, writer) = reflector::store::<Service>();
    let service_stream = reflector(
        writer,
        watcher(
            kube::Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(service_stream);
    // Wait (briefly) for the first list so early pods see the services that exist.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        services.wait_until_ready(),
    )
    .await;

    let ctx = std::sync::Arc::new(Ctx {
        client: client.clone(),
        node: node.clone(),
        cni: skiff_cni::runtime::CniRuntime::new(
            options.cni_conf_dir.clone(),
            options.cni_bin_dirs.clone(),
            options.data_dir.join("cni-cache"),
        ),
        options,
        catalog,
        host_resolv,
        services,
        origin: std::time::Instant::now(),
        api_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(POD_API_CONCURRENCY)),
        pod_gate,
    });

    let mut records: HashMap<String, state::PodRecord> =
        state::PodRecord::load_all(&ctx.options.data_dir)
            .into_iter()
            .map(|r| (r.uid.clone(), r))
            .collect();
    let mut workers: PodWorkers = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut first_list_done = false;

    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let mut reap = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut workers_at_last_tick = 0usize;
    loop {
        let event = tokio::select! {
            ev = stream.next() => ev,
            _ = reap.tick() => {
                // Workers end once their pod is gone and cleaned up.
                let done: Vec<String> = workers.iter().filter(|(_, (_, h))| h.is_finished()).map(|(k, _)| k.clone()).collect();
                let churned = !done.is_empty() || workers.len() != workers_at_last_tick;
                for uid in done {
                    // A tombstone keeps late events from starting a second worker; a pod already gone from
                    // the API needs none (no event names it again), so this set does not grow with every pod.
                    if workers.remove(&uid).is_some_and(|(tx, _)| tx.borrow().is_some()) {
                        finished.insert(uid);
                    }
                }
                workers_at_last_tick = workers.len();
                if churned {
                    release_free_memory();
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(ev) => ev,
            Err(err) => {
                tracing::warn!(%err, "pod watch");
                continue;
            }
        };
        let mut apply = |pod: Pod, workers: &mut PodWorkers| {
            let Some(uid) = pod.metadata.uid.clone() else {
                return;
            };
            // Shared with the worker: one copy of each pod in memory, and the worker's per-turn read of the
            // latest pod is a reference count, not a deep clone.
            let pod = std::sync::Arc::new(pod);
            if let Some((tx, handle)) = workers.get(&uid) {
                if !handle.is_finished() {
                    let _ = tx.send(Some(pod));
                    return;
                }
            }
            if finished.contains(&uid) {
                return;
            }
            let (tx, rx) = tokio::sync::watch::channel(Some(pod.clone()));
            let handle = pod::spawn_worker(ctx.clone(), pod, rx, records.remove(&uid));
            workers.insert(uid, (tx, handle));
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                apply(pod, &mut workers);
            }
            watcher::Event::Apply(pod) => apply(pod, &mut workers),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_ref() {
                    if let Some((tx, _)) = workers.get(uid) {
                        // Stored even when the worker has already ended, so the reaper sees the pod is gone.
                        tx.send_replace(None);
                    }
                    finished.remove(uid);
                }
            }
            watcher::Event::InitDone => {
                // Pods that no longer exist: stop their workers; sandboxes of unknown pods go.
                for (uid, (tx, _)) in &workers {
                    if !listed.contains(uid) {
                        tx.send_replace(None);
                    }
                }
                finished.retain(|uid| listed.contains(uid));
                if !first_list_done {
                    first_list_done = true;
                    for (_, record) in records.drain() {
                        tracing::info!(pod = %record.name, uid = %record.uid, "removing sandbox of a pod that no longer exists");
                        let ctx = ctx.clone();
                        tokio::spawn(async move { pod::teardown_record(&ctx, &record).await });
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &std::path::Path) -> Options {
        Options {
            data_dir: dir.join("state"),
            cni_conf_dir: dir.join("net.d"),
            cni_bin_dirs: vec![],
            cluster_dns: "10.96.0.10".into(),
            cluster_domain: "cluster.local".into(),
            image_catalog: None,
            skiff_exe: None,
            internal_kubeconfig: None,
            pod_mtu: 1450,
        }
    }

    #[test]
    fn written_network_configuration_keeps_allocations_in_the_agent_data_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let opts = options(tmp.path());
        ensure_cni_config(&opts, "10.244.3.0/24").expect("writing the conflist");
        let written =
            std::fs::read_to_string(opts.cni_conf_dir.join(skiff_cni::config::CONFLIST_FILE))
                .expect("conflist written");
        let expected = skiff_cni::config::skiff_conflist_in(
            "skiff",
            "10.244.3.0/24".parse().expect("cidr"),
            1450,
            &tmp.path().join("state/ipam"),
        );
        assert_eq!(written, expected);
        assert!(
            written.contains(&format!(
                "\"dataDir\": \"{}/state/ipam\"",
                tmp.path().display()
            )),
            "{written}"
        );
    }

    #[test]
    fn an_existing_network_configuration_is_left_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let opts = options(tmp.path());
        std::fs::create_dir_all(&opts.cni_conf_dir).expect("mkdir");
        std::fs::write(opts.cni_conf_dir.join("05-user.conflist"), "{}").expect("write");
        ensure_cni_config(&opts, "10.244.3.0/24").expect("no-op");
        assert!(!opts
            .cni_conf_dir
            .join(skiff_cni::config::CONFLIST_FILE)
            .exists());
    }
}
