//! Running commands from tests: failures say which command failed and what it printed.

use std::process::{Command, Output};

/// True when the test runs as root (kernel tests skip with a message otherwise).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Run `args[0]` with the rest as arguments; fails the test unless it exits 0. Returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command; true when it exits 0 (a spawn failure is false).
pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A command's exit status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
