//! Resume state of a send job in `--state-dir`: a journal keyed by the file's MD5 and the target
//! URL that records the upload URL(s), replaced atomically at every change, plus the job lock
//! (an `flock` on a file holding the holder's pid, so a dead holder's lock is simply taken over).
//! Also caches the manifest computed for a plain file, so a rerun does not hash it again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::fingerprint::Md5;
use crate::manifest::Manifest;

/// Journal format version.
pub const VERSION: u32 = 1;

/// What went wrong with the journal or the lock.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another live process runs the same job.
    #[error("this job is already running{} (lock {})", .pid.map(|p| format!(" in process {p}")).unwrap_or_default(), .lock.display())]
    Locked {
        /// The holder's pid, as it recorded it.
        pid: Option<u32>,
        /// The lock file.
        lock: PathBuf,
    },
    /// The state directory could not be read or written.
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One upload of a job: the whole file, or one partial upload of a contiguous byte range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// First byte of the file this upload carries.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// The upload's URL, once created.
    pub url: Option<String>,
}

/// The recorded state of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    /// [`VERSION`].
    pub version: u32,
    /// The file being sent (for people reading the state directory).
    pub file: String,
    /// The tus endpoint.
    pub target: String,
    /// The file's size.
    pub size: u64,
    /// The file's MD5.
    pub md5: Md5,
    /// The chunk size the job uses.
    pub chunk_size: u64,
    /// The uploads: one, or the partial uploads of a concatenation.
    pub parts: Vec<Part>,
    /// The final (concatenated) upload's URL, once created.
    pub final_url: Option<String>,
    /// The server confirmed the whole upload.
    pub complete: bool,
    /// A push that sends its archive while packing it ([`Journal::open_following`]): the job
    /// is known by its target and name, `size` and `md5` are the archive's once packed (0 and
    /// zeros before), and the one part's `end` is unused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follows: bool,
}

impl JournalState {
    /// Checks what the send job relies on: the parts tile the file, in order, none empty (but
    /// the one part of an empty file), and the chunk size is not 0. A journal that fails this
    /// (edited by hand, or damaged) is not resumed from: `part.end - part.start` and the offsets
    /// within a part would be wrong, or overflow.
    pub fn check(&self) -> Result<(), String> {
        if self.chunk_size == 0 {
            return Err("chunk_size is 0".into());
        }
        if self.parts.is_empty() {
            return Err("no parts".into());
        }
        if self.follows {
            return match self.parts.as_slice() {
                [p] if p.start == 0 => Ok(()),
                _ => Err("an archive sent while packed has one part, from byte 0".into()),
            };
        }
        let mut at = 0u64;
        for (i, p) in self.parts.iter().enumerate() {
            let empty_file = self.size == 0 && self.parts.len() == 1;
            if p.start != at || (p.end <= p.start && !(empty_file && p.end == p.start)) {
                return Err(format!(
                    "part {i} ({}..{}) does not follow the part before it",
                    p.start, p.end
                ));
            }
            at = p.end;
        }
        if at != self.size {
            return Err(format!("the parts cover {at} bytes, the file has {}", self.size));
        }
        Ok(())
    }
}

/// An open journal: holds the job's lock until dropped.
pub struct Journal {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    /// The state; change it, then [`Journal::save`].
    pub state: Option<JournalState>,
}

/// The default state directory: `$XDG_STATE_HOME/robusto` (or the platform's equivalent).
pub fn default_state_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("robusto")
}

/// Takes an exclusive `flock` on `file` without waiting; `Ok(false)` if another process holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes a file descriptor that `file` keeps open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock at `lock_path` for this process, recording our pid in it; a lock left by a dead
/// process is free (the kernel released it) and is taken over silently.
pub fn lock(lock_path: &Path) -> Result<File, JournalError> {
    if let Some(dir) = lock_path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(io_err(lock_path))?;
    if !try_flock(&f).map_err(io_err(lock_path))? {
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        return Err(JournalError::Locked {
            pid: text.trim().parse().ok(),
            lock: lock_path.to_path_buf(),
        });
    }
    let pid = std::process::id().to_string();
    (|| {
        f.set_len(0)?;
        f.rewind()?;
        f.write_all(pid.as_bytes())?;
        f.flush()
    })()
    .map_err(io_err(lock_path))?;
    Ok(f)
}

