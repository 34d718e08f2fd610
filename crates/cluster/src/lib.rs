//! `skiff up / down / status`: the embedded one-machine cluster. The control plane (`skiff server`) runs in
//! the host; every node is a network namespace attached by a veth to a host bridge and runs `skiff agent`;
//! the host gets routes to pod CIDRs and the service CIDR so that a user reaches pods and Services as on
//! the seeds' master node. See ARCHITECTURE.md "Embedded cluster layout".

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod bgp;
pub mod kubeconfig;
pub mod layout;
pub mod net;
pub mod procs;
mod progress;
pub mod system;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::Api;
use skiff_runtime::defaults;

pub use layout::{Layout, NodeLayout, Overlay};
use progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Client(#[from] skiff_runtime::Error),
    #[error("timed out (--timeout): {0}")]
    Timeout(String),
    #[error("cluster {name:?} is already running (API server pid {pid}); `skiff down --name {name}` first")]
    AlreadyRunning { name: String, pid: u32 },
    #[error("{0}")]
    Other(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// `skiff up` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Cluster name (names the bridge, the node namespaces and the default data directory).
    #[arg(long, default_value = "skiff")]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// State directory [default: /var/lib/skiff/<name>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The network of the host bridge and the nodes: the host takes .1, node i takes .(1+i).
    #[arg(long, default_value = defaults::NODE_NETWORK_CIDR)]
    pub node_network: Ipv4Net,
    /// Pod network of the whole cluster (each node gets a /24 of it).
    #[arg(long, default_value = defaults::CLUSTER_POD_CIDR)]
    pub cluster_cidr: Ipv4Net,
    /// Service (ClusterIP) range.
    #[arg(long, default_value = defaults::SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
    /// How pod traffic crosses nodes: a VXLAN overlay, host-gw routes, or routes learned over BGP (BIRD on
    /// every node and on the host).
    #[arg(long, visible_alias = "backend", value_enum, default_value = "vxlan")]
    pub overlay: Overlay,
    /// With --backend bgp: how pod traffic between nodes is encapsulated (Calico's ipipMode / vxlanMode).
    #[arg(long, value_enum, default_value = "none")]
    pub encapsulation: layout::Encapsulation,
    /// Put every second node (node-2, node-4, ...) on a second host bridge with this network: nodes on two
    /// subnets that the host routes between (for --encapsulation vxlan-cross-subnet / ipip-cross-subnet).
    #[arg(long)]
    pub second_node_network: Option<Ipv4Net>,
    /// With --backend bgp: the BGP hold time in seconds (a stopped node is withdrawn after it).
    #[arg(long, default_value_t = 9)]
    pub bgp_hold_time: u16,
    /// LoadBalancer address pool (first-last).
    #[arg(long, default_value = defaults::LOAD_BALANCER_POOL)]
    pub lb_pool: String,
    /// Port of the API server (on every host address; nodes reach it at the bridge address).
    #[arg(long, default_value_t = defaults::API_SERVER_PORT)]
    pub api_port: u16,
    /// Stay in the foreground and tear the cluster down on Ctrl-C.
    #[arg(long)]
    pub foreground: bool,
    /// Once ready, deploy the seed-004 demo (examples/demoapp.yaml).
    #[arg(long)]
    pub demo: bool,
    /// Replicas of the cluster DNS Deployment (0: no cluster DNS).
    #[arg(long, default_value_t = 1)]
    pub dns_replicas: i32,
    /// Upstream resolvers the cluster DNS forwards names outside the cluster domain to (ip[:port],
    /// repeatable; `none`: no forwarding). Default: the nameservers of the host's /etc/resolv.conf. The host
    /// does not NAT the node network, so an upstream must be reachable from it as it is.
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Vec<String>,
    /// How long to wait for the cluster to become ready, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Also add the cluster as context `skiff-<name>` to ~/.kube/config and make it current
    /// (`skiff down` removes it).
    #[arg(long)]
    pub update_kubeconfig: bool,
    /// The skiff executable to start servers and agents from [default: this executable].
    #[arg(long, hide = true)]
    pub skiff_binary: Option<PathBuf>,
}

/// `skiff down` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DownOptions {
    #[arg(long, default_value = "skiff")]
    pub name: String,
    /// State directory, if `skiff up` was given one and /run/skiff has lost track of it.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory (store, certificates, logs).
    #[arg(long)]
    pub keep_state: bool,
}

