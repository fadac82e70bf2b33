//! `robusto status` and `robusto get`: ask an upload's state (the robusto status endpoint, or
//! what HEAD says on any tus server), and download a completed upload with Range requests into
//! `FILE.partial`, resumable, verifying the whole-file MD5 from the upload's `checksum` metadata
//! before renaming it into place.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use md5::Digest as _;
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::retry::{Exhausted, Retrier, RetryPolicy, Stopped};
use super::session::{Session, SessionConfig, SessionError, UploadState};
use crate::durable;
use crate::fingerprint::Md5;
use crate::protocol::{self, Checksum, ChecksumAlgorithm, Status, StatusReport, meta};

/// What went wrong asking about or fetching an upload.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Resumable: the link stayed bad past the retry budget.
    #[error("giving up after {attempts} failed attempts (last: {reason}); run the same command again to continue")]
    RetriesExhausted {
        /// Failed attempts in a row.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The upload is not complete on the server yet.
    #[error("{url} is not complete: the server has {offset} of {length} bytes")]
    Incomplete {
        /// The upload.
        url: String,
        /// Bytes the server has.
        offset: u64,
        /// The upload's length, if known.
        length: String,
    },
    /// The downloaded bytes do not match the upload's checksum.
    #[error("the download's md5 is {found}, the upload's metadata says {expected}; {left}")]
    Mismatch {
        /// From the metadata.
        expected: Md5,
        /// Of the bytes received.
        found: Md5,
        /// What became of the bytes received.
        left: &'static str,
    },
    /// A download to standard output that would have to start over: what was written cannot be
    /// taken back.
    #[error(
        "{url}: the server ignores Range requests, and the bytes already written to standard output cannot be taken back; download to a file with -o FILE"
    )]
    CannotRestart {
        /// The upload.
        url: String,
    },
    /// The server refused or does not have the upload.
    #[error("{url}: {source}")]
    Server {
        /// The URL.
        url: String,
        /// What the server said.
        source: SessionError,
    },
    /// Local I/O failed.
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl GetError {
    /// Whether running the same command again may succeed (exit 75).
    pub fn is_resumable(&self) -> bool {
        matches!(self, GetError::RetriesExhausted { .. })
    }
}

/// Options of `robusto get` / `robusto status`.
#[derive(Clone, Debug)]
pub struct GetOptions {
    /// The upload's URL.
    pub url: Url,
    /// Backoff and budget (reset whenever bytes arrive).
    pub retry: RetryPolicy,
    /// No progress for this long fails a request.
    pub stall_timeout: Duration,
    /// Bearer token.
    pub token: Option<String>,
    /// Certificate authorities trusted besides the system's (`--ca-cert`).
    pub roots: super::transport::ExtraRoots,
}

/// What `get` fetched.
#[derive(Clone, Debug)]
pub struct GetReport {
    /// Bytes in the file.
    pub bytes: u64,
    /// The file's MD5.
    pub md5: Md5,
    /// Whether the MD5 was checked against the upload's metadata.
    pub verified: bool,
}

fn session(opts: &GetOptions) -> Result<Session, GetError> {
    Session::new(
        SessionConfig {
            stall_timeout: opts.stall_timeout,
            token: opts.token.clone(),
            roots: opts.roots.clone(),
        },
        None,
    )
    .map_err(|source| GetError::Server {
        url: opts.url.to_string(),
        source,
    })
}

/// Runs `attempt` until it succeeds, retrying transient failures within the retry budget.
async fn retrying<T>(
    opts: &GetOptions,
    url: &Url,
    attempt: impl AsyncFnMut() -> Result<T, SessionError>,
) -> Result<T, GetError> {
    Retrier::new(opts.retry, None)
        .run(attempt)
        .await
        .map_err(|stopped| match stopped {
            Stopped::Exhausted(e) => e.into(),
            Stopped::Failed(source) => GetError::Server {
                url: url.to_string(),
                source,
            },
        })
}

async fn head(opts: &GetOptions, s: &Session) -> Result<UploadState, GetError> {
    retrying(opts, &opts.url, async || s.head(&opts.url).await).await
}

impl From<Exhausted> for GetError {
    fn from(e: Exhausted) -> Self {
        GetError::RetriesExhausted {
            attempts: e.attempts,
            reason: e.reason,
        }
    }
}