/// The journal's file name stem for a file MD5 and a target URL.
pub fn job_name(md5: &Md5, target: &str) -> String {
    let t = Md5::of(target.as_bytes()).hex();
    format!("{}-{}", md5.hex(), &t[..12])
}

impl Journal {
    /// Opens (and locks) the journal of the job `(md5, target)` in `state_dir`.
    pub fn open(state_dir: &Path, md5: &Md5, target: &str) -> Result<Self, JournalError> {
        Self::open_as(state_dir, &job_name(md5, target), |s| {
            !s.follows && s.md5 == *md5 && s.target == target
        })
    }

    /// Opens (and locks) the journal of a push to `target` that sends its archive while
    /// packing it: known by the target (with the upload's name) alone, since the archive's MD5
    /// is known only at its end.
    pub fn open_following(state_dir: &Path, target: &str) -> Result<Self, JournalError> {
        let name = format!("following-{}", &Md5::of(target.as_bytes()).hex()[..24]);
        Self::open_as(state_dir, &name, |s| s.follows && s.target == target)
    }

    fn open_as(state_dir: &Path, name: &str, ours: impl Fn(&JournalState) -> bool) -> Result<Self, JournalError> {
        let dir = state_dir.join("jobs");
        let path = dir.join(format!("{name}.json"));
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = lock(&lock_path)?;
        let state = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<JournalState>(&bytes) {
                Ok(s) if s.version == VERSION && ours(&s) => match s.check() {
                    Ok(()) => Some(s),
                    Err(e) => {
                        tracing::warn!("ignoring unusable journal {}: {e}", path.display());
                        None
                    }
                },
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("ignoring unreadable journal {}: {e}", path.display());
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(Journal {
            path,
            lock_path,
            _lock: lock,
            state,
        })
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the state atomically (temp, fsync, rename): a kill at any instant leaves the old
    /// or the new journal.
    pub fn save(&self) -> Result<(), JournalError> {
        self.snapshot().save()
    }

    /// A copy of the path and state, to be written elsewhere (off an async runtime).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            path: self.path.clone(),
            state: self.state.clone(),
        }
    }

    /// Forgets the job (journal and lock file).
    pub fn remove(self) -> Result<(), JournalError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.path)(e)),
        }
        let _ = fs::remove_file(&self.lock_path);
        Ok(())
    }
}

/// The MD5s of the chunks a push sending while it packs has begun to send, in order: 16 bytes
/// each, appended and synced before a chunk's first PATCH, so that every byte the server may
/// hold is accounted for. A rerun packs again and checks the chunks it regenerates against them
/// before it skips what the server holds.
pub struct SentChunks {
    path: PathBuf,
    file: File,
    md5s: Vec<Md5>,
}

