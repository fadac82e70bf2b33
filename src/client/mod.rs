//! The client: the send job (`robusto send`) in this module, and reading uploads back
//! ([`get`]: download, status, listing). The send job uploads one file to a tus 1.0.0 server
//! chunk by chunk, using the chunking and MD5s of its manifest, so that a dropped connection, a
//! stalled link, a damaged chunk or a killed process costs at most the bytes in flight (a cut
//! chunk is held by a server that offers `robusto-chunk-prefix`, and completed).
//!
//! The job: read (or compute) the manifest → open the journal and take the job lock → ask the
//! server what it supports (OPTIONS) → create the upload(s) or find them again (HEAD) → one PATCH
//! per chunk, each carrying the chunk's MD5 → record completion.
//!
//! With `--parallel N` the file goes as partial uploads over N connections (tus
//! concatenation). A server that offers `concatenation-unfinished` gets the final upload first
//! and up to 64 parts handed to the connections in file order, so that it can check the whole
//! file as the parts arrive; at the end the client waits for the server to finish the final
//! (HEAD). Other servers get N contiguous parts and the final once they are all in.

mod concat;
mod files;
pub mod follow;
pub mod get;
pub mod journal;
mod part;
pub mod retry;
pub mod session;
pub mod throttle;
pub mod transport;

pub use files::manifest_for;
pub(crate) use files::{blocking, compute_checksum, manifest_checksum, spawn_io};

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use reqwest::Url;

use crate::fingerprint::{ChunkDigest, fingerprint_file};
use crate::growing::{Growing, Ready};
use crate::manifest::{self, Manifest, ManifestError, SourceInfo};
use crate::progress::{Event, Progress};
use crate::protocol::{Checksum, ChecksumAlgorithm, Metadata, meta};
use journal::{Journal, JournalError, JournalState, Part, SentChunks};
use retry::{Exhausted, Pieces, Retrier, RetryPolicy};
use session::{Capabilities, Creation, Session, SessionConfig, SessionError};
use throttle::{Throttle, Timetable};

/// A chunk that fails the server's checksum this many times in a row stops the job.
pub const CHECKSUM_FAILURES: u32 = 3;

/// Everything a send job needs, validated.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// The file to send.
    pub file: PathBuf,
    /// The tus endpoint (creation URL), e.g. `http://host:8080/files/`.
    pub target: Url,
    /// Chunk size for a file without a manifest (a manifest's chunking wins).
    pub chunk_size: u64,
    /// Partial uploads sent at once (used when the server offers concatenation).
    pub parallel: usize,
    /// `--bwlimit`.
    pub bwlimit: Option<Timetable>,
    /// Backoff and per-chunk budget.
    pub retry: RetryPolicy,
    /// No progress for this long fails a request (`--stall-timeout`).
    pub stall_timeout: Duration,
    /// Stop at the first chunk boundary after this long (`--max-duration`).
    pub max_duration: Option<Duration>,
    /// Bearer token.
    pub token: Option<String>,
    /// Certificate authorities trusted besides the system's (`--ca-cert`).
    pub roots: transport::ExtraRoots,
    /// Where journals, locks and computed manifests live.
    pub state_dir: PathBuf,
    /// The upload's `filename` metadata (default: the file's name).
    pub name: Option<String>,
    /// A stable name for a target whose URL changes between runs (a local folder served on a
    /// fresh port): the journal is keyed by it, and recorded upload URLs are moved onto the
    /// current target's host and port.
    pub job_key: Option<String>,
    /// Send an archive while it is packed (`push`): `file` is where it will be once packed.
    pub following: Option<follow::Following>,
}

impl SendOptions {
    /// The target as the journal knows it, with the upload's name when one is given: the same
    /// file sent again under another name (a nightly push of an unchanged tree) is an upload of
    /// its own, never the earlier one reported again.
    fn journal_target(&self) -> String {
        let target = self.job_key.clone().unwrap_or_else(|| self.target.to_string());
        match &self.name {
            Some(name) => format!("{target}|name={name}"),
            None => target,
        }
    }