/// `skiff status` options.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusOptions {
    #[arg(long, default_value = "skiff")]
    pub name: String,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What `skiff up` leaves behind for the user.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub layout: Layout,
    pub kubeconfig: PathBuf,
    pub elapsed: Duration,
}

impl Options {
    pub fn layout(&self) -> Result<Layout, Error> {
        Layout::new(&layout::LayoutInput {
            name: &self.name,
            nodes: self.nodes,
            data_dir: self.data_dir.as_deref(),
            node_network: self.node_network,
            cluster_cidr: self.cluster_cidr,
            service_cidr: self.service_cidr,
            overlay: self.overlay,
            encapsulation: self.encapsulation,
            bgp_hold_time: self.bgp_hold_time,
            second_network: self.second_node_network,
            lb_pool: &self.lb_pool,
            api_port: self.api_port,
        })
    }
}

fn mkdir(p: &Path) -> Result<(), Error> {
    fs::create_dir_all(p).map_err(|source| Error::Io {
        what: format!("creating {}", p.display()),
        source,
    })
}

fn write(p: &Path, data: impl AsRef<[u8]>) -> Result<(), Error> {
    fs::write(p, data).map_err(|source| Error::Io {
        what: format!("writing {}", p.display()),
        source,
    })
}

/// `skiff up`: builds the cluster and returns once every node is Ready and the system pods run. With
/// `--foreground` it then waits for Ctrl-C and tears the cluster down.
pub async fn up(opts: &Options) -> Result<Cluster, Error> {
    let layout = opts.layout()?;
    // A running cluster of that name is not a leftover: refuse rather than tear it down.
    if let Ok(existing) = find_layout(&layout.name, opts.data_dir.as_deref()) {
        if let Some(pid) = procs::read_live_pid(&existing.server_pid_file()) {
            return Err(Error::AlreadyRunning {
                name: layout.name.clone(),
                pid,
            });
        }
    }
    match up_layout(opts, &layout).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // Leave no half-built cluster behind; keep the logs that explain the failure.
            if let Err(cleanup) = down_layout(&layout, false).await {
                tracing::warn!(error = %cleanup, "cleaning up after a failed skiff up");
            }
            eprintln!("logs are kept in {}", layout.logs_dir().display());
            Err(e)
        }
    }
}

