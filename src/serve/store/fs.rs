//! The default [`Store`]: uploads as plain files under `--data DIR`.
//!
//! ```text
//! DIR/uploads/<id>        the bytes received (never longer than the committed offset after a restart;
//!                         a partial upload's appears with its first byte, and one written into its
//!                         final upload's file has none)
//! DIR/uploads/<id>.info   UploadInfo as JSON, replaced atomically (temp + fsync + rename + fsync dir)
//! DIR/files/<name>        completed uploads, published under their sanitised `filename` (hard links)
//! ```
//!
//! An append writes past the committed offset, fsyncs the data, and only then records the new
//! offset in the info file; a failed or refused body is truncated away, and so is anything beyond
//! the committed offset that a crash left behind. Nothing is ever written outside `DIR`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::Range;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncSeekExt as _;

use super::{
    Append, Appended, BodyError, BodyStream, ByteStream, HeldPrefix, Store, StoreError, StoreResult, UploadInfo,
    UploadState, suffixed,
};
use crate::durable;
use crate::serve::digest::DigestFeed;
use crate::serve::uploads::is_valid_id;
use crate::serve::verify::{ChunkVerifier, Judged};
use crate::writeback::Writeback;

/// Body bytes gathered before one write to disk.
const BATCH: usize = 1 << 20;
/// Batches that may wait for the writer thread: bounds memory per PATCH to about 5 MiB.
const DEPTH: usize = 4;
/// Read buffer when streaming a file back.
const READ_CHUNK: usize = 256 << 10;

/// Where an append's chunk is verified: on a thread of its own when it carries a checksum to
/// hash, inline (counting bytes) when it does not.
enum Verifying {
    Inline(ChunkVerifier),
    OnThread(
        tokio::sync::mpsc::Sender<Vec<Bytes>>,
        tokio::task::JoinHandle<Result<ChunkVerifier, BodyError>>,
    ),
}

/// Where an upload's bytes are written and read.
struct Location {
    path: PathBuf,
    /// Position of the upload's first byte in `path`.
    base: u64,
    /// `path` is a final upload's data, shared with its other parts.
    shared: bool,
}

/// Uploads as files under one directory.
#[derive(Clone, Debug)]
pub struct FsStore {
    uploads: PathBuf,
    files: PathBuf,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> StoreResult<T> + Send + 'static) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(io::Error::other(format!("storage task failed: {e}"))))?
}

/// Writes all of `batch` (one `writev` when the kernel takes it whole); returns the bytes written.
fn write_batch(file: &mut File, batch: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    let mut total = 0u64;
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Reads `len` bytes of `path` from `at` in blocks and hands each to `feed`.
fn feed_from_file(
    path: &Path,
    at: u64,
    len: u64,
    mut feed: impl FnMut(&[u8]) -> Result<(), BodyError>,
) -> io::Result<()> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; (len.min(BATCH as u64)) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at + done)?;
        feed(&buf[..n]).map_err(io::Error::other)?;
        done += n as u64;
    }
    Ok(())
}