    /// A URL from the journal, moved onto the current target's origin when the job has a
    /// stable key.
    fn recorded_url(&self, text: &str) -> Option<Url> {
        let mut url = Url::parse(text).ok()?;
        if self.job_key.is_some() {
            url.set_host(self.target.host_str()).ok()?;
            url.set_port(self.target.port()).ok()?;
        }
        Some(url)
    }
}

/// How a send job ended, short of an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The server has every byte (and, for robusto servers, checked the whole file).
    Complete {
        /// The upload's URL.
        url: String,
    },
    /// `--max-duration` was reached; running the same job again continues.
    Paused {
        /// The upload URL(s) so far.
        url: Option<String>,
    },
}

/// Why a send job stopped, grouped by what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Resumable: the link stayed bad past the retry budget of one chunk.
    #[error(
        "giving up after {attempts} failed attempts on one chunk (last: {reason}){}; run the same command again to continue",
        .url.as_ref().map(|u| format!("; the upload is at {u}")).unwrap_or_default()
    )]
    RetriesExhausted {
        /// The upload URL, if one was created.
        url: Option<String>,
        /// Failed attempts.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// Another process runs the same job.
    #[error(transparent)]
    Locked(JournalError),
    /// The same chunk failed the server's checksum [`CHECKSUM_FAILURES`] times in a row.
    #[error(
        "chunk {index} (bytes {offset}..{end}) failed the server's checksum {CHECKSUM_FAILURES} times in a row: the file is probably damaged on disk; check it with 'robusto verify {file}'"
    )]
    Damaged {
        /// Chunk number.
        index: usize,
        /// First byte.
        offset: u64,
        /// One past the last byte.
        end: u64,
        /// The file.
        file: String,
    },
    /// The server refused the upload for a reason retrying will not change.
    #[error("{url}: {source}")]
    Server {
        /// The URL involved.
        url: String,
        /// What the server said.
        source: SessionError,
    },
    /// The file or its manifest cannot be used.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Local I/O failed (the file, the state directory).
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The journal could not be written.
    #[error(transparent)]
    Journal(JournalError),
    /// The archive being sent while packed will not be finished: packing failed or stopped.
    #[error("{0}")]
    Packing(String),
}

impl SendError {
    /// Whether running the same job again may finish it (exit 75).
    pub fn is_resumable(&self) -> bool {
        matches!(self, SendError::RetriesExhausted { .. })
    }
}

impl From<JournalError> for SendError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Locked { .. } => SendError::Locked(e),
            other => SendError::Journal(other),
        }
    }
}

/// Splits the chunks into `n` contiguous ranges of whole chunks, as even as possible.
fn plan_parts(m: &Manifest, n: usize) -> Vec<Part> {
    let chunks = m.chunks.len();
    if chunks == 0 || n <= 1 {
        return vec![Part {
            start: 0,
            end: m.archive.size,
            url: None,
        }];
    }
    let n = n.min(chunks);
    (0..n)
        .map(|i| {
            let first = i * chunks / n;
            let last = (i + 1) * chunks / n; // exclusive
            let start = m.chunks[first].offset;
            let end = m.chunks[last - 1].offset + m.chunks[last - 1].len;
            Part { start, end, url: None }
        })
        .collect()
}

/// How a part's loop ended.
enum PartEnd {
    Done,
    Paused,
}

/// Most parts a file is cut into for a server that follows an unfinished concatenation: keeps
/// the final's `Upload-Concat` header within a few KiB (under common 8 KiB header limits).
const MAX_PARTS: usize = 64;

/// How long the sender waits for a server to finish a final upload whose parts are all in.
const FINAL_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// Part uploads created at once before a parallel upload starts (small requests whose time
/// is mostly the server's fsyncs, which overlap well).
const CREATIONS_AT_ONCE: usize = 16;

