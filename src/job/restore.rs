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
    /// An incremental chain the upload needs is broken on the server.
    #[error(transparent)]
    Chain(#[from] crate::incremental::chain::ChainError),
    /// SIGINT or SIGTERM stopped the extraction; nothing was moved into the target folder.
    #[error("interrupted: nothing of the restore was moved into place")]
    Interrupted,
    /// A local incremental archive cannot be restored alone.
    #[error(
        "{file} is level {level} of the incremental chain {chain}: restore it by name from the server \
         (robusto restore NAME --from URL), which fetches and applies the whole chain"
    )]
    LoneIncremental {
        /// The archive.
        file: String,
        /// Its level.
        level: u32,
        /// Its chain.
        chain: String,
    },
}

impl RestoreJobError {
    /// Whether running the same command again may succeed (exit 75): the server stayed out of
    /// reach past the retry budget.
    pub fn is_resumable(&self) -> bool {
        matches!(self, RestoreJobError::Get(e) if e.is_resumable())
    }
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
    /// With a name: the newest upload completed at or before this time (seconds since the
    /// epoch), for the tree as it was then (`--at`).
    pub at: Option<u64>,
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
    let (archive, chain, downloaded, verify) = match &job.origin {
        Origin::File(file) => {
            if let Ok(m) = crate::manifest::Manifest::read_for(file)
                && let Some(link) = m.incremental.filter(|l| l.level > 0)
            {
                return Err(RestoreJobError::LoneIncremental {
                    file: file.display().to_string(),
                    level: link.level,
                    chain: link.chain,
                });
            }
            (file.clone(), Vec::new(), None, !job.no_verify)
        }
        Origin::Upload(upload) => {
            let (archive, downloaded, verify) = fetch(upload, job.no_verify)?;
            (archive, Vec::new(), downloaded, verify)
        }
        Origin::Named { server, name } => {
            let links = find(server, name, job.at)?;
            // every link is downloaded and checked against the server's MD5 before any is applied
            let mut files = Vec::with_capacity(links.len());
            let mut last = None;
            for url in links {
                let upload = GetOptions { url, ..server.clone() };
                let (file, downloaded, _) = fetch(&upload, job.no_verify)?;
                files.push(file);
                last = downloaded;
            }
            let archive = files.pop().ok_or_else(|| RestoreJobError::NoSuchUpload {
                name: name.clone(),
                server: server.url.to_string(),
            })?;
            (archive, files, last, false)
        }
    };
    let opts = RestoreOptions {
        archive: archive.clone(),
        into: job.into.clone(),
        dry_run: job.dry_run,
        verify,
        chain: chain.clone(),
    };
    // From here on SIGINT and SIGTERM stop the extraction between two entries (or two writes of
    // one), and the staging folder goes with everything in it: the target folder stays as it was.
    if !opts.dry_run
        && let Err(e) = crate::stop::watch_signals()
    {
        tracing::warn!("cannot watch for SIGINT/SIGTERM ({e}); a signal will leave the staging folder behind");
    }
    let report = match crate::restore::restore(&opts) {
        Err(_) if crate::stop::requested() => return Err(RestoreJobError::Interrupted),
        other => other?,
    };
    if downloaded.is_some() {
        for file in chain.iter().chain([&archive]) {
            let _ = std::fs::remove_file(file);
        }
    }
    Ok(Restored { downloaded, report })
}

/// The URLs of what restoring the newest completed upload called `name` (or starting with it),
/// completed at or before `at`, takes: its incremental chain, full archive first, or just the
/// upload when it stands alone.
fn find(server: &GetOptions, name: &str, at: Option<u64>) -> Result<Vec<Url>, RestoreJobError> {
    let uploads = super::runtime()
        .map_err(RestoreJobError::Runtime)?
        .block_on(get::list(server))?;
    let in_time = |u: &&crate::protocol::Listed| at.is_none_or(|t| u.completed.is_some_and(|c| c <= t));
    // the newest: by completion time, then by name (names carry their date and time)
    let newest = |exact: bool| {
        uploads
            .iter()
            .filter(in_time)
            .filter(|u| {
                if exact {
                    u.name == name
                } else {
                    u.name.starts_with(name)
                }
            })
            .max_by(|a, b| (a.completed, &a.name).cmp(&(b.completed, &b.name)))
    };
    let found = newest(true)
        .or_else(|| newest(false))
        .ok_or_else(|| RestoreJobError::NoSuchUpload {
            name: name.to_string(),
            server: server.url.to_string(),
        })?;
    let links = crate::incremental::chain::links_of(found, &uploads)?;
    if links.len() > 1 {
        let names: Vec<&str> = links.iter().map(|u| u.name.as_str()).collect();
        tracing::info!(
            "{} is an incremental: restoring its chain {}",
            found.name,
            names.join(" → ")
        );
    }
    links
        .iter()
        .map(|u| {
            let url = upload_url(&server.url, &u.id);
            Url::parse(&url).map_err(|e| RestoreJobError::BadUrl {
                url,
                reason: e.to_string(),
            })
        })
        .collect()
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
