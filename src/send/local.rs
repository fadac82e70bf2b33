//! `--to DIR`: a local folder as the destination. The folder is served in-process by
//! [`crate::serve`] (the `fs` store) on 127.0.0.1 with a port the kernel picks, and the upload
//! goes through exactly the same tus path as to a remote server. The port changes between runs,
//! so the job is keyed by the folder ([`job_key`]) and recorded upload URLs follow the new port.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::Url;
use tokio::sync::oneshot;

use crate::serve::{self, AppState, Config};

/// A folder served on 127.0.0.1 for the length of one job.
pub struct LocalServer {
    /// The tus creation endpoint, `http://127.0.0.1:PORT/files/`.
    pub endpoint: Url,
    dir: PathBuf,
    state: AppState,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

/// The journal key of a folder destination: its absolute path.
pub fn job_key(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!("dir:{}", abs.display())
}

impl LocalServer {
    /// Creates `dir` if needed and serves it on 127.0.0.1:0.
    pub async fn start(dir: &Path) -> io::Result<LocalServer> {
        tokio::fs::create_dir_all(dir).await?;
        let state = AppState::open(Config::new(dir.to_path_buf()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let endpoint = Url::parse(&format!("http://{addr}/files/")).map_err(io::Error::other)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        tracing::debug!("serving {} on {endpoint}", dir.display());
        Ok(LocalServer {
            endpoint,
            dir: dir.to_path_buf(),
            state,
            stop,
            task,
        })
    }

    /// Where the completed upload at `url` was published in the folder.
    pub async fn published(&self, url: &str) -> Option<PathBuf> {
        let id = url.trim_end_matches('/').rsplit('/').next()?;
        let info = self.state.store.info(id).await.ok()?;
        let name = info.published?;
        let direct = self.dir.join(&name);
        if direct.exists() {
            Some(direct)
        } else {
            Some(self.dir.join("files").join(name))
        }
    }

    /// Stops serving.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