async fn up_layout(opts: &Options, layout: &Layout) -> Result<Cluster, Error> {
    let start = Instant::now();
    let layout = layout.clone();
    let exe = match &opts.skiff_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|source| Error::Io {
            what: "locating skiff".into(),
            source,
        })?,
    };
    let timeout = Duration::from_secs(opts.timeout);
    let progress = Progress::new();

    progress.step("cleaning up leftovers");
    let leftovers = down_layout(&layout, false).await?;
    if !leftovers.is_empty() {
        progress.done(&format!(
            "removed leftovers of a previous run: {}",
            leftovers.summary()
        ));
    }

    // Persist the layout first: if anything below fails or crashes, `skiff down` finds what to remove.
    for d in [layout.logs_dir(), layout.run_dir(), layout.server_dir()] {
        mkdir(&d)?;
    }
    let state = serde_json::to_vec_pretty(&layout)
        .map_err(|e| Error::Other(format!("encoding state: {e}")))?;
    write(&layout.state_file(), &state)?;
    let registry = layout::registry_file(&layout.name);
    if let Some(dir) = registry.parent() {
        mkdir(dir)?;
    }
    write(&registry, &state)?;

    progress.step(&format!("host bridge {}", layout.bridge));
    let handle = net::connect()?;
    let bridge_index = net::create_bridge(&handle, &layout).await?;
    let second_index = match (
        layout.second_bridge(),
        layout.second_bridge_ip(),
        layout.second_network,
    ) {
        (Some(name), Some(ip), Some(n)) => {
            Some(net::create_named_bridge(&handle, &name, ip, n.prefix_len()).await?)
        }
        _ => None,
    };
    net::write_sysctl("net.ipv4.ip_forward", "1")?;
    progress.done(&format!(
        "bridge {} {}/{}",
        layout.bridge,
        layout.bridge_ip,
        layout.node_network.prefix_len()
    ));

    if layout.overlay == Overlay::Bgp {
        progress.step("starting the host's BIRD (BGP peer of every node)");
        let pid = bgp::start(&layout).await?;
        progress.done(&format!(
            "host BIRD (pid {pid}) learns routes into table {}",
            layout.host_route_table()
        ));
    }

    progress.step("starting the API server");
    let server_pid =
        procs::spawn_detached(&exe, &layout.server_args(), &layout.server_log(), None)?;
    procs::write_pid_file(&layout.server_pid_file(), server_pid)?;

    // Node namespaces do not need the server: build them while it starts.
    progress.step(&format!("creating {} node namespaces", layout.nodes.len()));
    let mut builds = Vec::new();
    for node in &layout.nodes {
        mkdir(&node.dir.join("state"))?;
        mkdir(&node.dir.join("cni/net.d"))?;
        let bin = node.dir.join("cni/bin");
        mkdir(&bin)?;
        let link = bin.join("skiff-cni");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|source| Error::Io {
            what: format!("linking {}", link.display()),
            source,
        })?;
        let (l, n) = (layout.clone(), node.clone());
        builds.push(tokio::task::spawn_blocking(move || {
            net::create_node_netns(&l, &n)
        }));
    }
    for b in builds {
        b.await
            .map_err(|e| Error::Other(format!("node namespace task: {e}")))??;
    }
    for node in &layout.nodes {
        let index = match (node.second, second_index) {
            (true, Some(i)) => i,
            _ => bridge_index,
        };
        net::attach_to_bridge(&handle, &node.host_veth, index).await?;
    }
    // With BGP the host learns the service CIDR from the nodes instead.
    if let (Some(first), false) = (layout.nodes.first(), layout.overlay == Overlay::Bgp) {
        net::replace_route(&handle, layout.service_cidr, first.ip).await?;
    }
    progress.done(&format!(
        "nodes {} ({}..{})",
        layout.nodes.len(),
        layout.nodes[0].ip,
        layout.nodes[layout.nodes.len() - 1].ip
    ));

    progress.step("waiting for the API server");
    let client = wait_server(&layout, server_pid, start + timeout).await?;
    progress.done(&format!(
        "API server ready at {} (pid {server_pid})",
        layout.api_url()
    ));

    progress.step("starting node agents");
    let mut agents = BTreeMap::new();
    for node in &layout.nodes {
        let pid = procs::spawn_detached(
            &exe,
            &layout.agent_args(node),
            &layout.agent_log(node),
            Some(&net::netns_path(&node.netns)),
        )?;
        procs::write_pid_file(&layout.agent_pid_file(node), pid)?;
        agents.insert(node.name.clone(), pid);
    }

    if opts.dns_replicas > 0 {
        create_dns(&client, &layout, opts.dns_replicas, &opts.dns_upstream).await?;
    }

    progress.step("waiting for nodes to be Ready");
    wait_nodes(
        &client,
        &handle,
        &layout,
        &agents,
        start + timeout,
        &progress,
    )
    .await?;
    progress.done(&format!("{} nodes Ready", layout.nodes.len()));

    if opts.dns_replicas > 0 {
        progress.step("waiting for cluster DNS");
        wait_dns(&client, opts.dns_replicas, start + timeout).await?;
        progress.done(&format!(
            "cluster DNS running (kube-dns {})",
            layout.dns_ip()
        ));
    }

    if opts.demo {
        progress.step("deploying the seed-004 demo");
        apply_demo(&client, &handle, &layout).await?;
        // Return when the user's first `curl` gets an answer: the demo's pods Ready (so they are endpoints).
        wait_pods_ready(&client, "default", "app=demoapp", 2, start + timeout).await?;
        // ... and the Service path through the proxy is programmed: the ClusterIP answers HTTP.
        wait_http(system::DEMO_CLUSTER_IP, start + timeout).await?;
        progress.done("demo deployed: 2 demoapp pods Ready");
    }

    if opts.update_kubeconfig {
        let path = update_user_kubeconfig(&layout)?;
        progress.done(&format!(
            "context {} added to {}",
            kubeconfig::entry_name(&layout.name),
            path.display()
        ));
    }

    let elapsed = start.elapsed();
    progress.finish(&format!(
        "cluster {:?} is up in {:.2}s",
        layout.name,
        elapsed.as_secs_f64()
    ));
    let cluster = Cluster {
        kubeconfig: layout.kubeconfig(),
        layout,
        elapsed,
    };
    print_usage(&cluster, opts.demo);

    if opts.foreground {
        eprintln!("running in the foreground; Ctrl-C tears the cluster down");
        tokio::signal::ctrl_c().await.map_err(|source| Error::Io {
            what: "waiting for Ctrl-C".into(),
            source,
        })?;
        let report = down_layout(&cluster.layout, false).await?;
        eprintln!(
            "cluster {:?} removed: {}",
            cluster.layout.name,
            report.summary()
        );
    }
    Ok(cluster)
}