impl FsStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let store = FsStore {
            uploads: root.join("uploads"),
            files: root.join("files"),
        };
        fs::create_dir_all(&store.uploads)?;
        fs::create_dir_all(&store.files)?;
        Ok(store)
    }

    /// Where published files go (`DIR/files`).
    pub fn files_dir(&self) -> &Path {
        &self.files
    }

    fn data_path(&self, id: &str) -> StoreResult<PathBuf> {
        if !is_valid_id(id) {
            return Err(StoreError::NotFound);
        }
        Ok(self.uploads.join(id))
    }

    fn info_path(&self, id: &str) -> StoreResult<PathBuf> {
        if !is_valid_id(id) {
            return Err(StoreError::NotFound);
        }
        Ok(self.uploads.join(format!("{id}.info")))
    }

    fn write_info(path: &Path, info: &UploadInfo) -> StoreResult<()> {
        let json = serde_json::to_vec_pretty(info).map_err(|e| StoreError::Io(io::Error::other(e)))?;
        durable::write_atomic(path, &json)?;
        Ok(())
    }

    fn read_info(path: &Path) -> StoreResult<UploadInfo> {
        let bytes = fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Io(io::Error::other(format!("{}: {e}", path.display()))))
    }

    /// Where an upload's bytes live: its own data file from 0, or (a partial placed into its
    /// final upload) the final's data file from `placed_at`.
    fn locate(&self, info: &UploadInfo) -> StoreResult<Location> {
        match (&info.final_upload, info.placed_at) {
            (Some(f), Some(base)) => Ok(Location {
                path: self.data_path(f)?,
                base,
                shared: true,
            }),
            _ => Ok(Location {
                path: self.data_path(&info.id)?,
                base: 0,
                shared: false,
            }),
        }
    }

    /// The file and the byte range in it of bytes `range` of an upload (cut to what it
    /// holds); `None` when that is nothing (a partial upload may have no file yet).
    async fn span(&self, id: &str, range: Range<u64>) -> StoreResult<Option<(PathBuf, Range<u64>)>> {
        let info = self.info(id).await?;
        let end = range.end.min(info.offset);
        if range.start >= end {
            return Ok(None);
        }
        let Location { path, base, .. } = self.locate(&info)?;
        Ok(Some((path, base + range.start..base + end)))
    }

    /// Opens a final upload's data file (which other parts write too) positioned at `at`.
    /// Nothing is cut off: what lies past a part's committed bytes is that part's to overwrite.
    fn open_shared(path: &Path, at: u64) -> io::Result<File> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        file.seek(SeekFrom::Start(at))?;
        Ok(file)
    }

    /// Opens the data file positioned at `at` (the committed bytes, and the held ones a
    /// continued chunk keeps), cutting off anything beyond it.
    fn open_at(path: &Path, at: u64) -> io::Result<File> {
        // Nothing committed yet: the file may not exist (a partial upload's first byte).
        let mut file = OpenOptions::new().read(true).write(true).create(at == 0).open(path)?;
        let len = file.metadata()?.len();
        if len < at {
            return Err(io::Error::other(format!(
                "{} holds {len} bytes, fewer than the {at} it should",
                path.display()
            )));
        }
        if len > at {
            file.set_len(at)?;
        }
        file.seek(SeekFrom::Start(at))?;
        Ok(file)
    }
}