/// How long to wait before asking again when a server that holds cut chunks seems to have
/// kept nothing of a broken request (its handler may not have run yet).
const RECHECK_AFTER_CUT: Duration = Duration::from_millis(200);

/// The largest chunk read ahead of its PATCH (the default chunk size).
const READ_AHEAD_MAX: u64 = 8 << 20;

/// A chunk being read from disk ahead of its PATCH.
struct ReadAhead {
    offset: u64,
    len: u64,
    task: tokio::task::JoinHandle<std::io::Result<Bytes>>,
}

struct Job<'a> {
    opts: &'a SendOptions,
    progress: &'a dyn Progress,
    session: Session,
    caps: Capabilities,
    /// The archive's chunks: all known (a packed file), or known as they are packed.
    source: Arc<Growing>,
    /// The incremental link the archive is, for its metadata.
    incremental: Option<crate::incremental::Link>,
    /// Sending while packing ([`follow`]): the chunks begun, checked against a rerun's.
    following: Option<tokio::sync::Mutex<SentChunks>>,
    file: Arc<File>,
    journal: tokio::sync::Mutex<Journal>,
    /// Bytes the server holds, per part.
    acked: Mutex<Vec<u64>>,
    deadline: Option<Instant>,
    multi: bool,
}

fn file_name(opts: &SendOptions) -> String {
    opts.name.clone().unwrap_or_else(|| {
        opts.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into())
    })
}