/// The upload's status as JSON: the robusto status endpoint's answer, or (any tus server) a
/// report derived from HEAD with `offset` and `length` beside it.
pub async fn status(opts: &GetOptions) -> Result<serde_json::Value, GetError> {
    let s = session(opts)?;
    if let Some(report) = retrying(opts, &opts.url, async || s.status(&opts.url).await).await? {
        return Ok(serde_json::to_value(report).unwrap_or_default());
    }
    let h = head(opts, &s).await?;
    let chunk_size = h
        .metadata
        .as_ref()
        .and_then(|m| m.get_str(meta::CHUNK_SIZE))
        .and_then(|v| v.parse().ok())
        .unwrap_or(protocol::DEFAULT_CHUNK_SIZE);
    let offset = h.offset.unwrap_or(0);
    let report = match (h.offset, h.length) {
        (Some(o), Some(l)) if o == l => StatusReport {
            status: Status::Complete,
            value: opts.url.to_string(),
        },
        (Some(0), _) | (None, _) => StatusReport {
            status: Status::New,
            value: String::new(),
        },
        _ => StatusReport {
            status: Status::Partial,
            value: protocol::chunks_received(offset, chunk_size),
        },
    };
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("offset".into(), offset.into());
        obj.insert("length".into(), h.length.map_or(serde_json::Value::Null, Into::into));
    }
    Ok(v)
}

/// Where a download goes.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A file, written through `FILE.partial` (resumable), renamed into place once checked.
    File(&'a std::path::Path),
    /// Standard output (`get -o -`): streamed as it arrives, checked at the end.
    Stdout,
}

/// Where the bytes of a download are written as they arrive.
enum Sink {
    File {
        file: tokio::fs::File,
        partial: PathBuf,
        output: PathBuf,
    },
    Stdout(tokio::io::Stdout),
}

impl Sink {
    fn io(&self) -> impl FnOnce(std::io::Error) -> GetError + use<> {
        let path = match self {
            Sink::File { partial, .. } => partial.clone(),
            Sink::Stdout(_) => PathBuf::from("standard output"),
        };
        move |source| GetError::Io { path, source }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), GetError> {
        let io = self.io();
        match self {
            Sink::File { file, .. } => file.write_all(bytes).await,
            Sink::Stdout(out) => out.write_all(bytes).await,
        }
        .map_err(io)
    }

    async fn flush(&mut self) -> Result<(), GetError> {
        let io = self.io();
        match self {
            Sink::File { file, .. } => file.flush().await,
            Sink::Stdout(out) => out.flush().await,
        }
        .map_err(io)
    }

    /// Cuts what was written back to nothing, for a server that ignores Range.
    async fn restart(&mut self, url: &Url) -> Result<(), GetError> {
        let io = self.io();
        match self {
            Sink::File { file, .. } => file.set_len(0).await.map_err(io),
            Sink::Stdout(_) => Err(GetError::CannotRestart { url: url.to_string() }),
        }
    }
}

/// Downloads the completed upload into `output` (through `output.partial`, resumable), checks the
/// whole-file MD5 against the upload's `checksum` metadata, then renames it into place.
pub async fn get(opts: &GetOptions, output: &std::path::Path) -> Result<GetReport, GetError> {
    get_to(opts, Target::File(output)).await
}

