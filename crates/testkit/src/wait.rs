//! Waiting for what a test expects to become true: poll until it holds, or fail with what was awaited.

use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Poll `check` until it returns `Some`, for at most `timeout`; the test fails naming `what` otherwise.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`eventually`] for async checks (an async closure, or a closure returning a future), sleeping on the
/// tokio timer between polls.
pub async fn eventually_async<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
