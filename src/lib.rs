//! robusto gets whole folders safely onto a server over bad links.
//!
//! The data flow, one module per stage:
//!
//! 1. [`pack`] walks the chosen paths ([`pack::walk`]) into [`pack::entry`]s, reads each file
//!    exactly as it was when opened ([`pack::source`]) and writes them into a zip
//!    ([`pack::zip`]) or tar ([`pack::archive`]) archive, optionally compressed
//!    ([`pack::compress`]), into a staging file ([`pack::staging`]: temp → fsync → rename).
//! 2. On the way to disk the bytes pass a hashing writer ([`fingerprint`]) that computes the MD5
//!    of the whole archive and of every chunk in the same pass; the result is the [`manifest`],
//!    written atomically beside the archive.
//! 3. The sender uploads the archive chunk by chunk over tus 1.0.0 ([`protocol`]), each chunk
//!    carrying its MD5 so the server can refuse a damaged one without losing the good ones.
//!    [`client`] does this resumably: the send job, a journal, one retry loop, HEAD to resync,
//!    held chunks after a cut, throttling; and reads uploads back (download, status, listing).
//! 4. The server ([`serve`]) checks every chunk and the whole file, stores durably, and reports
//!    status.
//!
//! Around the stages:
//!
//! - [`job`]: a command's work from start to end — the push job (lock, hooks, pack, send,
//!   summary), a send to a URL or a local folder, a restore from a file, a URL or an upload's
//!   name, a prune — and [`job::Exit`], how a command ends.
//! - [`config`]: profiles of `robusto.toml`, read into plain data the command line applies.
//! - [`hooks`]: the shell commands a profile runs around its job.
//! - [`restore`]: checks an archive against its manifest and extracts it, never outside the
//!   target folder.
//! - [`retention`]: which completed uploads a last/daily/weekly policy keeps.
//! - [`progress`]: carries events to whatever reporter the command line chose; the library never
//!   prints.
//! - [`stop`]: Ctrl-C and SIGTERM as a request to stop at a point the job resumes from.
//! - [`durable`]: the write-temp/fsync/rename discipline every stage shares.
//! - [`writeback`]: streams big writes to disk through a small, recycled piece of page cache.
//! - [`units`]: sizes, rates and durations as people type them.

pub mod client;
pub mod config;
pub mod durable;
pub mod fingerprint;
/// Fuzz targets for every parser of outside input (used by `fuzz/` and the regression replay in
/// `tests/fuzz_regressions.rs`); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod growing;
pub mod hooks;
pub mod incremental;
pub mod job;
pub mod manifest;
pub mod md5_engine;
pub mod pack;
pub mod progress;
pub mod protocol;
pub mod restore;
pub mod retention;
pub mod serve;
pub mod stop;
pub mod units;
pub mod writeback;

/// An error and its causes on one line, leaving out a cause whose text the message already
/// carries (most of robusto's errors name their cause themselves): for log lines and retry
/// reasons.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = c.source();
    }
    line
}