fn print_usage(cluster: &Cluster, demo: bool) {
    let l = &cluster.layout;
    println!("export KUBECONFIG={}", cluster.kubeconfig.display());
    println!("kubectl get nodes -o wide");
    if demo {
        let node1 = l
            .nodes
            .first()
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        println!("kubectl get svc -o wide");
        println!("curl 10.97.72.1            # demoapp-svc (ClusterIP)");
        println!("curl {node1}:31399     # demoapp-nodeport-svc (NodePort)");
        println!("curl $(kubectl get svc demoapp-loadbalancer-svc -o jsonpath='{{.status.loadBalancer.ingress[0].ip}}')");
        println!(
            "curl {}          # demoapp-externalip-svc (externalIPs)",
            system::DEMO_EXTERNAL_IP
        );
    }
    println!(
        "skiff down{}",
        if l.name == "skiff" {
            String::new()
        } else {
            format!(" --name {}", l.name)
        }
    );
}

/// The user's kubeconfig: the first path of $KUBECONFIG, else ~/.kube/config.
fn user_kubeconfig_path() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&k).find(|p| !p.as_os_str().is_empty()) {
            return Some(first);
        }
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config"))
}

fn update_user_kubeconfig(layout: &Layout) -> Result<PathBuf, Error> {
    let path =
        user_kubeconfig_path().ok_or_else(|| Error::Other("no $HOME for ~/.kube/config".into()))?;
    let read_yaml = |p: &Path| -> Result<Option<serde_yaml::Value>, Error> {
        match fs::read_to_string(p) {
            Ok(t) => serde_yaml::from_str(&t)
                .map(Some)
                .map_err(|e| Error::Other(format!("parsing {}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                what: format!("reading {}", p.display()),
                source,
            }),
        }
    };
    let ours = read_yaml(&layout.kubeconfig())?
        .ok_or_else(|| Error::Other(format!("{} missing", layout.kubeconfig().display())))?;
    let merged = kubeconfig::merge(read_yaml(&path)?, &ours, &layout.name).map_err(Error::Other)?;
    if let Some(dir) = path.parent() {
        mkdir(dir)?;
    }
    let text = serde_yaml::to_string(&merged).map_err(|e| Error::Other(e.to_string()))?;
    write(&path, text)?;
    // It holds a bearer token.
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
    Ok(path)
}

/// Best effort: a kubeconfig we cannot read or parse is left alone.
fn remove_from_user_kubeconfig(name: &str) {
    let Some(path) = user_kubeconfig_path() else {
        return;
    };
    let Ok(text) = fs::read_to_string(&path) else {
        return;
    };
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
        return;
    };
    if let Some(cleaned) = kubeconfig::remove(doc, name) {
        if let Ok(t) = serde_yaml::to_string(&cleaned) {
            let _ = fs::write(&path, t);
        }
    }
}

