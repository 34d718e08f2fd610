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
    Server(ServerArgs),
    /// The node agent (kubelet) of one node.
    Agent(AgentArgs),
    /// Cluster DNS (the `skiff/dns` image).
    Dns(DnsArgs),
    /// The demo HTTP server (the `ikubernetes/demoapp` image).
    Demoapp(skiff_node::demoapp::Options),
    /// Run as a CNI plugin (CNI_COMMAND etc. in the environment, network configuration on stdin).
    Cni,
}

/// Every component names its argument struct `Options` and its fields plainly (`cluster_cidr`), and clap
/// derives argument ids from field names and a group from the struct name: flattening two components into
/// one subcommand would clash. This wraps one component's options: its arguments are added under ids with
/// a prefix (their `--long` names are unchanged and already distinct), and the component's own derive parses
/// the arguments given on the command line back into its `Options`.
macro_rules! component_args {
    ($wrapper:ident, $inner:ty, $prefix:literal) => {
        struct $wrapper($inner);

        impl $wrapper {
            fn inner_command() -> clap::Command {
                <$inner as clap::Args>::augment_args(clap::Command::new("component"))
            }
        }

        impl clap::FromArgMatches for $wrapper {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
                #[derive(clap::Parser)]
                struct Inner {
                    #[command(flatten)]
                    options: $inner,
                }
                let mut argv = vec!["component".to_string()];
                for arg in Self::inner_command().get_arguments() {
                    let id = format!("{}{}", $prefix, arg.get_id());
                    if m.value_source(&id) != Some(clap::parser::ValueSource::CommandLine) {
                        continue;
                    }
                    let Some(long) = arg.get_long() else { continue };
                    if arg.get_action().takes_values() {
                        for v in m.get_raw(&id).into_iter().flatten() {
                            argv.push(format!("--{long}={}", v.to_string_lossy()));
                        }
                    } else {
                        argv.push(format!("--{long}"));
                    }
                }
                <Inner as clap::Parser>::try_parse_from(argv).map(|i| $wrapper(i.options))
            }
            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(m)?;
                Ok(())
            }
        }

        impl clap::Args for $wrapper {
            fn augment_args(mut cmd: clap::Command) -> clap::Command {
                for arg in Self::inner_command().get_arguments() {
                    // clap ids are &'static str without its "string" feature; these few are built once.
                    let id: &'static str =
                        Box::leak(format!("{}{}", $prefix, arg.get_id()).into_boxed_str());
                    cmd = cmd.arg(arg.clone().id(id));
                }
                cmd
            }
            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

component_args!(ApiOptions, skiff_api::Options, "api.");
component_args!(
    ControllerOptions,
    skiff_controllers::Options,
    "controllers."
);
component_args!(NodeOptions, skiff_node::Options, "node.");
component_args!(ProxyOptions, skiff_proxy::Options, "proxy.");
component_args!(
    OverlayOptions,
    skiff_cni::overlay::OverlayOptions,
    "overlay."
);
component_args!(DnsOptions, skiff_dns::Options, "dns.");

#[derive(Args)]
struct ServerArgs {
    #[command(flatten)]
    api: ApiOptions,
    #[command(flatten)]
    controllers: ControllerOptions,
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
    node: NodeOptions,
    #[command(flatten)]
    overlay: OverlayOptions,
    #[command(flatten)]
    proxy: ProxyOptions,
}

#[derive(Args)]
struct DnsArgs {
    #[command(flatten)]
    kubeconfig: KubeconfigArg,
    #[command(flatten)]
    dns: DnsOptions,
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
    let cli = Cli::parse();
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
            let config = skiff_api::ServerConfig::from_options(&args.api.0)?;
            let server = skiff_api::serve(config).await?;
            let client = skiff_runtime::client_from_kubeconfig(&server.kubeconfig_path).await?;
            let controllers = tokio::spawn(skiff_controllers::run(client, args.controllers.0));
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
            let mut kubelet =
                tokio::spawn(skiff_node::run(client.clone(), node.clone(), args.node.0));
            let mut overlay = tokio::spawn(skiff_cni::overlay::run(
                client.clone(),
                node.clone(),
                args.overlay.0,
            ));
            let mut proxy = tokio::spawn(skiff_proxy::run(client, node, args.proxy.0));
            let failure = tokio::select! {
                r = &mut kubelet => r.context("node agent task")?.context("node agent").err(),
                r = &mut overlay => r.context("overlay task")?.context("overlay").err(),
                r = &mut proxy => r.context("proxy task")?.context("proxy").err(),
            };
            kubelet.abort();
            overlay.abort();
            proxy.abort();
            return Err(failure.unwrap_or_else(|| anyhow::anyhow!("an agent component stopped")));
        }
        Command::Dns(args) => {
            let client = client(&args.kubeconfig).await?;
            skiff_dns::run(client, args.dns.0).await?;
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