/// Downloads the completed upload to `target`, checking the whole-file MD5 against the upload's
/// `checksum` metadata: a file is renamed into place only once checked; standard output gets the
/// bytes as they arrive (a mismatch is then reported at the end, exit 1).
pub async fn get_to(opts: &GetOptions, target: Target<'_>) -> Result<GetReport, GetError> {
    let s = session(opts)?;
    let h = head(opts, &s).await?;
    let length = match (h.offset, h.length) {
        (Some(o), Some(l)) if o == l => l,
        (o, l) => {
            return Err(GetError::Incomplete {
                url: opts.url.to_string(),
                offset: o.unwrap_or(0),
                length: l.map_or("an unknown number of".into(), |l| l.to_string()),
            });
        }
    };
    let expected = h
        .metadata
        .as_ref()
        .and_then(|m| m.get_str(meta::CHECKSUM))
        .and_then(|c| Checksum::parse(c).ok())
        .filter(|c| c.algorithm == ChecksumAlgorithm::Md5)
        .and_then(|c| c.digest.try_into().ok().map(Md5));
    if expected.is_none() {
        tracing::warn!("the upload carries no md5 checksum metadata: the download cannot be verified");
    }
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| GetError::Io { path, source }
    };
    // The MD5 follows the file as it is written, on a thread of its own, so the check at the
    // end need not read the whole file again: first what an earlier run left, then each piece.
    let (hash, hashing) = running_md5();
    let mut have = 0;
    let mut sink = match target {
        Target::Stdout => Sink::Stdout(tokio::io::stdout()),
        Target::File(output) => {
            let partial = durable::partial_path(output);
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&partial)
                .await
                .map_err(io(&partial))?;
            have = file.metadata().await.map_err(io(&partial))?.len();
            if have > length {
                file.set_len(0).await.map_err(io(&partial))?;
                have = 0;
            }
            if have > 0 {
                let mut f = tokio::fs::File::open(&partial).await.map_err(io(&partial))?;
                let mut left = have;
                while left > 0 {
                    let mut buf = vec![0u8; left.min(1 << 20) as usize];
                    f.read_exact(&mut buf).await.map_err(io(&partial))?;
                    left -= buf.len() as u64;
                    let _ = hash.send(HashMsg::Data(bytes::Bytes::from(buf))).await;
                }
            }
            Sink::File {
                file,
                partial,
                output: output.to_path_buf(),
            }
        }
    };
    let mut retry = Retrier::new(opts.retry, None);
    while have < length {
        let resp = match s.get_from(&opts.url, have).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                retry.wait_out(e.reason(), false).await?;
                continue;
            }
            Err(source) => {
                return Err(GetError::Server {
                    url: opts.url.to_string(),
                    source,
                });
            }
        };
        if resp.status() == StatusCode::OK && have > 0 {
            tracing::debug!("the server ignores Range: fetching from the start");
            sink.restart(&opts.url).await?;
            have = 0;
            let _ = hash.send(HashMsg::Reset).await;
        }
        let mut body = resp.bytes_stream();
        loop {
            match tokio::time::timeout(opts.stall_timeout, body.next()).await {
                Ok(Some(Ok(bytes))) => {
                    sink.write(&bytes).await?;
                    have += bytes.len() as u64;
                    let _ = hash.send(HashMsg::Data(bytes)).await;
                    retry.progressed();
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    retry.wait_out(e.to_string(), false).await?;
                    break;
                }
                Err(_) => {
                    retry.wait_out("stalled".into(), false).await?;
                    break;
                }
            }
        }
        sink.flush().await?;
    }
    drop(hash);
    let hashed = |partial: &std::path::Path, e: tokio::task::JoinError| {
        io(partial)(std::io::Error::other(format!("hashing failed: {e}")))
    };
    let (file, partial, output) = match sink {
        Sink::Stdout(_) => {
            let md5 = hashing
                .await
                .map_err(|e| hashed(std::path::Path::new("standard output"), e))?;
            if let Some(expected) = expected
                && expected != md5
            {
                return Err(GetError::Mismatch {
                    expected,
                    found: md5,
                    left: "the bytes written to standard output are not the upload's",
                });
            }
            return Ok(GetReport {
                bytes: have,
                md5,
                verified: expected.is_some(),
            });
        }
        Sink::File { file, partial, output } => (file, partial, output),
    };
    file.sync_all().await.map_err(io(&partial))?;
    drop(file);
    let md5 = hashing.await.map_err(|e| hashed(&partial, e))?;
    if let Some(expected) = expected
        && expected != md5
    {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(GetError::Mismatch {
            expected,
            found: md5,
            left: "the partial file was removed",
        });
    }
    let file = std::fs::File::open(&partial).map_err(io(&partial))?;
    durable::commit_file(file, &partial, &output).map_err(io(&output))?;
    Ok(GetReport {
        bytes: have,
        md5,
        verified: expected.is_some(),
    })
}

/// What the download hands its running MD5.
enum HashMsg {
    /// The next bytes of the file.
    Data(bytes::Bytes),
    /// The file was cut back to nothing: start over.
    Reset,
}

/// A running MD5 on a blocking thread: feed it, drop the sender, await the digest.
fn running_md5() -> (tokio::sync::mpsc::Sender<HashMsg>, tokio::task::JoinHandle<Md5>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HashMsg>(16);
    let task = super::spawn_io(move || {
        let mut h = md5::Md5::new();
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                HashMsg::Data(b) => h.update(&b),
                HashMsg::Reset => h = md5::Md5::new(),
            }
        }
        Md5(h.finalize().into())
    });
    (tx, task)
}

/// The completed uploads at `opts.url` (a robusto server's `/files/`) this token may see,
/// oldest first ([`crate::retention::oldest_first`], whatever order the server sent).
pub async fn list(opts: &GetOptions) -> Result<Vec<crate::protocol::Listed>, GetError> {
    let s = session(opts)?;
    let mut uploads = retrying(opts, &opts.url, async || s.list(&opts.url).await).await?;
    uploads.sort_by(crate::retention::oldest_first);
    Ok(uploads)
}

/// Deletes (tus termination) the upload at `url`.
pub async fn delete(opts: &GetOptions, url: &Url) -> Result<(), GetError> {
    let s = session(opts)?;
    retrying(opts, url, async || s.terminate(url).await).await
}
