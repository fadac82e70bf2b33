//! Jobs: the work of one client command from start to end, put together from the stages — the
//! push job ([`push`]: lock, hooks, pack, send, summary), a send to a URL or a local folder
//! ([`client`]), a restore from a file, an upload's URL or its name on a server ([`restore`]), and
//! the prune of a server's uploads ([`prune`]). A job reports through [`crate::progress`] and
//! returns what the command line prints; it never prints itself. [`Exit`] is how a job ends.

pub mod local;
pub mod prune;
pub mod push;
pub mod restore;
pub mod send;
pub mod staging;

use std::future::Future;

/// How a command ends, as its exit code (README "Exit codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done,
    /// 1: failed.
    Failed,
    /// 2: a flag, an argument or a setting makes no sense.
    Usage,
    /// 3: done, but some files were skipped (they are named in the log and the manifest).
    Skipped,
    /// 75: stopped unfinished at a point the same command continues from.
    Resumable,
    /// 130: stopped by SIGINT or SIGTERM.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Skipped => 3,
            Exit::Resumable => 75,
            Exit::Interrupted => 130,
        }
    }
}

/// The runtime a client command runs its network work on: two worker threads (the work is one
/// transfer at a time; blocking reads and hashing run on tokio's blocking pool).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Runs `f` on a fresh [`runtime`], then drops the runtime without waiting for blocking work
/// still running on it: after Ctrl-C or SIGTERM a file being fingerprinted or read must not hold
/// up the exit (and the hooks) for minutes.
pub fn block_on_then_drop<F: Future>(f: F) -> std::io::Result<F::Output> {
    let rt = runtime()?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    Ok(out)
}

/// The URL of upload `id` under `endpoint` (`…/files/`), kept relative to the endpoint so that a
/// server behind a path prefix (`https://host/backup/files/`) is addressed right.
pub fn upload_url(endpoint: &crate::client::Url, id: &str) -> String {
    format!("{}/{id}", endpoint.as_str().trim_end_matches('/'))
}

pub use crate::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_stay_under_the_endpoint() {
        let endpoint = crate::client::Url::parse("https://h/backup/files/").unwrap();
        assert_eq!(upload_url(&endpoint, "abc"), "https://h/backup/files/abc");
    }

    #[test]
    fn the_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Says(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Hides(#[source] std::io::Error);
        assert_eq!(error_chain(&Says(std::io::Error::other("inner"))), "outer: inner");
        assert_eq!(error_chain(&Hides(std::io::Error::other("inner"))), "outer: inner");
    }
}
