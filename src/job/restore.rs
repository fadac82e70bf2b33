//! A restore job: from a local archive (checked against its manifest), from an upload's URL, or
//! from the newest upload of a name on a server — an upload is downloaded resumably into the
//! state directory, checked against the server's MD5, extracted with [`crate::restore`], and its
//! download removed.

use std::path::PathBuf;

use super::upload_url;
use crate::client::get::{self, GetError, GetOptions, GetReport};
use crate::client::{Url, journal};
use crate::restore::{RestoreError, RestoreOptions, RestoreReport};

/// Where the archive comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A local archive.
    File(PathBuf),
    /// An upload: `url` of these options is its URL.
    Upload(GetOptions),
    /// The newest completed upload of `name` on the server whose endpoint is `url` of `server`
    /// (or, failing that, the newest whose name starts with it).
    Named {
        /// How to reach the server.
        server: GetOptions,
        /// The name asked for.
        name: String,
    },
}

/// Whether the `FILE|URL|NAME` argument of a restore is an upload's URL.
pub fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// Why a restore job failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreJobError {
    /// A URL that does not parse.
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The server has no completed upload of that name.
    #[error("no completed upload named '{name}' at {server}")]
    NoSuchUpload {
        /// The name asked for.
        name: String,
        /// The server's endpoint.
        server: String,
    },
    /// The upload carries no whole-file checksum, and extracting unverified was not asked for.
    #[error("{0} carries no whole-file checksum to verify against (use --no-verify to extract anyway)")]
    Unverifiable(String),
    /// The download folder cannot be created.
    #[error("cannot create {}: {source}", .path.display())]
    Downloads {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime for the download could not start.
    #[error(transparent)]
    Runtime(std::io::Error),
    /// Asking the server or downloading failed.
    #[error(transparent)]
    Get(#[from] GetError),
    /// The archive could not be checked or extracted.
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// What to restore, and how.
#[derive(Clone, Debug)]
pub struct RestoreJob {
    /// Where the archive comes from.
    pub origin: Origin,
    /// The folder to extract into.
    pub into: PathBuf,
    /// List instead of extracting.
    pub dry_run: bool,
    /// Extract a local archive without a manifest, or an upload without a checksum.
    pub no_verify: bool,
}

/// What a restore job did.
#[derive(Debug)]
pub struct Restored {
    /// The download, when the archive was an upload: its URL and what `get` reported.
    pub downloaded: Option<(String, GetReport)>,
    /// What the extraction did.
    pub report: RestoreReport,
}

/// Restores `job.origin` into `job.into`. A downloaded upload is removed once extracted.
pub fn run(job: &RestoreJob) -> Result<Restored, RestoreJobError> {
    let (archive, downloaded, verify) = match &job.origin {
        Origin::File(file) => (file.clone(), None, !job.no_verify),
        Origin::Upload(upload) => fetch(upload, job.no_verify)?,
        Origin::Named { server, name } => {
            let upload = GetOptions {
                url: find(server, name)?,
                ..server.clone()
            };
            fetch(&upload, job.no_verify)?
        }
    };
    let opts = RestoreOptions {
        archive: archive.clone(),
        into: job.into.clone(),
        dry_run: job.dry_run,
        verify,
    };
    let report = crate::restore::restore(&opts)?;
    if downloaded.is_some() {
        let _ = std::fs::remove_file(&archive);
    }
    Ok(Restored { downloaded, report })
}

/// The URL of the newest completed upload called `name` (or starting with it) on the server.
fn find(server: &GetOptions, name: &str) -> Result<Url, RestoreJobError> {
    let uploads = super::runtime()
        .map_err(RestoreJobError::Runtime)?
        .block_on(get::list(server))?;
    let found = uploads
        .iter()
        .rev()
        .find(|u| u.name == name)
        .or_else(|| uploads.iter().rev().find(|u| u.name.starts_with(name)))
        .ok_or_else(|| RestoreJobError::NoSuchUpload {
            name: name.to_string(),
            server: server.url.to_string(),
        })?;
    let url = upload_url(&server.url, &found.id);
    Url::parse(&url).map_err(|e| RestoreJobError::BadUrl {
        url,
        reason: e.to_string(),
    })
}

/// The archive to extract, the download and whether to check a manifest: downloads `upload`
/// into `STATE/restore/ID.download`, resumably, and insists on its checksum unless `no_verify`.
type Fetched = (PathBuf, Option<(String, GetReport)>, bool);

fn fetch(upload: &GetOptions, no_verify: bool) -> Result<Fetched, RestoreJobError> {
    let url = upload.url.to_string();
    let id = upload
        .url
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .unwrap_or_default();
    let dir = journal::default_state_dir().join("restore");
    std::fs::create_dir_all(&dir).map_err(|source| RestoreJobError::Downloads {
        path: dir.clone(),
        source,
    })?;
    let file = dir.join(format!("{id}.download"));
    let report = super::runtime()
        .map_err(RestoreJobError::Runtime)?
        .block_on(get::get(upload, &file))?;
    if !report.verified && !no_verify {
        return Err(RestoreJobError::Unverifiable(url));
    }
    tracing::info!(
        "downloaded {url}: {} bytes, md5 {} (matches the server's record)",
        report.bytes,
        report.md5
    );
    Ok((file, Some((url, report)), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_files_and_names() {
        assert!(is_url("https://h/files/x") && is_url("http://h/files/x"));
        assert!(!is_url("web-host-") && !is_url("/tmp/a.zip"));
    }
}
