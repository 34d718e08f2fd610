//! The `skiff` binary: argument parsing and wiring only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use skiff_runtime::NodeIdentity;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Kubernetes networking, whole, in one binary"
)]
struct Cli {
    /// Read flags from this YAML or JSON file (`flag-name: value`); flags on the command line win.
    #[arg(long = skiff_runtime::config::CONFIG_FLAG, global = true, value_name = "FILE")]
    _config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster on this machine: control plane in the host, nodes in network namespaces.
    Up(skiff_cluster::Options),
    /// Stop a cluster started by `skiff up` and remove everything it made.
    Down(skiff_cluster::DownOptions),
    /// Show a cluster's server, nodes and system pods.
    Status(skiff_cluster::StatusOptions),
    /// The control plane: API server and controllers in one process.
    Server(Box<ServerArgs>),
    /// The node agent (kubelet) of one node.
    Agent(Box<AgentArgs>),
    /// Cluster DNS (the `skiff/dns` image).
    Dns(DnsArgs),
    /// The demo HTTP server (the `ikubernetes/demoapp` image).
    Demoapp(skiff_node::demoapp::Options),
    /// Run as a CNI plugin (CNI_COMMAND etc. in the environment, network configuration on stdin).
    Cni,
    /// NetworkPolicy tools.
    #[command(subcommand)]
    Netpol(NetpolCommand),
}

#[derive(Subcommand)]
enum NetpolCommand {
    /// Explain whether a new connection FROM → TO on PORT[/PROTO] is allowed, and by which policies and rules
    /// (ends as namespace/pod or an IPv4 address; the same model the data plane enforces).
    Why {
        from: String,
        to: String,
        /// Destination port, optionally with /TCP, /UDP or /SCTP (TCP by default).
        port: String,
        /// Kubeconfig of the cluster.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
    },
}

#[derive(Args)]
struct ServerArgs {
    #[command(flatten)]
    api: skiff_api::Options,
    #[command(flatten)]
    controllers: skiff_controllers::Options,
}

#[derive(Args)]
struct KubeconfigArg {
    /// Kubeconfig of the cluster to join.
    #[arg(long)]
    kubeconfig: PathBuf,
}

#[derive(Args)]
struct AgentArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    /// This node's name.
    #[arg(long)]
    node_name: String,
    /// This node's address on the node network (its InternalIP).
    #[arg(long)]
    node_ip: IpAddr,
    #[command(flatten)]
    node: skiff_node::Options,
    /// How pods reach other nodes: vxlan / host-gw routes programmed by the agent, or bgp (BIRD learns and
    /// installs them) [default: --overlay-mode].
    #[arg(long, value_enum)]
    backend: Option<skiff_cni::Backend>,
    #[command(flatten)]
    overlay: skiff_cni::overlay::OverlayOptions,
    #[command(flatten)]
    bgp: skiff_cni::bgp::BgpOptions,
    #[command(flatten)]
    proxy: skiff_proxy::Options,
    #[command(flatten)]
    netpol: skiff_netpol::agent::Options,
}

#[derive(Args)]
struct DnsArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    #[command(flatten)]
    dns: skiff_dns::Options,
}