/// Waits until `http://<ip>/` answers with an HTTP status line (a GET over a plain TCP connection).
async fn wait_http(ip: &str, deadline: Instant) -> Result<(), Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = format!("{ip}:80");
    loop {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect(&addr).await?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut buf = [0u8; 16];
            let n = conn.read(&mut buf).await?;
            Ok::<bool, std::io::Error>(buf[..n].starts_with(b"HTTP/1."))
        };
        let last = match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => "not an HTTP answer".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 500ms".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("http://{addr}/: {last}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the server to write its kubeconfig and answer /readyz; fails early if it exits.
async fn wait_server(layout: &Layout, pid: u32, deadline: Instant) -> Result<kube::Client, Error> {
    let kubeconfig = layout.kubeconfig();
    let mut client: Option<kube::Client> = None;
    let mut last = String::from("no kubeconfig yet");
    loop {
        if !procs::is_alive(pid) {
            return Err(Error::Other(format!(
                "the API server exited; {}:\n{}",
                layout.server_log().display(),
                procs::log_tail(&layout.server_log(), 20)
            )));
        }
        if client.is_none() && kubeconfig.exists() && layout.internal_kubeconfig().exists() {
            match skiff_runtime::client_from_kubeconfig(&kubeconfig).await {
                Ok(c) => client = Some(c),
                Err(e) => last = e.to_string(),
            }
        }
        if let Some(c) = &client {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Other(e.to_string()))?;
            match c.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(c.clone()),
                Ok(body) => last = format!("/readyz: {}", body.trim()),
                Err(e) => last = format!("/readyz: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("API server not ready ({last})")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_or_keep<K>(api: &Api<K>, obj: serde_json::Value, what: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let typed: K = serde_json::from_value(obj).map_err(|e| Error::Other(format!("{what}: {e}")))?;
    match api.create(&PostParams::default(), &typed).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(format!("creating {what}"))(e)),
    }
}

async fn create_dns(
    client: &kube::Client,
    layout: &Layout,
    replicas: i32,
    upstreams: &[String],
) -> Result<(), Error> {
    let ns = "kube-system";
    create_or_keep(
        &Api::<Service>::namespaced(client.clone(), ns),
        system::dns_service(&layout.dns_ip().to_string()),
        "service kube-system/kube-dns",
    )
    .await?;
    create_or_keep(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        system::dns_deployment(replicas, upstreams),
        "deployment kube-system/skiff-dns",
    )
    .await
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every node of the layout is Ready, installing each node's podCIDR route in the host as
/// soon as the IPAM controller assigned it. An agent that exits meanwhile fails `skiff up` with its log
/// (the API retries conflicting Node writes itself, so registration has no transient failure to outlast).
async fn wait_nodes(
    client: &kube::Client,
    handle: &rtnetlink::Handle,
    layout: &Layout,
    agents: &BTreeMap<String, u32>,
    deadline: Instant,
    progress: &Progress,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let ips: BTreeMap<&str, Ipv4Addr> = layout
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.ip))
        .collect();
    let mut routed: BTreeSet<String> = BTreeSet::new();
    loop {
        for node in &layout.nodes {
            let Some(&pid) = agents.get(&node.name) else {
                continue;
            };
            if !procs::is_alive(pid) {
                let log = layout.agent_log(node);
                return Err(Error::Other(format!(
                    "the agent of {} exited; {}:\n{}",
                    node.name,
                    log.display(),
                    procs::log_tail(&log, 20)
                )));
            }
        }
        let nodes = api
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing nodes"))?;
        let mut ready = 0;
        let learned = if layout.overlay == Overlay::Bgp {
            bgp::learned_routes(layout).await
        } else {
            BTreeSet::new()
        };
        for node in &nodes.items {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            let Some(&ip) = ips.get(name) else { continue };
            if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                if layout.overlay == Overlay::Bgp {
                    // Routed once the host learned it over BGP.
                    let net: Option<Ipv4Net> = cidr.parse().ok();
                    if net.is_some_and(|n| learned.contains(&n.trunc())) {
                        routed.insert(cidr.to_string());
                    }
                } else if !routed.contains(cidr) {
                    let net: Ipv4Net = cidr
                        .parse()
                        .map_err(|e| Error::Other(format!("node {name}: podCIDR {cidr:?}: {e}")))?;
                    net::replace_route(handle, net, ip).await?;
                    routed.insert(cidr.to_string());
                }
            }
            if node_ready(node) {
                ready += 1;
            }
        }
        progress.step(&format!(
            "waiting for nodes to be Ready ({ready}/{})",
            layout.nodes.len()
        ));
        if ready == layout.nodes.len() && routed.len() == layout.nodes.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{ready}/{} nodes Ready, {} podCIDRs assigned",
                layout.nodes.len(),
                routed.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_dns(client: &kube::Client, replicas: i32, deadline: Instant) -> Result<(), Error> {
    wait_pods_ready(
        client,
        "kube-system",
        "k8s-app=kube-dns",
        replicas,
        deadline,
    )
    .await
}

