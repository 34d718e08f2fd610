//! The skiff-cni plugin as its own executable (tests and users who install it without the skiff binary).
fn main() {
    std::process::exit(skiff_cni::plugin_main());
}
