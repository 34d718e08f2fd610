//! Run the API server standalone (manual testing and benchmarks):
//! `cargo run -p skiff-api --example serve -- --data-dir /tmp/x --listen 127.0.0.1:6443`
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: skiff_api::Options,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = skiff_api::ServerConfig::from_options(&cli.opts)?;
    let server = skiff_api::serve(cfg).await?;
    println!("kubeconfig: {}", server.kubeconfig_path.display());
    server.wait().await;
    Ok(())
}