impl SentChunks {
    /// The record beside `journal` (a torn last record, cut by a kill, is dropped).
    pub fn open(journal: &Journal) -> Result<Self, JournalError> {
        let path = journal.path().with_extension("chunks");
        let io = io_err(&path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        let md5s: Vec<Md5> = bytes
            .chunks_exact(16)
            .map(|c| {
                let mut d = [0u8; 16];
                d.copy_from_slice(c);
                Md5(d)
            })
            .collect();
        let mut sent = SentChunks { path, file, md5s };
        if bytes.len() % 16 != 0 {
            sent.truncate(sent.md5s.len())?;
        }
        Ok(sent)
    }

    /// The MD5 recorded for chunk `index`.
    pub fn get(&self, index: usize) -> Option<Md5> {
        self.md5s.get(index).copied()
    }

    /// How many chunks are recorded.
    pub fn len(&self) -> usize {
        self.md5s.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.md5s.is_empty()
    }

    /// Records that chunk `index` (at most one past the last recorded) is about to be sent with
    /// `md5`; a different chunk recorded there, and those after it, are replaced (they were
    /// never acknowledged: the caller checked the acknowledged ones).
    pub fn record(&mut self, index: usize, md5: Md5) -> Result<(), JournalError> {
        if self.get(index) == Some(md5) {
            return Ok(());
        }
        let index = index.min(self.md5s.len());
        if index < self.md5s.len() {
            self.truncate(index)?;
        }
        let io = io_err(&self.path);
        self.file.seek(io::SeekFrom::End(0)).map_err(io)?;
        self.file.write_all(&md5.0).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.md5s.push(md5);
        Ok(())
    }

    /// Forgets every chunk (a fresh upload starts).
    pub fn clear(&mut self) -> Result<(), JournalError> {
        self.truncate(0)
    }

    fn truncate(&mut self, len: usize) -> Result<(), JournalError> {
        self.file.set_len(len as u64 * 16).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.md5s.truncate(len);
        Ok(())
    }

    /// Removes the record (the job is complete).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A copy of a journal's state to be written.
pub struct Snapshot {
    path: PathBuf,
    state: Option<JournalState>,
}

impl Snapshot {
    /// Writes the state atomically (temp, fsync, rename).
    pub fn save(&self) -> Result<(), JournalError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let mut json = serde_json::to_vec_pretty(state).map_err(|e| io_err(&self.path)(io::Error::other(e)))?;
        json.push(b'\n');
        durable::write_atomic(&self.path, &json).map_err(io_err(&self.path))
    }
}

/// A manifest computed for a plain file, with what identifies the file's version.
#[derive(Serialize, Deserialize)]
struct CachedManifest {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    manifest: Manifest,
}

/// The cache file for `file`'s computed manifest.
fn manifest_cache_path(state_dir: &Path, file: &Path, chunk_size: u64) -> PathBuf {
    let abs = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let key = Md5::of(format!("{}\0{chunk_size}", abs.display()).as_bytes()).hex();
    state_dir.join("manifests").join(format!("{key}.json"))
}

fn identity(meta: &fs::Metadata) -> (u64, i128, u64) {
    (
        meta.len(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.ino(),
    )
}

/// A previously computed manifest of `file`, if the file has not changed since (size, mtime,
/// inode). An entry whose manifest fails the checks a manifest file gets, describes another
/// size, or is cut at another chunk size is not taken (the manifest is computed again).
pub fn cached_manifest(state_dir: &Path, file: &Path, chunk_size: u64) -> Option<Manifest> {
    let meta = fs::metadata(file).ok()?;
    let bytes = fs::read(manifest_cache_path(state_dir, file, chunk_size)).ok()?;
    let c: CachedManifest = serde_json::from_slice(&bytes).ok()?;
    let usable = c.manifest.check().is_ok() && c.manifest.archive.size == c.size && c.manifest.chunk_size == chunk_size;
    (usable && (c.size, c.mtime_ns, c.inode) == identity(&meta)).then_some(c.manifest)
}

/// Remembers the manifest computed for `file` (as it was at `meta`).
pub fn cache_manifest(
    state_dir: &Path,
    file: &Path,
    meta: &fs::Metadata,
    manifest: &Manifest,
) -> Result<(), JournalError> {
    let path = manifest_cache_path(state_dir, file, manifest.chunk_size);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let (size, mtime_ns, inode) = identity(meta);
    let json = serde_json::to_vec(&CachedManifest {
        size,
        mtime_ns,
        inode,
        manifest: manifest.clone(),
    })
    .map_err(|e| io_err(&path)(io::Error::other(e)))?;
    durable::write_atomic(&path, &json).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ChunkDigest;

    fn state(md5: Md5) -> JournalState {
        JournalState {
            version: VERSION,
            file: "f".into(),
            target: "http://x/files/".into(),
            size: 10,
            md5,
            chunk_size: 4,
            parts: vec![Part {
                start: 0,
                end: 10,
                url: Some("http://x/files/1".into()),
            }],
            final_url: None,
            complete: false,
            follows: false,
        }
    }

    #[test]
    fn sent_chunks_survive_reopening_and_drop_a_torn_record() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open_following(d.path(), "http://x/files/|name=n").unwrap();
        let mut sent = SentChunks::open(&j).unwrap();
        let (a, b, c) = (Md5::of(b"a"), Md5::of(b"b"), Md5::of(b"c"));
        sent.record(0, a).unwrap();
        sent.record(1, b).unwrap();
        sent.record(1, b).unwrap();
        assert_eq!(sent.len(), 2);
        drop(sent);
        let path = j.path().with_extension("chunks");
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 32);
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let mut sent = SentChunks::open(&j).unwrap();
        assert_eq!((sent.len(), sent.get(0), sent.get(1)), (2, Some(a), Some(b)));
        sent.record(1, c).unwrap();
        assert_eq!(
            (sent.len(), sent.get(1)),
            (2, Some(c)),
            "a changed chunk replaces the record"
        );
        sent.record(2, a).unwrap();
        drop(sent);
        let sent = SentChunks::open(&j).unwrap();
        assert_eq!((sent.len(), sent.get(2)), (3, Some(a)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 48);
    }

    #[test]
    fn a_cached_manifest_that_does_not_fit_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"0123456789").unwrap();
        let meta = fs::metadata(&file).unwrap();
        let fp = crate::fingerprint::fingerprint_reader(&b"0123456789"[..], 4).unwrap();
        let right = Manifest::new(&file, "raw", "none", None, fp, crate::manifest::SourceInfo::default());
        cache_manifest(dir.path(), &file, &meta, &right).unwrap();
        assert_eq!(cached_manifest(dir.path(), &file, 4), Some(right.clone()));
        // the same entry with a manifest of another size, of another chunk size, of a broken
        // chunk list, of chunk size 0
        let mut other = right.clone();
        other.archive.size = 12;
        other.chunks[2].len = 4;
        let mut cut = right.clone();
        cut.chunk_size = 16;
        cut.chunks = vec![ChunkDigest {
            offset: 0,
            len: 10,
            md5: right.archive.md5,
        }];
        let mut broken = right.clone();
        broken.chunks[1].len = 3;
        let mut zero = right.clone();
        zero.chunk_size = 0;
        for bad in [other, cut, broken, zero] {
            let json = serde_json::to_vec(&CachedManifest {
                size: meta.len(),
                mtime_ns: identity(&meta).1,
                inode: meta.ino(),
                manifest: bad.clone(),
            })
            .unwrap();
            fs::write(manifest_cache_path(dir.path(), &file, 4), json).unwrap();
            assert_eq!(cached_manifest(dir.path(), &file, 4), None, "{bad:?}");
        }
    }

    #[test]
    fn a_journal_whose_parts_do_not_tile_the_file_is_not_resumed() {
        let md5 = Md5::of(b"x");
        let part = |start, end| Part { start, end, url: None };
        let mut ok = state(md5);
        ok.parts = vec![part(0, 4), part(4, 10)];
        assert_eq!(ok.check(), Ok(()));
        let mut empty = state(md5);
        empty.size = 0;
        empty.parts = vec![part(0, 0)];
        assert_eq!(empty.check(), Ok(()));
        let dir = tempfile::tempdir().unwrap();
        for parts in [
            vec![],
            vec![part(0, 4)],
            vec![part(0, 4), part(3, 10)],
            vec![part(0, 8), part(8, 4), part(4, 10)],
            vec![part(0, 0), part(0, 10)],
            vec![part(0, 11)],
        ] {
            let mut bad = state(md5);
            bad.parts = parts.clone();
            assert!(bad.check().is_err(), "{parts:?}");
            let j = Journal::open(dir.path(), &md5, &bad.target).unwrap();
            let path = j.path().to_path_buf();
            drop(j);
            fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
            let j = Journal::open(dir.path(), &md5, &bad.target).unwrap();
            assert!(j.state.is_none(), "{parts:?} resumed");
        }
        let mut zero = state(md5);
        zero.chunk_size = 0;
        assert!(zero.check().is_err());
    }

    #[test]
    fn journal_round_trips_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let md5 = Md5::of(b"x");
        let mut j = Journal::open(dir.path(), &md5, "http://x/files/").unwrap();
        assert!(j.state.is_none());
        j.state = Some(state(md5));
        j.save().unwrap();
        match Journal::open(dir.path(), &md5, "http://x/files/") {
            Err(JournalError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {:?}", other.map(|j| j.state)),
        }
        drop(j);
        let j = Journal::open(dir.path(), &md5, "http://x/files/").unwrap();
        assert_eq!(j.state, Some(state(md5)));
        let other = Journal::open(dir.path(), &md5, "http://y/files/").unwrap();
        assert!(other.state.is_none(), "another target is another job");
        j.remove().unwrap();
        drop(other);
        assert!(
            Journal::open(dir.path(), &md5, "http://x/files/")
                .unwrap()
                .state
                .is_none()
        );
    }
}
