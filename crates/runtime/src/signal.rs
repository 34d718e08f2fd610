//! The stop signal of a long-running component (the kubelet sends SIGTERM; a terminal sends SIGINT).

/// Install the SIGTERM and SIGINT handlers now, so that from here on neither kills the process at once,
/// and return a future that completes at the first of them.
pub fn terminated() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
