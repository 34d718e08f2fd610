//! Test helpers shared by Skiff's crates (a dev-dependency only): unique names so that concurrent runs never
//! collide, commands that fail the test loudly, network namespaces that are removed on drop (also when an
//! assertion fails midway), and waiting for a condition with a deadline and a message.

pub mod cmd;
pub mod netns;
pub mod wait;

pub use cmd::{is_root, sh, sh_ok, text};
pub use netns::Netns;
pub use wait::{eventually, eventually_async};

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique on this machine for this run: `prefix` + pid + a per-process counter + clock noise.
/// Kernel names are short (15 bytes for links): keep `prefix` to a few characters.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{:x}", std::process::id(), nanos & 0xfff)
}

/// A TCP port that was free a moment ago (bound to 0.0.0.0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}