impl Job<'_> {
    fn metadata(&self, whole: bool) -> Metadata {
        let mut m = Metadata::default();
        m.insert(meta::FILENAME, &file_name(self.opts));
        m.insert(meta::CHUNK_SIZE, &self.chunk_size().to_string());
        if whole {
            // Sent while packing, the whole-file checksum comes with the last chunk instead.
            if let Some(end) = self.source.end() {
                m.insert(meta::CHECKSUM, &Checksum::md5(end.md5).to_header());
            }
            if let Some(link) = &self.incremental {
                for (key, value) in link.metadata() {
                    m.insert(key, &value);
                }
            }
        }
        m
    }

    fn chunk_size(&self) -> u64 {
        self.source.chunk_size()
    }

    /// The archive's size, once known.
    fn size(&self) -> Option<u64> {
        self.source.end().map(|e| e.size)
    }

    /// The size for progress reports: the bytes packed so far until the end is known.
    fn size_so_far(&self) -> u64 {
        self.size().unwrap_or_else(|| self.source.written())
    }

    /// The length of `part`'s upload, once known (sent while packing, at the end).
    fn part_len(&self, part: &Part) -> Option<u64> {
        if self.following.is_some() {
            self.size()
        } else {
            Some(part.end - part.start)
        }
    }

    /// One past `part`'s last byte, as far as it is known.
    fn part_end(&self, part: &Part) -> u64 {
        self.part_len(part).map_or(u64::MAX, |l| part.start + l)
    }

    fn total_acked(&self) -> u64 {
        self.acked.lock().map(|a| a.iter().sum()).unwrap_or(0)
    }

    fn set_acked(&self, part: usize, offset: u64) {
        if let Ok(mut a) = self.acked.lock()
            && let Some(slot) = a.get_mut(part)
        {
            *slot = offset;
        }
    }

    async fn final_url(&self) -> Option<Url> {
        let j = self.journal.lock().await;
        let url = j.state.as_ref()?.final_url.clone()?;
        self.opts.recorded_url(&url)
    }

    async fn part_url(&self, part: usize) -> Option<Url> {
        let j = self.journal.lock().await;
        let url = j.state.as_ref()?.parts.get(part)?.url.clone()?;
        self.opts.recorded_url(&url)
    }

    /// Updates the journal under its lock and writes it atomically.
    async fn record(&self, change: impl FnOnce(&mut JournalState)) -> Result<(), SendError> {
        let mut j = self.journal.lock().await;
        if let Some(s) = j.state.as_mut() {
            change(s);
        }
        // The journal is a few hundred bytes: write it on the blocking pool, holding the async
        // lock so that two parts never write it at once.
        save(&j).await
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, SendError> {
        self.read_done(self.start_read(offset, len)).await
    }

    /// Starts reading `len` bytes at `offset` on a blocking thread (see [`Self::read_done`]).
    fn start_read(&self, offset: u64, len: u64) -> ReadAhead {
        let file = self.file.clone();
        let task = spawn_io(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset).map(|()| Bytes::from(buf))
        });
        ReadAhead { offset, len, task }
    }

    /// The bytes a [`Self::start_read`] read.
    async fn read_done(&self, ahead: ReadAhead) -> Result<Bytes, SendError> {
        let read = ahead.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        read.map_err(|source| SendError::Io {
            path: self.opts.file.clone(),
            source,
        })
    }

    /// The checksum header for bytes `offset..offset+data.len()`: the manifest's MD5 for a whole
    /// chunk, else computed on the fly (a resumed partial chunk, or a server without md5).
    async fn checksum_for(&self, chunk: &ChunkDigest, offset: u64, data: &Bytes) -> Option<Checksum> {
        let alg = self.caps.checksum?;
        if let Some(known) = manifest_checksum(alg, chunk, offset, data.len() as u64) {
            return Some(known);
        }
        let data = data.clone();
        blocking(move || compute_checksum(alg, &data)).await.ok()
    }

    /// The chunk holding byte `offset` (waiting for it to be packed), and whether it is the
    /// last; `None` past the end.
    async fn chunk_at(&self, offset: u64) -> Result<Option<(usize, Ready)>, SendError> {
        let i = (offset / self.chunk_size()) as usize;
        let ready = self.source.chunk(i).await.map_err(|e| SendError::Packing(e.0))?;
        Ok(ready.map(|r| (i, r)))
    }

    /// The chunk holding byte `offset` if it is ready now.
    fn chunk_now(&self, offset: u64) -> Option<ChunkDigest> {
        self.source
            .chunk_now((offset / self.chunk_size()) as usize)
            .map(|r| r.chunk)
    }

    /// A fresh retry budget for one loop, reporting to the job's progress.
    fn retrier(&self) -> Retrier<'_> {
        Retrier::new(self.opts.retry, Some(self.progress))
    }

    /// One failure counted against the chunk: wait and return `Ok`, or give up naming the upload.
    async fn backoff(&self, retry: &mut Retrier<'_>, url: Option<&Url>, reason: String) -> Result<(), SendError> {
        retry.wait_out(reason, false).await.map_err(|e| exhausted(e, url))
    }

    /// Whether the server holds what arrives of a cut-off chunk for this client to complete.
    fn holds_prefixes(&self) -> bool {
        self.caps.checksum.is_some() && self.caps.has(crate::protocol::Extension::ChunkPrefix)
    }

    fn fatal(url: &Url, source: SessionError) -> SendError {
        SendError::Server {
            url: url.to_string(),
            source,
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Writes the journal atomically, on the blocking pool.
async fn save(journal: &Journal) -> Result<(), SendError> {
    let snapshot = journal.snapshot();
    blocking(move || snapshot.save())
        .await
        .map_err(|source| SendError::Io {
            path: journal.path().to_path_buf(),
            source,
        })??;
    Ok(())
}

/// The budget ran out: resumable, naming the upload if there is one.
fn exhausted(e: Exhausted, url: Option<&Url>) -> SendError {
    SendError::RetriesExhausted {
        url: url.map(|u| u.to_string()),
        attempts: e.attempts,
        reason: e.reason,
    }
}

/// OPTIONS, retried within the budget.
async fn discover(opts: &SendOptions, session: &Session, progress: &dyn Progress) -> Result<Capabilities, SendError> {
    let mut retry = Retrier::new(opts.retry, Some(progress));
    loop {
        match session.discover(&opts.target).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() => retry
                .wait_out(e.reason(), false)
                .await
                .map_err(|e| exhausted(e, None))?,
            Err(source) => {
                return Err(SendError::Server {
                    url: opts.target.to_string(),
                    source,
                });
            }
        }
    }
}

/// The session of a send job, and what its server offers (OPTIONS, retried within the budget).
async fn connect(opts: &SendOptions, progress: &dyn Progress) -> Result<(Session, Capabilities), SendError> {
    let throttle = opts.bwlimit.clone().map(|t| Arc::new(Throttle::new(t)));
    let session = Session::new(
        SessionConfig {
            stall_timeout: opts.stall_timeout,
            token: opts.token.clone(),
            roots: opts.roots.clone(),
        },
        throttle,
    )
    .map_err(|e| SendError::Server {
        url: opts.target.to_string(),
        source: e,
    })?;
    let caps = discover(opts, &session, progress).await?;
    tracing::debug!("server offers {:?}, checksum {:?}", caps.extensions, caps.checksum);
    if !caps.has(crate::protocol::Extension::Creation) {
        return Err(SendError::Server {
            url: opts.target.to_string(),
            source: SessionError::Protocol("the server does not offer the creation extension".into()),
        });
    }
    Ok((session, caps))
}

/// Refuses a file larger than the server takes.
fn check_size(opts: &SendOptions, caps: &Capabilities, size: u64) -> Result<(), SendError> {
    match caps.max_size {
        Some(max) if size > max => Err(SendError::Server {
            url: opts.target.to_string(),
            source: SessionError::Rejected {
                status: reqwest::StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("the server accepts at most {max} bytes, the file has {size}"),
            },
        }),
        _ => Ok(()),
    }
}

/// A job the journal records as complete: `Some` (reported complete) if the server still has
/// all `size` bytes at `url`; `None` when it does not, or there is no URL (start afresh).
async fn still_complete(
    session: &Session,
    url: Option<Url>,
    size: u64,
    progress: &dyn Progress,
) -> Result<Option<SendOutcome>, SendError> {
    let Some(url) = url else { return Ok(None) };
    match session.head(&url).await {
        Ok(h) if h.offset == Some(size) => {
            tracing::info!("nothing to send: the server already has the whole upload at {url}");
            progress.event(&Event::Complete {
                url: url.to_string(),
                bytes: size,
            });
            Ok(Some(SendOutcome::Complete { url: url.to_string() }))
        }
        Ok(_) | Err(SessionError::Gone(_)) => Ok(None),
        Err(e) => Err(SendError::Server {
            url: url.to_string(),
            source: e,
        }),
    }
}

/// Runs a send job to completion, to the deadline, or to an error. An archive being packed
/// ([`SendOptions::following`]) is sent as it grows when the server can take its whole-file
/// checksum at the end ([`follow`]); otherwise it is sent once packed.
pub async fn send(opts: &SendOptions, progress: &dyn Progress) -> Result<SendOutcome, SendError> {
    let started = Instant::now();
    if let Some(following) = &opts.following {
        let (session, caps) = connect(opts, progress).await?;
        if follow::can_follow(&caps, opts) {
            return follow::send_following(opts, following, session, caps, progress, started).await;
        }
        tracing::info!(
            "the server cannot take a whole-file checksum at the end (robusto-repr-digest): sending once packed"
        );
        following
            .source
            .until_committed()
            .await
            .map_err(|e| SendError::Packing(e.0))?;
    }
    let manifest = manifest_for(&opts.file, opts.chunk_size, &opts.state_dir).await?;
    let (state_dir, md5, target) = (opts.state_dir.clone(), manifest.archive.md5, opts.journal_target());
    let mut journal = blocking(move || Journal::open(&state_dir, &md5, &target))
        .await
        .map_err(|source| SendError::Io {
            path: opts.state_dir.clone(),
            source,
        })??;
    let (session, caps) = connect(opts, progress).await?;
    let size = manifest.archive.size;
    check_size(opts, &caps, size)?;

    // A journal whose parts tile another size than the file's is not this file's: start afresh.
    if journal.state.as_ref().is_some_and(|s| s.size != size) {
        tracing::warn!(
            "ignoring the journal {}: it records another size",
            journal.path().display()
        );
        journal.state = None;
    }
    // A job the server already confirmed: check that it still has it, else start afresh.
    if let Some(state) = journal.state.as_ref().filter(|s| s.complete) {
        let url = state
            .final_url
            .clone()
            .or_else(|| state.parts.first().and_then(|p| p.url.clone()));
        let url = url.and_then(|u| opts.recorded_url(&u));
        if let Some(done) = still_complete(&session, url, size, progress).await? {
            return Ok(done);
        }
        journal.state = None;
    }

    let want = if opts.parallel > 1 && !caps.has(crate::protocol::Extension::Concatenation) {
        tracing::warn!("the server does not offer concatenation: sending over one connection");
        1
    } else {
        opts.parallel.max(1)
    };
    // A server that takes the final upload before its parts are complete can follow the parts
    // in file order (its whole-file check keeps pace with them): then the file is cut into many
    // parts, handed to the connections in order. Otherwise one contiguous part per connection.
    let early_final = want > 1 && caps.has(crate::protocol::Extension::ConcatenationUnfinished);
    let planned = if early_final {
        manifest.chunks.len().clamp(want, MAX_PARTS.max(want))
    } else {
        want
    };
    if journal.state.is_none() {
        journal.state = Some(JournalState {
            version: journal::VERSION,
            file: opts.file.display().to_string(),
            target: opts.journal_target(),
            size,
            md5: manifest.archive.md5,
            chunk_size: manifest.chunk_size,
            parts: plan_parts(&manifest, planned),
            final_url: None,
            complete: false,
            follows: false,
        });
        save(&journal).await?;
    }
    let parts = journal.state.as_ref().map(|s| s.parts.clone()).unwrap_or_default();
    let multi = parts.len() > 1;
    if multi && parts.len() != planned {
        tracing::info!("continuing with the {} partial uploads already started", parts.len());
    }
    let workers = want.clamp(1, parts.len().max(1));
    let path = opts.file.clone();
    let file = blocking(move || File::open(path))
        .await
        .and_then(|r| r)
        .map_err(|source| SendError::Io {
            path: opts.file.clone(),
            source,
        })?;
    progress.event(&Event::SendStarted {
        file: opts.file.display().to_string(),
        total_bytes: size,
        chunks: manifest.chunks.len() as u64,
        parallel: workers as u32,
    });
    let incremental = manifest.incremental.clone();
    let file = Arc::new(file);
    let job = Job {
        opts,
        progress,
        session,
        caps,
        acked: Mutex::new(vec![0; parts.len()]),
        source: Growing::complete(file.clone(), &manifest),
        incremental,
        following: None,
        file,
        journal: tokio::sync::Mutex::new(journal),
        deadline: opts.max_duration.map(|d| started + d),
        multi,
    };

    if multi && early_final && job.final_url().await.is_none() && !job.past_deadline() {
        job.create_parts(&parts, workers).await?;
        job.concatenate().await?;
    }
    // `workers` connections take the parts in file order, each the next one not yet taken.
    // A second round runs only when the server lost the final upload early: its parts are
    // checked again (one that went with it is sent again) before a new final is created.
    let mut round = 0;
    let url = loop {
        round += 1;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let worker = || async {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(part) = parts.get(i) else {
                    return Ok(PartEnd::Done);
                };
                if let PartEnd::Paused = job.run_part(i, part.clone()).await? {
                    return Ok::<_, SendError>(PartEnd::Paused);
                }
            }
        };
        let ends = futures_util::future::try_join_all((0..workers).map(|_| worker())).await?;
        if ends.iter().any(|e| matches!(e, PartEnd::Paused)) {
            // The URL to ask about: the final upload's once it exists (its status shows the
            // chunks all parts hold), else the first part's.
            let url = match job.final_url().await {
                Some(u) => Some(u),
                None => job.part_url(0).await,
            };
            return Ok(SendOutcome::Paused {
                url: url.map(|u| u.to_string()),
            });
        }
        if !multi {
            break job.part_url(0).await.ok_or_else(|| SendError::Server {
                url: opts.target.to_string(),
                source: SessionError::Protocol("no upload URL after the upload".into()),
            })?;
        }
        // A final upload created early (or by an earlier run) is finished by the server when
        // its last part is in; one that was never created is created now.
        match job.final_url().await {
            Some(u) => match job.await_final(&u).await? {
                Some(u) => break u,
                None if round == 1 => continue,
                None => break job.concatenate().await?,
            },
            // The early final was lost during the round (a part of it was gone): parts finished
            // before that may have gone with it, so they are all checked again first.
            None if round == 1 && early_final => continue,
            None => break job.concatenate().await?,
        }
    };
    job.record(|s| s.complete = true).await?;
    progress.event(&Event::Complete {
        url: url.to_string(),
        bytes: size,
    });
    Ok(SendOutcome::Complete { url: url.to_string() })
}

