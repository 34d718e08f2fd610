//! The Skiff API server (kube-apiserver's job): REST + watch over HTTPS for kubectl and kube-rs.
//!
//! Contract used by the binary and by other crates' tests:
//! - `Options` (clap args of `skiff server`), `ServerConfig`, `serve(config) -> ApiServer`.
//! - `testing::TestServer::start()` starts a server on an ephemeral loopback port with a temporary store and
//!   returns its URL, a kubeconfig path and a kube-rs client (for tests of other crates).