fn main() {
    // CNI plugins are exec'd by their type name: a `skiff-cni` symlink to this binary is the plugin.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "skiff-cni")
    {
        std::process::exit(skiff_cni::plugin_main());
    }
    let argv = match skiff_runtime::config::expand_config_flags(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    if let Command::Cni = cli.command {
        std::process::exit(skiff_cni::plugin_main());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Servers and agents started by `skiff up` log to files: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn client(k: &KubeconfigArg) -> anyhow::Result<kube::Client> {
    Ok(skiff_runtime::client_from_kubeconfig(&k.kubeconfig).await?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(opts) => {
            skiff_cluster::up(&opts).await?;
        }
        Command::Down(opts) => {
            skiff_cluster::down(&opts).await?;
        }
        Command::Status(opts) => {
            print!("{}", skiff_cluster::status(&opts).await?);
        }
        Command::Server(args) => {
            let config = skiff_api::ServerConfig::from_options(&args.api)?;
            let server = skiff_api::serve(config).await?;
            let client = skiff_runtime::client_from_kubeconfig(&server.kubeconfig_path).await?;
            let controllers = tokio::spawn(skiff_controllers::run(client, args.controllers));
            tokio::select! {
                _ = server.wait() => anyhow::bail!("the API server stopped"),
                res = controllers => {
                    res.context("controllers task")??;
                    anyhow::bail!("the controllers stopped");
                }
            }
        }
        Command::Agent(args) => {
            let client = client(&args.kubeconfig).await?;
            let node = NodeIdentity {
                name: args.node_name,
                ip: args.node_ip,
            };
            // One process per node; if any part fails the node is broken: fail fast and let the
            // supervisor (skiff up, systemd) see it.
            let agent_data_dir = args.node.data_dir.clone();
            let netpol = skiff_netpol::agent::Enforcement::new(&node);
            let mut kubelet = tokio::spawn(skiff_node::run_gated(
                client.clone(),
                node.clone(),
                args.node,
                Some(netpol.gate()),
            ));
            let mut netpol = tokio::spawn(netpol.run(
                client.clone(),
                args.netpol,
                skiff_netpol::apply::Runner::new(),
            ));
            let mut overlay_options = args.overlay;
            let mut overlay = match args.backend {
                Some(skiff_cni::Backend::Bgp) => {
                    let (c, n, o) = (client.clone(), node.clone(), args.bgp);
                    let cidr = overlay_options.cluster_cidr;
                    tokio::spawn(async move {
                        skiff_cni::bgp::run(c, n, o, cidr, agent_data_dir)
                            .await
                            .map_err(anyhow::Error::from)
                    })
                }
                backend => {
                    match backend {
                        Some(skiff_cni::Backend::Vxlan) => {
                            overlay_options.mode = skiff_cni::overlay::Mode::Vxlan
                        }
                        Some(skiff_cni::Backend::HostGw) => {
                            overlay_options.mode = skiff_cni::overlay::Mode::HostGw
                        }
                        _ => {}
                    }
                    let (c, n) = (client.clone(), node.clone());
                    tokio::spawn(async move {
                        skiff_cni::overlay::run(c, n, overlay_options)
                            .await
                            .map_err(anyhow::Error::from)
                    })
                }
            };
            let mut proxy = tokio::spawn(skiff_proxy::run(client, node, args.proxy));
            let failure = tokio::select! {
                r = &mut kubelet => r.context("node agent task")?.context("node agent").err(),
                r = &mut overlay => r.context("overlay task")?.context("overlay").err(),
                r = &mut proxy => r.context("proxy task")?.context("proxy").err(),
                r = &mut netpol => r.context("network policy task")?.context("network policy").err(),
            };
            kubelet.abort();
            overlay.abort();
            proxy.abort();
            netpol.abort();
            return Err(failure.unwrap_or_else(|| anyhow::anyhow!("an agent component stopped")));
        }
        Command::Netpol(NetpolCommand::Why {
            from,
            to,
            port,
            kubeconfig,
        }) => {
            let client = skiff_runtime::client_from_kubeconfig(&kubeconfig).await?;
            print!(
                "{}",
                skiff_netpol::query::why(client, &from, &to, &port).await?
            );
        }
        Command::Dns(args) => {
            let client = client(&args.kubeconfig).await?;
            skiff_dns::run(client, args.dns).await?;
        }
        Command::Demoapp(opts) => {
            skiff_node::demoapp::run(
                opts.listen(),
                std::time::Duration::from_secs_f64(opts.shutdown_delay.max(0.0)),
            )
            .await?;
        }
        Command::Cni => unreachable!("handled before the runtime starts"),
    }
    Ok(())
}
