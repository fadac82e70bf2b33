//! A server running inside this process on 127.0.0.1, on a port the kernel picks, until it is
//! stopped: what `--to DIR` sends through, and what the tests start. Exactly the server
//! [`super::run`] serves, over the `fs` store.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::oneshot;

use super::{AppState, Config};

/// A running in-process server.
pub struct InProcess {
    /// Where it listens (127.0.0.1 and the port the kernel gave).
    pub addr: SocketAddr,
    /// Its state (the store, the per-upload locks).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl InProcess {
    /// Creates `config.data` if needed and serves it on 127.0.0.1:0.
    pub async fn start(config: Config) -> io::Result<InProcess> {
        tokio::fs::create_dir_all(&config.data).await?;
        let state = AppState::open(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(super::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(InProcess {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The tus creation endpoint, `http://127.0.0.1:PORT/files/`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/files/", self.addr)
    }

    /// Where the completed upload at `url` (its id is the last path segment) was published.
    pub async fn published(&self, url: &str) -> Option<PathBuf> {
        let id = url.trim_end_matches('/').rsplit('/').next()?;
        let name = self.state.store.info(id).await.ok()?.published?;
        Some(self.state.config.data.join("files").join(name))
    }

    /// Stops serving, once every request in flight has been answered (a body being received
    /// gives up, keeping or holding what arrived).
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // Dropped without `stop`: tell it to stop; it finishes on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