/// The manifest path of `file` (re-exported for the push job's clean-up).
pub fn manifest_path(file: &Path) -> PathBuf {
    manifest::path_for(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::fingerprint_reader;

    fn manifest(size: usize, chunk: u64) -> Manifest {
        let data = vec![7u8; size];
        let fp = fingerprint_reader(&data[..], chunk).unwrap();
        Manifest::new(Path::new("x"), "raw", "none", None, fp, SourceInfo::default())
    }

    #[test]
    fn parts_are_contiguous_whole_chunk_ranges() {
        let m = manifest(10 * 100 + 1, 100);
        let parts = plan_parts(&m, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts.last().unwrap().end, 1001);
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert_eq!(w[1].start % 100, 0, "parts start on chunk boundaries");
        }
        assert_eq!(plan_parts(&m, 40).len(), 11, "never more parts than chunks");
        assert_eq!(plan_parts(&manifest(0, 100), 4).len(), 1, "an empty file is one upload");
    }

    #[test]
    fn checksums_come_from_the_manifest_or_are_computed() {
        let m = manifest(250, 100);
        let c = m.chunks[1];
        let md5 = manifest_checksum(ChecksumAlgorithm::Md5, &c, 100, 100).unwrap();
        assert_eq!(md5, Checksum::md5(c.md5));
        assert_eq!(md5, compute_checksum(ChecksumAlgorithm::Md5, &[7u8; 100]));
        assert!(
            manifest_checksum(ChecksumAlgorithm::Md5, &c, 150, 50).is_none(),
            "a resumed half chunk"
        );
        assert!(manifest_checksum(ChecksumAlgorithm::Sha1, &c, 100, 100).is_none());
        let sha = compute_checksum(ChecksumAlgorithm::Sha256, &[7u8; 100]);
        assert_eq!(sha.digest.len(), 32);
        assert!(sha.to_header().starts_with("sha256 "));
    }

    #[test]
    fn recorded_urls_follow_a_local_folder_to_its_new_port() {
        let mut opts = SendOptions {
            file: "x".into(),
            target: Url::parse("http://127.0.0.1:4000/files/").unwrap(),
            chunk_size: 1,
            parallel: 1,
            bwlimit: None,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(1),
            max_duration: None,
            token: None,
            roots: Default::default(),
            state_dir: "s".into(),
            name: None,
            job_key: None,
            following: None,
        };
        let old = "http://127.0.0.1:3000/files/abc";
        assert_eq!(opts.recorded_url(old).unwrap().as_str(), old);
        opts.job_key = Some("dir:/data".into());
        assert_eq!(
            opts.recorded_url(old).unwrap().as_str(),
            "http://127.0.0.1:4000/files/abc"
        );
        assert_eq!(opts.journal_target(), "dir:/data");
    }
}
