//! A request to stop the job early: Ctrl-C, or SIGTERM from `systemctl stop` or a cron wrapper's
//! timeout. A nightly job must end cleanly on either: stop at a point it can resume from, run its
//! failure hooks, and exit with 130.
//!
//! The sender waits for the signals itself (it stops between two network operations); packing
//! is plain blocking code, so it looks at [`requested`] before each entry and before each write
//! of the archive, and gives up with [`crate::pack::PackError::Interrupted`], leaving no archive
//! behind. [`watch_signals`] is what turns the signals into that request; a second signal ends
//! the process at once (exit 130, no hooks), for a job that must go now.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error a blocking stage stops with once a stop is requested (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("stop requested")]
pub struct Stopped;

/// `Err(Stopped)` once a stop is requested: for blocking loops to call as they go.
pub fn check() -> std::io::Result<()> {
    if requested() {
        Err(std::io::Error::other(Stopped))
    } else {
        Ok(())
    }
}

/// Asks every stage that can stop cleanly to stop.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// From now on, SIGINT and SIGTERM no longer end the process at once but call [`request`] (on a
/// thread of their own). Returns once the handlers are in place, so no signal is missed after.
pub fn watch_signals() -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("robusto-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let streams = signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
                let (mut interrupt, mut terminate) = match streams {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Counted here, not by the shared flag: the sender's own listener sets that flag
                // for the same first signal.
                let mut seen = false;
                loop {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                    if seen {
                        tracing::warn!("second signal: stopping now");
                        std::process::exit(130);
                    }
                    seen = true;
                    tracing::debug!("stop requested by a signal");
                    request();
                }
            });
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the signal thread ended before it was ready")))
}

/// Completes at the next SIGINT or SIGTERM (or at once if a stop was already requested), for
/// async code that can stop where it is. The handlers are in place when this returns.
pub fn signalled() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        if requested() {
            return;
        }
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        request();
    })
}

/// Completes at Ctrl-C or SIGTERM, for a server (`robusto serve`), which then shuts down; the
/// stop request of a job is left alone. The handlers are in place when this returns, so a signal
/// that arrives once the server has said where it listens is never missed.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