impl Store for FsStore {
    fn create(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        let paths = self
            .data_path(&info.id)
            .and_then(|d| Ok((d, self.info_path(&info.id)?)));
        async move {
            let (data, info_path) = paths?;
            blocking(move || {
                if info.is_partial() {
                    // A part of a parallel upload gets its data file with its first byte (most
                    // are written into their final upload's file and never need one).
                    if data.exists() {
                        return Err(StoreError::Exists);
                    }
                    return Self::write_info(&info_path, &info);
                }
                let file = match OpenOptions::new().write(true).create_new(true).open(&data) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StoreError::Exists),
                    Err(e) => return Err(e.into()),
                };
                let r = file
                    .sync_all()
                    .map_err(StoreError::from)
                    .and_then(|()| Self::write_info(&info_path, &info));
                if r.is_err() {
                    let _ = fs::remove_file(&data);
                }
                r
            })
            .await
        }
        .boxed()
    }

    fn info<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        let path = self.info_path(id);
        async move {
            let path = path?;
            blocking(move || Self::read_info(&path)).await
        }
        .boxed()
    }

    fn update(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        let path = self.info_path(&info.id);
        async move {
            let path = path?;
            blocking(move || {
                let old = Self::read_info(&path)?;
                Self::write_info(
                    &path,
                    &UploadInfo {
                        offset: old.offset,
                        held: old.held,
                        ..info
                    },
                )
            })
            .await
        }
        .boxed()
    }

    fn append<'a>(&'a self, id: &'a str, append: Append, mut body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        async move {
            let info_path = self.info_path(id)?;
            let mut info = self.info(id).await?;
            if info.offset != append.offset {
                return Err(StoreError::OffsetMismatch {
                    expected: append.offset,
                    actual: info.offset,
                });
            }
            let committed = info.offset;
            let prefix = append.prefix_len();
            let held = info.held.as_ref().map_or(0, |h| h.len);
            if prefix > 0 && held != prefix {
                return Err(StoreError::PrefixMismatch {
                    held,
                    continues: prefix,
                });
            }
            if prefix == 0 && info.held.is_some() {
                // A chunk sent anew replaces the held bytes: they stop counting before they are
                // overwritten, so the info never names bytes the file no longer has.
                info.held = None;
                let (path, record) = (info_path.clone(), info.clone());
                blocking(move || Self::write_info(&path, &record)).await?;
            }
            let Location {
                path: data,
                base,
                shared,
            } = self.locate(&info)?;
            // Three stages run side by side: this task reads the network and hands batches of
            // about 1 MiB (frames, not copies) to a writer thread (one writev each) and, when the
            // chunk carries a checksum, to a hashing thread; the whole-file digest (if any)
            // follows on its own task (see `serve::digest`).
            let running = append.running.clone();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
            let path = data.clone();
            let partial = info.is_partial();
            let writer = tokio::task::spawn_blocking(move || {
                let mut file = if shared {
                    Self::open_shared(&path, base + committed + prefix)?
                } else {
                    Self::open_at(&path, committed + prefix)?
                };
                let mut writeback = Writeback::new(base + committed + prefix, BATCH as u64);
                // A partial upload's bytes are copied into its final upload later: keep them
                // cached. One placed into its final needs no copy (its follower takes the bytes
                // from memory): its cache is recycled like any upload's.
                if partial && !shared {
                    writeback = writeback.keeping_cache();
                }
                while let Some(batch) = rx.blocking_recv() {
                    let n = write_batch(&mut file, &batch)?;
                    writeback.wrote(&file, n)?;
                }
                Ok::<_, io::Error>((file, writeback))
            });
            // Without a checksum the verifier only counts bytes (it cannot refuse: the length is
            // enforced below), which needs no thread of its own.
            let mut verifier = ChunkVerifier::new(&append);
            // The held bytes of a continued chunk whose digest state was lost (a restart) are
            // hashed again from the file, before the body.
            let rehash = verifier.needs_prefix(&append);
            let held_at = base + committed;
            let held_in = data.clone();
            let mut hashing = if append.checksum.is_some() {
                let (htx, mut hrx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
                let work = move || {
                    if rehash > 0 {
                        let fed = feed_from_file(&held_in, held_at, rehash, |block| verifier.feed(block));
                        if let Err(e) = fed {
                            return Err(BodyError::Interrupted(format!("the held bytes cannot be read: {e}")));
                        }
                    }
                    while let Some(batch) = hrx.blocking_recv() {
                        for bytes in &batch {
                            verifier.feed(bytes)?;
                        }
                    }
                    Ok::<_, BodyError>(verifier)
                };
                let task = if append.yielding {
                    crate::serve::digest::spawn_yielding(work)
                } else {
                    tokio::task::spawn_blocking(work)
                };
                Verifying::OnThread(htx, task)
            } else {
                Verifying::Inline(verifier)
            };
            let started = std::time::Instant::now();
            let mut first_byte = None;
            let mut ended: Option<BodyError> = None;
            let mut batch = Vec::new();
            let mut batched = 0;
            let mut total = prefix;
            loop {
                let next = body.next().await;
                let last = match next {
                    None => true,
                    Some(Err(e)) => {
                        ended = Some(e);
                        true
                    }
                    Some(Ok(bytes)) => {
                        first_byte.get_or_insert_with(|| started.elapsed());
                        total += bytes.len() as u64;
                        if total > append.max_len {
                            // Refused whole before a byte of the excess is written.
                            ended = Some(BodyError::TooLong);
                            break;
                        }
                        if let Verifying::Inline(v) = &mut hashing {
                            let _ = v.feed(&bytes);
                        }
                        batched += bytes.len();
                        batch.push(bytes);
                        false
                    }
                };
                if (last || batched >= BATCH) && !batch.is_empty() {
                    batched = 0;
                    if let Some(feed) = &running {
                        feed.feed(batch.clone()).await;
                    }
                    if let Verifying::OnThread(htx, _) = &hashing {
                        let _ = htx.send(batch.clone()).await;
                    }
                    if tx.send(std::mem::take(&mut batch)).await.is_err() {
                        break; // the writer failed; its error is collected below
                    }
                }
                if last {
                    break;
                }
            }
            drop(tx);
            let body_end = started.elapsed();
            // Every byte the writer commits went to the running digest too; on any refusal or
            // failure nothing is committed and the caller rolls the digest back.
            drop(running);
            let failed =
                |e: tokio::task::JoinError| StoreError::Io(io::Error::other(format!("storage task failed: {e}")));
            // Both tasks are waited for, whatever happened to either: no write may land after
            // this append gives up the upload.
            let verifier = match hashing {
                Verifying::Inline(v) => Ok(Ok(v)),
                Verifying::OnThread(htx, task) => {
                    drop(htx);
                    task.await
                }
            };
            let hashed = started.elapsed();
            let written = writer.await;
            let stored = started.elapsed();
            let outcome = match (written, verifier) {
                (Err(e), _) | (_, Err(e)) => Err(failed(e)),
                (Ok(Err(e)), _) => Err(StoreError::from(e)),
                (Ok(Ok(_)), Ok(Err(refused))) => Err(StoreError::from(refused)),
                (Ok(Ok(file)), Ok(Ok(verifier))) => verifier.finish(ended, append.keep_prefix).map(|v| (file, v)),
            };
            blocking(move || {
                let truncate = |info: &mut UploadInfo, e: StoreError| {
                    // Held bytes stop counting before they are cut off.
                    if info.held.take().is_some() && Self::write_info(&info_path, info).is_err() {
                        return Err(e);
                    }
                    // A shared file is not cut: past this part's committed bytes lies either
                    // nothing counted or the next part's bytes.
                    if !shared && let Ok(f) = OpenOptions::new().write(true).open(&data) {
                        let _ = f.set_len(committed).and_then(|()| f.sync_data());
                    }
                    Err(e)
                };
                let ((file, mut writeback), judged) = match outcome {
                    Ok(ok) => ok,
                    Err(e) => return truncate(&mut info, e),
                };
                if let Err(e) = file.sync_data() {
                    return truncate(&mut info, e.into());
                }
                writeback.release_all(&file);
                drop(file);
                let synced = started.elapsed();
                let verdict = match judged {
                    Judged::Commit(verdict) => verdict,
                    Judged::Hold { len, hasher, cut } => {
                        info.held = append.checksum.as_ref().map(|c| HeldPrefix {
                            len,
                            checksum: c.to_header(),
                        });
                        info.expires = append.expires;
                        if let Err(e) = Self::write_info(&info_path, &info) {
                            return truncate(&mut info, e);
                        }
                        tracing::debug!(id = %info.id, held = len, "cut off: holding the chunk's first bytes");
                        return Ok(Appended {
                            info,
                            interrupted: Some(cut),
                            held: Some(hasher),
                        });
                    }
                };
                append.commit(&mut info, verdict.received);
                if let Err(e) = Self::write_info(&info_path, &info) {
                    // If the new info got in place (only its directory's fsync failed), the bytes
                    // it counts must stay: cutting them off would leave an info that claims more
                    // than the file holds.
                    return match Self::read_info(&info_path) {
                        Ok(now) if now.offset == info.offset => Err(e),
                        _ => truncate(&mut info, e),
                    };
                }
                tracing::trace!(
                    id = %info.id,
                    bytes = verdict.received,
                    first_byte = ?first_byte,
                    body_end = ?body_end,
                    hashed = ?hashed,
                    stored = ?stored,
                    synced = ?synced,
                    recorded = ?started.elapsed(),
                    "append committed"
                );
                Ok(Appended {
                    info,
                    interrupted: verdict.interrupted,
                    held: None,
                })
            })
            .await
        }
        .boxed()
    }

    fn concatenate<'a>(
        &'a self,
        mut info: UploadInfo,
        parts: &'a [String],
        running: Option<DigestFeed>,
    ) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        let store = self.clone();
        let parts = parts.to_vec();
        async move {
            let data = store.data_path(&info.id)?;
            let info_path = store.info_path(&info.id)?;
            let runtime = tokio::runtime::Handle::current();
            blocking(move || {
                // (file, where the part starts in it, its bytes, where they go in the final) of
                // each part not already in place.
                let mut sources = Vec::with_capacity(parts.len());
                let mut total = 0u64;
                for p in &parts {
                    let part = Self::read_info(&store.info_path(p)?)?;
                    let in_place =
                        part.final_upload.as_deref() == Some(info.id.as_str()) && part.placed_at == Some(total);
                    if !in_place && part.offset > 0 {
                        let from = store.locate(&part)?;
                        sources.push((from.path, from.base, part.offset, total));
                    }
                    total = total.saturating_add(part.offset);
                }
                // A final upload created before its parts were complete exists already and
                // may hold the bytes of its placed parts.
                let early = info_path.exists();
                let mut out = if early {
                    OpenOptions::new().write(true).open(&data)?
                } else {
                    match OpenOptions::new().write(true).create_new(true).open(&data) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StoreError::Exists),
                        Err(e) => return Err(e.into()),
                    }
                };
                // One pass: each block read from a part is written to the final upload and
                // handed to its whole-file digest, so the check at the end need not read the
                // file again.
                let r = (|| {
                    for (path, base, len, at) in &sources {
                        let mut part = File::open(path)?;
                        part.seek(SeekFrom::Start(*base))?;
                        out.seek(SeekFrom::Start(*at))?;
                        let mut writeback = Writeback::new(*at, BATCH as u64);
                        let mut left = *len;
                        while left > 0 {
                            let mut block = vec![0u8; left.min(BATCH as u64) as usize];
                            part.read_exact(&mut block).map_err(|e| {
                                StoreError::Io(io::Error::new(
                                    e.kind(),
                                    format!("{} is shorter than its offset: {e}", path.display()),
                                ))
                            })?;
                            out.write_all(&block)?;
                            writeback.wrote(&out, block.len() as u64)?;
                            left -= block.len() as u64;
                            if let Some(feed) = &running {
                                runtime.block_on(feed.feed(vec![Bytes::from(block)]));
                            }
                        }
                        out.sync_data()?;
                        writeback.release_all(&out);
                    }
                    out.set_len(total)?;
                    out.sync_all()?;
                    info.length = Some(total);
                    info.offset = total;
                    Self::write_info(&info_path, &info)?;
                    Ok(info)
                })();
                if r.is_err() && !early {
                    let _ = fs::remove_file(&data);
                }
                r
            })
            .await
        }
        .boxed()
    }

    fn link<'a>(&'a self, part: &'a str, final_id: &'a str, base: u64) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        let paths = self
            .info_path(part)
            .and_then(|i| Ok((i, self.data_path(part)?, self.data_path(final_id)?)));
        let final_id = final_id.to_string();
        async move {
            let (info_path, data, final_data) = paths?;
            blocking(move || {
                let mut info = Self::read_info(&info_path)?;
                if info.final_upload.is_some() {
                    return Ok(info);
                }
                info.final_upload = Some(final_id);
                let place = info.offset == 0
                    && info.held.is_none()
                    && info.state == UploadState::Receiving
                    && final_data.exists();
                if place {
                    info.placed_at = Some(base);
                }
                Self::write_info(&info_path, &info)?;
                if place {
                    // Its bytes go to the final's data from now on; the empty file is not used.
                    let _ = fs::remove_file(&data);
                }
                Ok(info)
            })
            .await
        }
        .boxed()
    }

    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        async move {
            let Some((path, range)) = self.span(id, range).await? else {
                return Ok(futures_util::stream::empty().boxed());
            };
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(SeekFrom::Start(range.start)).await?;
            let reader = file.take(range.end - range.start);
            Ok(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed())
        }
        .boxed()
    }

    fn read_once<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        async move {
            let Some((path, range)) = self.span(id, range).await? else {
                return Ok(futures_util::stream::empty().boxed());
            };
            let file = std::sync::Arc::new(blocking(move || Ok(File::open(path)?)).await?);
            let end = range.end;
            // Each block is dropped from the page cache once read: the cache a big upload
            // passes through stays a few MiB that are used over and over (see `writeback`).
            let blocks = futures_util::stream::try_unfold(range.start, move |at| {
                let file = std::sync::Arc::clone(&file);
                async move {
                    if at >= end {
                        return Ok(None);
                    }
                    let len = (end - at).min(BATCH as u64) as usize;
                    let block = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, at)?;
                        crate::writeback::drop_cached(&file, at, len as u64);
                        Ok::<_, io::Error>(Bytes::from(buf))
                    })
                    .await
                    .map_err(io::Error::other)??;
                    Ok(Some((block, at + len as u64)))
                }
            });
            Ok(blocks.boxed())
        }
        .boxed()
    }

    fn publish<'a>(&'a self, id: &'a str, name: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        let paths = self.data_path(id).and_then(|d| Ok((d, self.info_path(id)?)));
        let files = self.files.clone();
        let name = name.to_string();
        async move {
            let (data, info_path) = paths?;
            blocking(move || {
                let mut n = 0;
                let chosen = loop {
                    let candidate = suffixed(&name, n);
                    match fs::hard_link(&data, files.join(&candidate)) {
                        Ok(()) => break candidate,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                        Err(e) => return Err(e.into()),
                    }
                };
                durable::fsync_dir(&files)?;
                let mut info = Self::read_info(&info_path)?;
                info.published = Some(chosen.clone());
                Self::write_info(&info_path, &info)?;
                Ok(chosen)
            })
            .await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let paths = self.data_path(id).and_then(|d| Ok((d, self.info_path(id)?)));
        let files = self.files.clone();
        let uploads = self.uploads.clone();
        async move {
            let (data, info_path) = paths?;
            blocking(move || {
                let info = Self::read_info(&info_path)?;
                if let (Some(name), Ok(ours)) = (&info.published, fs::metadata(&data)) {
                    // Remove the published name only while it is still our file.
                    let published = files.join(name);
                    if let Ok(theirs) = fs::metadata(&published)
                        && theirs.ino() == ours.ino()
                        && theirs.dev() == ours.dev()
                    {
                        fs::remove_file(&published)?;
                    }
                }
                match fs::remove_file(&data) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                fs::remove_file(&info_path)?;
                durable::fsync_dir(&uploads)?;
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let paths = self.data_path(id).and_then(|d| Ok((d, self.info_path(id)?)));
        async move {
            let (data, info_path) = paths?;
            blocking(move || {
                let mut info = Self::read_info(&info_path)?;
                info.state = UploadState::Expired;
                Self::write_info(&info_path, &info)?;
                match fs::remove_file(&data) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                }
            })
            .await
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        let dir = self.uploads.clone();
        async move {
            blocking(move || {
                let mut ids = Vec::new();
                for entry in fs::read_dir(&dir)? {
                    let name = entry?.file_name();
                    if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".info"))
                        && is_valid_id(id)
                    {
                        ids.push(id.to_string());
                    }
                }
                ids.sort();
                Ok(ids)
            })
            .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_empty_frames_writes_nothing_and_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        assert_eq!(write_batch(&mut file, &[Bytes::new()]).unwrap(), 0);
        let batch = [Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"c")];
        assert_eq!(write_batch(&mut file, &batch).unwrap(), 3);
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abc");
    }
}
