//! `--to DIR`: a local folder as the destination. The folder is served in-process by
//! [`crate::serve`] (the `fs` store) on 127.0.0.1 with a port the kernel picks, and the upload
//! goes through exactly the same tus path as to a remote server. The port changes between runs,
//! so the job is keyed by the folder ([`job_key`]) and recorded upload URLs follow the new port.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::Url;

use crate::serve::Config;
use crate::serve::in_process::InProcess;

/// A folder served on 127.0.0.1 for the length of one job.
pub struct LocalServer {
    /// The tus creation endpoint, `http://127.0.0.1:PORT/files/`.
    pub endpoint: Url,
    server: InProcess,
}

/// The journal key of a folder destination: its absolute path.
pub fn job_key(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!("dir:{}", abs.display())
}

impl LocalServer {
    /// Creates `dir` if needed and serves it on 127.0.0.1:0.
    pub async fn start(dir: &Path) -> io::Result<LocalServer> {
        let server = InProcess::start(Config::new(dir.to_path_buf())).await?;
        let endpoint = Url::parse(&server.endpoint()).map_err(io::Error::other)?;
        tracing::debug!("serving {} on {endpoint}", dir.display());
        Ok(LocalServer { endpoint, server })
    }

    /// Where the completed upload at `url` was published in the folder.
    pub async fn published(&self, url: &str) -> Option<PathBuf> {
        self.server.published(url).await
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}