async fn wait_pods_ready(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    replicas: i32,
    deadline: Instant,
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(selector);
    loop {
        let pods = api
            .list(&lp)
            .await
            .map_err(kube_err(format!("listing {namespace} pods")))?;
        let ready = pods.items.iter().filter(|p| pod_ready(p)).count();
        if ready >= replicas as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let phases: Vec<String> = pods
                .items
                .iter()
                .map(|p| {
                    format!(
                        "{}={}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        p.status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .unwrap_or("Pending")
                    )
                })
                .collect();
            return Err(Error::Timeout(format!(
                "{namespace} pods {selector}: {ready}/{replicas} ready [{}]",
                phases.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn apply_demo(
    client: &kube::Client,
    handle: &rtnetlink::Handle,
    layout: &Layout,
) -> Result<(), Error> {
    for obj in system::parse_manifests(system::DEMO_MANIFESTS)? {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let what = format!("{kind} default/{name}");
        match kind.as_str() {
            "Deployment" => {
                create_or_keep(
                    &Api::<Deployment>::namespaced(client.clone(), "default"),
                    obj,
                    &what,
                )
                .await?
            }
            "Service" => {
                create_or_keep(
                    &Api::<Service>::namespaced(client.clone(), "default"),
                    obj,
                    &what,
                )
                .await?
            }
            other => {
                return Err(Error::Other(format!(
                    "demo manifest of unexpected kind {other}"
                )))
            }
        }
    }
    // The seed puts its external IP on the master's NIC; here the host routes it to node-1 (with BGP the
    // nodes announce it).
    if layout.overlay == Overlay::Bgp {
        return Ok(());
    }
    if let (Some(first), Ok(ip)) = (
        layout.nodes.first(),
        system::DEMO_EXTERNAL_IP.parse::<Ipv4Addr>(),
    ) {
        let net = Ipv4Net::new(ip, 32).map_err(|e| Error::Other(e.to_string()))?;
        net::replace_route(handle, net, first.ip).await?;
    }
    Ok(())
}

/// What `down` found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    pub processes: usize,
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub data_dir_removed: bool,
}

impl DownReport {
    pub fn is_empty(&self) -> bool {
        self.processes == 0 && self.namespaces.is_empty() && self.links.is_empty()
    }
    pub fn summary(&self) -> String {
        format!(
            "{} processes, {} namespaces, {} links{}",
            self.processes,
            self.namespaces.len(),
            self.links.len(),
            if self.data_dir_removed {
                ", data directory"
            } else {
                ""
            }
        )
    }
}

/// Finds a cluster's layout: the state file in the data dir (given, or recorded under /run/skiff, or the
/// default), else the layout the defaults give for that name (enough to find namespaces and the bridge).
pub fn find_layout(name: &str, data_dir: Option<&Path>) -> Result<Layout, Error> {
    layout::validate_name(name)?;
    let mut candidates = Vec::new();
    if let Some(d) = data_dir {
        candidates.push(d.join("cluster.json"));
    }
    candidates.push(layout::registry_file(name));
    candidates.push(layout::default_data_dir(name).join("cluster.json"));
    for c in candidates {
        if let Ok(text) = fs::read_to_string(&c) {
            if let Ok(l) = serde_json::from_str::<Layout>(&text) {
                if l.name == name && data_dir.is_none_or(|d| d == l.data_dir) {
                    return Ok(l);
                }
            }
        }
    }
    Layout::new(&layout::LayoutInput {
        name,
        nodes: 1,
        data_dir,
        node_network: defaults::NODE_NETWORK_CIDR
            .parse()
            .map_err(|_| Error::Other("bad default".into()))?,
        cluster_cidr: defaults::CLUSTER_POD_CIDR
            .parse()
            .map_err(|_| Error::Other("bad default".into()))?,
        service_cidr: defaults::SERVICE_CIDR
            .parse()
            .map_err(|_| Error::Other("bad default".into()))?,
        overlay: Overlay::Vxlan,
        encapsulation: layout::Encapsulation::None,
        bgp_hold_time: 9,
        second_network: None,
        lb_pool: defaults::LOAD_BALANCER_POOL,
        api_port: defaults::API_SERVER_PORT,
    })
}

/// `skiff down`: removes everything of the cluster; idempotent, works after a crash.
pub async fn down(opts: &DownOptions) -> Result<DownReport, Error> {
    let layout = find_layout(&opts.name, opts.data_dir.as_deref())?;
    let report = down_layout(&layout, !opts.keep_state).await?;
    eprintln!("cluster {:?} removed: {}", layout.name, report.summary());
    Ok(report)
}

async fn down_layout(layout: &Layout, remove_state: bool) -> Result<DownReport, Error> {
    let mut report = DownReport::default();
    let mut namespaces = net::list_netns(&layout.netns_prefix());
    namespaces.extend(pod_namespaces(layout));
    let layout_c = layout.clone();
    let ns_c = namespaces.clone();
    // Scanning /proc and waiting for processes to exit blocks: keep it off the async workers.
    report.processes = tokio::task::spawn_blocking(move || stop_processes(&layout_c, &ns_c))
        .await
        .map_err(|e| Error::Other(format!("stopping processes: {e}")))?;
    for ns in &namespaces {
        net::delete_netns(ns)?;
    }
    report.namespaces = namespaces;
    let handle = net::connect()?;
    // Deleting a namespace destroys the veth ends inside it and so their host peers; delete the host ends
    // anyway in case something still pins a namespace. Routes via the bridge vanish with it.
    let mut links: Vec<String> = layout.nodes.iter().map(|n| n.host_veth.clone()).collect();
    links.push(layout.bridge.clone());
    links.extend(layout.second_bridge());
    for link in links {
        if net::delete_link(&handle, &link).await? {
            report.links.push(link);
        }
    }
    if layout.overlay == Overlay::Bgp {
        bgp::cleanup(layout).await;
    }
    if remove_state {
        remove_from_user_kubeconfig(&layout.name);
        if layout.data_dir.exists() {
            fs::remove_dir_all(&layout.data_dir).map_err(|source| Error::Io {
                what: format!("removing {}", layout.data_dir.display()),
                source,
            })?;
            report.data_dir_removed = true;
        }
        let _ = fs::remove_file(layout::registry_file(&layout.name));
    }
    Ok(report)
}

/// Pod network namespaces the agents recorded (`<agent data dir>/pods/<uid>/state.json`, field `netns`)
/// that still exist: agents name them after the pod UID, not the cluster, so only their records tell.
fn pod_namespaces(layout: &Layout) -> Vec<String> {
    let mut out = Vec::new();
    for node in &layout.nodes {
        let Ok(dir) = fs::read_dir(layout.node_state_dir(node).join("pods")) else {
            continue;
        };
        for e in dir.flatten() {
            let Ok(text) = fs::read_to_string(e.path().join("state.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(ns) = record.get("netns").and_then(|v| v.as_str()) {
                // Only plain names under /run/netns: a record must not make us unmount anything else.
                if !ns.contains('/') && !ns.is_empty() && net::netns_path(ns).exists() {
                    out.push(ns.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Agents and everything they started, every process left in one of our namespaces, then the server.
fn stop_processes(layout: &Layout, namespaces: &[String]) -> usize {
    let mut agents: Vec<u32> = Vec::new();
    if let Ok(dir) = fs::read_dir(layout.run_dir()) {
        for e in dir.flatten() {
            let p = e.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("node-") && n.ends_with(".pid"))
            {
                agents.extend(procs::read_live_pid(&p));
            }
        }
    }
    let inodes: BTreeSet<u64> = namespaces
        .iter()
        .filter_map(|n| procs::netns_inode(&net::netns_path(n)))
        .collect();
    let mut victims: BTreeSet<u32> = agents.iter().copied().collect();
    victims.extend(procs::descendants(&agents));
    victims.extend(procs::pids_in_netns(&inodes));
    let mut count = victims.len();
    procs::terminate(&victims, Duration::from_secs(3));
    // Pods may have been started after the first scan (an agent racing with us): sweep again.
    let again = procs::pids_in_netns(&inodes);
    count += again.len();
    procs::terminate(&again, Duration::from_millis(500));
    if let Some(bird) = bgp::host_pid(layout) {
        count += 1;
        procs::terminate(&BTreeSet::from([bird]), Duration::from_secs(3));
    }
    if let Some(server) = procs::read_live_pid(&layout.server_pid_file()) {
        let mut s = BTreeSet::from([server]);
        s.extend(procs::descendants(&[server]));
        count += s.len();
        procs::terminate(&s, Duration::from_secs(3));
    }
    count
}

/// `skiff status`: is the server up, the nodes and their readiness, the pods in kube-system.
pub async fn status(opts: &StatusOptions) -> Result<String, Error> {
    let layout = find_layout(&opts.name, opts.data_dir.as_deref())?;
    let mut out = String::new();
    let server = procs::read_live_pid(&layout.server_pid_file());
    match server {
        Some(pid) => out.push_str(&format!(
            "server: running (pid {pid}) at {}\n",
            layout.api_url()
        )),
        None => {
            out.push_str(&format!(
                "server: not running (cluster {:?})\n",
                layout.name
            ));
            return Ok(out);
        }
    }
    out.push_str(&format!("kubeconfig: {}\n", layout.kubeconfig().display()));
    let client = skiff_runtime::client_from_kubeconfig(&layout.kubeconfig()).await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing nodes"))?;
    let bgp = layout.overlay == Overlay::Bgp;
    out.push_str(&format!(
        "{:<12} {:<9} {:<15} {:<16} {:<12}{}\n",
        "NODE",
        "STATUS",
        "INTERNAL-IP",
        "POD-CIDR",
        "AGENT",
        if bgp { " BGP" } else { "" }
    ));
    for n in &nodes.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_else(|| "<none>".into());
        let cidr = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .unwrap_or_else(|| "<none>".into());
        let agent = layout
            .nodes
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| procs::read_live_pid(&layout.agent_pid_file(l)))
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "not running".into());
        let st = if node_ready(n) { "Ready" } else { "NotReady" };
        let sessions = match layout.nodes.iter().find(|l| l.name == name) {
            Some(l) if bgp => {
                let s = bgp::sessions(&layout.node_bird_socket(l)).await;
                format!(" {}", bgp::summary(&s))
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{name:<12} {st:<9} {ip:<15} {cidr:<16} {agent:<12}{sessions}\n"
        ));
    }
    if bgp {
        let pid = bgp::host_pid(&layout)
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "not running".into());
        let sessions = bgp::host_sessions(&layout).await;
        out.push_str(&format!(
            "host BIRD: {pid}, table {}, sessions {}\n",
            layout.host_route_table(),
            bgp::summary(&sessions)
        ));
        if let Ok(list) = &sessions {
            for s in list {
                out.push_str(&format!("  {:<16} {:<6} {}\n", s.name, s.state, s.info));
            }
        }
    }
    let pods = Api::<Pod>::namespaced(client, "kube-system")
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing kube-system pods"))?;
    out.push_str(&format!(
        "{:<32} {:<10} {:<6} {:<15} {}\n",
        "KUBE-SYSTEM POD", "PHASE", "READY", "IP", "NODE"
    ));
    for p in &pods.items {
        let st = p.status.as_ref();
        out.push_str(&format!(
            "{:<32} {:<10} {:<6} {:<15} {}\n",
            p.metadata.name.as_deref().unwrap_or(""),
            st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"),
            pod_ready(p),
            st.and_then(|s| s.pod_ip.as_deref()).unwrap_or("<none>"),
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("<none>"),
        ));
    }
    Ok(out)
}
