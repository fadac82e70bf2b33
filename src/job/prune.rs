//! A prune job: list a server's completed uploads, decide with [`crate::retention`] which ones a
//! policy keeps, and delete the others (or, on a dry run, only say so), upload by upload.
//!
//! An incremental chain ([`crate::incremental::chain`]) is one backup to the policy, dated by its
//! newest link: it is kept whole or removed whole, newest link first, so that no kept upload ever
//! loses a link it depends on, and a prune cut short leaves a chain that still restores up to its
//! remaining newest link.

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

impl PruneError {
    /// Whether running the same command again may succeed (exit 75): the server stayed out of
    /// reach past the retry budget (uploads already deleted stay deleted).
    pub fn is_resumable(&self) -> bool {
        matches!(self, PruneError::Get(e) if e.is_resumable())
    }
}

/// How many uploads were kept and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Uploads kept.
    pub kept: usize,
    /// Uploads deleted.
    pub removed: usize,
}

/// [`retention::decide`] with each chain as one unit, dated by its newest link; the decision of a
/// chain is its every link's, newest link first.
pub fn decide_by_chain(uploads: Vec<crate::protocol::Listed>, policy: Policy) -> Vec<Decision> {
    use crate::incremental::Link;
    use std::collections::HashMap;
    let level = |u: &crate::protocol::Listed| Link::from_metadata(&u.metadata).map_or(0, |l| l.level);
    let mut members: HashMap<String, Vec<crate::protocol::Listed>> = HashMap::new();
    let mut units = Vec::new();
    for (_, mut links) in crate::incremental::chain::units(&uploads) {
        links.sort_by_key(|u| std::cmp::Reverse((level(u), retention::completed_ns(u))));
        let Some(newest) = links.first() else { continue };
        units.push((*newest).clone());
        members.insert(newest.id.clone(), links.into_iter().cloned().collect());
    }
    let mut out = Vec::new();
    for d in retention::decide(units, policy) {
        let keep = d.keep();
        for link in members.remove(&d.upload.id).unwrap_or_default() {
            let mut reasons = if keep { d.reasons.clone() } else { Vec::new() };
            if keep && link.id != d.upload.id {
                reasons.push("chain");
            }
            out.push(Decision {
                upload: link,
                group: d.group.clone(),
                reasons,
            });
        }
    }
    out
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
    for d in decide_by_chain(uploads, policy) {
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
