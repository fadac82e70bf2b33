//! A prune job: list a server's completed uploads, decide with [`crate::retention`] which ones a
//! policy keeps, and delete the others (or, on a dry run, only say so), upload by upload.

use super::upload_url;
use crate::client::Url;
use crate::client::get::{self, GetError, GetOptions};
use crate::retention::{self, Decision, Policy};

/// What became of one upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The policy keeps it.
    Kept,
    /// The policy lets it go, and this is a dry run.
    WouldRemove,
    /// Deleted from the server.
    Removed,
}

/// Why a prune job stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(std::io::Error),
    /// An upload's URL does not parse.
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// Listing or deleting failed; uploads already deleted stay deleted.
    #[error(transparent)]
    Get(#[from] GetError),
}

/// How many uploads were kept and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Uploads kept.
    pub kept: usize,
    /// Uploads deleted.
    pub removed: usize,
}

/// Applies `policy` to the uploads of the server at `server.url`, deleting what it does not keep
/// unless `dry_run`. `each` hears about every upload as it is dealt with, in the order of
/// [`retention::decide`].
pub fn run(
    server: &GetOptions,
    policy: Policy,
    dry_run: bool,
    each: &mut dyn FnMut(&Decision, Action),
) -> Result<Pruned, PruneError> {
    let rt = super::runtime().map_err(PruneError::Runtime)?;
    let uploads = rt.block_on(get::list(server))?;
    let mut pruned = Pruned::default();
    for d in retention::decide(uploads, policy) {
        let url = upload_url(&server.url, &d.upload.id);
        let url = Url::parse(&url).map_err(|e| PruneError::BadUrl {
            url,
            reason: e.to_string(),
        })?;
        let action = if d.keep() {
            pruned.kept += 1;
            Action::Kept
        } else if dry_run {
            Action::WouldRemove
        } else {
            rt.block_on(get::delete(server, &url))?;
            pruned.removed += 1;
            Action::Removed
        };
        each(&d, action);
    }
    Ok(pruned)
}
