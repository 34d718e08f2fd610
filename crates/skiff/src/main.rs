//! The `skiff` binary: argument parsing and wiring only.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "skiff", version, about = "Kubernetes networking, whole, in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {}
}
