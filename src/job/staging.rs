//! `robusto push`: pack into a staging file in the state directory, then send it. The staging
//! folder is keyed by the paths, the pack flags and the target, so a rerun after a kill during
//! sending finds the finished archive (its manifest is written last) and resumes the upload
//! without packing again; a kill during packing means packing again. After the server confirms
//! completion the staging file and its manifest are removed (unless kept).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::journal::{self, JournalError};
use crate::durable;
use crate::fingerprint::Md5;
use crate::manifest::{self, Manifest, Skipped};
use crate::pack::{self, PackError, PackOptions};
use crate::progress::Progress;

/// The default `--name` template (the extension follows the format).
pub const DEFAULT_NAME: &str = "{host}-{date}T{time}";

/// What went wrong preparing a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Another process runs the same push, or the state directory is unusable.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The staging folder could not be used.
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A finished staging archive, ready to send; holds the push lock until dropped.
pub struct Staged {
    /// The archive.
    pub archive: PathBuf,
    /// The upload's name (resolved `--name` template, fixed at the first run).
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether an archive from an earlier run was reused (no packing).
    pub reused: bool,
    dir: PathBuf,
    _lock: fs::File,
}

impl Staged {
    /// Files left out while packing.
    pub fn skipped(&self) -> &[Skipped] {
        &self.manifest.source.skipped
    }

    /// Removes the staging archive, its manifest and folder (after confirmed completion).
    pub fn remove(self) -> Result<(), PushError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PushError::Io { path, source }
        };
        for p in [manifest::path_for(&self.archive), self.archive.clone()] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        remove_state(&self.dir);
        Ok(())
    }
}

/// Removes a staging folder's state and lock files, then the folder if nothing else is in it.
fn remove_state(dir: &Path) {
    let _ = fs::remove_file(dir.join(STATE));
    let _ = fs::remove_file(dir.join(LOCK));
    let _ = fs::remove_dir(dir);
}

const STATE: &str = "push.json";
const LOCK: &str = "push.lock";

#[derive(Serialize, Deserialize)]
struct PushState {
    name: String,
}

/// The host name, for `{host}`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() { "host".into() } else { name }
}

/// Resolves a `--name` template: `{host}`, `{date}` (YYYY-MM-DD, UTC), `{time}` (HHMMSS, UTC),
/// `{label}` (the first path's name). A template with no extension gets the format's.
pub fn resolve_name(template: &str, paths: &[PathBuf], extension: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let date = format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day());
    let time = format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second());
    let label = paths
        .first()
        .and_then(|p| {
            fs::canonicalize(p)
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| "backup".into());
    let mut name = template
        .replace("{host}", &host_name())
        .replace("{date}", &date)
        .replace("{time}", &time)
        .replace("{label}", &label);
    name = name.replace(['/', '\\', '\0'], "_");
    if !name.ends_with(&format!(".{extension}")) {
        name = format!("{name}.{extension}");
    }
    name
}

/// The staging folder of a push: keyed by the paths, the pack flags and the target.
pub fn staging_dir(state_dir: &Path, pack: &PackOptions, target: &str) -> PathBuf {
    let paths: Vec<PathBuf> = pack
        .paths
        .iter()
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let key = format!(
        "{paths:?}|{:?}|{:?}|{}|{:?}|{target}",
        pack.format, pack.compression, pack.chunk_size, pack.walk
    );
    state_dir.join("staging").join(&Md5::of(key.as_bytes()).hex()[..20])
}

/// A push's staging folder, locked, with the upload's name fixed: ready to pack into, or
/// holding the archive a killed run finished.
pub struct Prepared {
    /// The archive's path.
    pub archive: PathBuf,
    /// The upload's name (resolved `--name` template, fixed at the first run).
    pub name: String,
    /// The manifest of the archive an earlier run finished, if there is one.
    pub finished: Option<Manifest>,
    dir: PathBuf,
    lock: fs::File,
}

/// Locks the staging folder of a push and fixes its upload's name; finds the archive a killed
/// run finished, if any.
pub fn prepare(
    state_dir: &Path,
    pack_opts: &PackOptions,
    target: &str,
    name_template: &str,
) -> Result<Prepared, PushError> {
    let dir = staging_dir(state_dir, pack_opts, target);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PushError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let lock = journal::lock(&dir.join(LOCK))?;
    let ext = pack_opts.format.extension(pack_opts.compression.codec);
    let state_path = dir.join(STATE);
    let name = match fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<PushState>(&b).ok())
    {
        Some(s) => s.name,
        None => {
            let name = resolve_name(name_template, &pack_opts.paths, ext);
            let json = serde_json::to_vec(&PushState { name: name.clone() }).unwrap_or_default();
            durable::write_atomic(&state_path, &json).map_err(io(&state_path))?;
            name
        }
    };
    let archive = dir.join(format!("archive.{ext}"));
    let finished = Manifest::read_for(&archive)
        .ok()
        .filter(|m| fs::metadata(&archive).is_ok_and(|md| md.len() == m.archive.size));
    Ok(Prepared {
        archive,
        name,
        finished,
        dir,
        lock,
    })
}

impl Prepared {
    /// The options that pack into this staging folder: `pack_opts` with the archive as output,
    /// and a full archive of an incremental chain naming its chain after itself.
    pub fn options(&self, pack_opts: &PackOptions) -> PackOptions {
        let mut opts = pack_opts.clone();
        opts.output = self.archive.clone();
        if let Some(inc) = &mut opts.incremental
            && inc.link.level == 0
        {
            inc.link.chain = self.name.clone();
        }
        opts
    }

    /// Packs with `opts` (from [`Prepared::options`]), or takes the archive an earlier run
    /// finished.
    pub fn pack(self, opts: &PackOptions, progress: &dyn Progress) -> Result<Staged, PushError> {
        let Prepared {
            archive,
            name,
            finished,
            dir,
            lock,
        } = self;
        if let Some(m) = finished {
            tracing::info!("reusing the archive packed by an earlier run: {}", archive.display());
            return Ok(Staged {
                archive,
                name,
                manifest: m,
                reused: true,
                dir,
                _lock: lock,
            });
        }
        let report = match pack::pack(opts, progress) {
            Ok(r) => r,
            Err(PackError::Interrupted) => return Err(PackError::Interrupted.into()),
            Err(e) => {
                // nothing of a failed pack is kept (pack removed its own files): the next run
                // starts afresh, with a name of its own
                remove_state(&dir);
                return Err(e.into());
            }
        };
        Ok(Staged {
            archive,
            name,
            manifest: report.manifest,
            reused: false,
            dir,
            _lock: lock,
        })
    }
}

/// Packs into the staging folder, or reuses the archive a killed run finished.
/// `pack.output` is ignored: the archive goes into the staging folder.
pub fn stage(
    state_dir: &Path,
    pack_opts: &PackOptions,
    target: &str,
    name_template: &str,
    progress: &dyn Progress,
) -> Result<Staged, PushError> {
    let prepared = prepare(state_dir, pack_opts, target, name_template)?;
    let opts = prepared.options(pack_opts);
    prepared.pack(&opts, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_template_and_the_format() {
        let n = resolve_name(DEFAULT_NAME, &[], "zip");
        assert!(n.ends_with(".zip") && n.contains('T') && !n.contains('{'), "{n}");
        assert_eq!(resolve_name("nightly.tar.zst", &[], "tar.zst"), "nightly.tar.zst");
        assert_eq!(resolve_name("a/b", &[], "tar"), "a_b.tar");
        let n = resolve_name("{label}", &[PathBuf::from("/tmp")], "zip");
        assert_eq!(n, "tmp.zip");
    }
}
