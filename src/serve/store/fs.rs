//! The default [`Store`]: uploads as plain files under `--data DIR`.
//!
//! ```text
//! DIR/uploads/<id>        the bytes received (never longer than the committed offset after a restart)
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
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncSeekExt as _;

use super::{
    Append, Appended, BodyError, BodyStream, ByteStream, Store, StoreError, StoreResult, UploadInfo, UploadState,
    suffixed,
};
use crate::durable;
use crate::serve::uploads::is_valid_id;
use crate::serve::verify::ChunkVerifier;
use crate::writeback::Writeback;

/// Body bytes gathered before one write to disk.
const BATCH: usize = 1 << 20;
/// Batches that may wait for the writer thread: bounds memory per PATCH to about 5 MiB.
const DEPTH: usize = 4;
/// Read buffer when streaming a file back.
const READ_CHUNK: usize = 256 << 10;

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
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
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

    /// Opens the data file positioned at `committed`, cutting off anything beyond it.
    fn open_at(path: &Path, committed: u64) -> io::Result<File> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len < committed {
            return Err(io::Error::other(format!(
                "{} holds {len} bytes, fewer than the committed {committed}",
                path.display()
            )));
        }
        if len > committed {
            file.set_len(committed)?;
        }
        file.seek(SeekFrom::Start(committed))?;
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
                        ..info
                    },
                )
            })
            .await
        }
        .boxed()
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        mut append: Append,
        mut body: BodyStream,
    ) -> BoxFuture<'a, StoreResult<Appended>> {
        async move {
            let data = self.data_path(id)?;
            let info_path = self.info_path(id)?;
            let mut info = self.info(id).await?;
            if info.offset != append.offset {
                return Err(StoreError::OffsetMismatch {
                    expected: append.offset,
                    actual: info.offset,
                });
            }
            let committed = info.offset;
            let mut verifier = ChunkVerifier::new(&mut append);
            // The whole-file digest runs on its own thread, beside the chunk digest and the
            // writes: two MD5 streams need not share one core.
            let running = verifier.take_running().map(|mut h| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
                let hashing = tokio::task::spawn_blocking(move || {
                    while let Some(batch) = rx.blocking_recv() {
                        batch.iter().for_each(|b| h.update(b));
                    }
                    h
                });
                (tx, hashing)
            });

            // The writer thread hashes and writes; this task reads the network. Frames travel
            // in batches of about 1 MiB, without copying, and are written with one writev each.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
            let path = data.clone();
            let writer = tokio::task::spawn_blocking(move || {
                let mut file = match Self::open_at(&path, committed) {
                    Ok(f) => f,
                    Err(e) => return (verifier, None, Err(e)),
                };
                let mut writeback = Writeback::new(committed, BATCH as u64);
                while let Some(batch) = rx.blocking_recv() {
                    for bytes in &batch {
                        if let Err(refused) = verifier.feed(bytes) {
                            return (verifier, Some(refused), Ok((file, writeback)));
                        }
                    }
                    if let Err(e) = write_batch(&mut file, &batch).and_then(|n| writeback.wrote(&file, n)) {
                        return (verifier, None, Err(e));
                    }
                }
                (verifier, None, Ok((file, writeback)))
            });
            let mut ended: Option<BodyError> = None;
            let mut batch = Vec::new();
            let mut batched = 0;
            while let Some(next) = body.next().await {
                match next {
                    Ok(bytes) => {
                        batched += bytes.len();
                        batch.push(bytes);
                        if batched >= BATCH {
                            batched = 0;
                            if let Some((rtx, _)) = &running {
                                let _ = rtx.send(batch.clone()).await;
                            }
                            if tx.send(std::mem::take(&mut batch)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                if let Some((rtx, _)) = &running {
                    let _ = rtx.send(batch.clone()).await;
                }
                let _ = tx.send(batch).await;
            }
            drop(tx);
            // Every byte the writer commits went to the running digest too (and on any refusal
            // or failure nothing is committed and the digest is dropped).
            let running = match running {
                Some((rtx, hashing)) => {
                    drop(rtx);
                    hashing.await.ok()
                }
                None => None,
            };
            let (verifier, refused, file) = writer
                .await
                .map_err(|e| StoreError::Io(io::Error::other(format!("writer task failed: {e}"))))?;
            let outcome = match file {
                Err(e) => Err(StoreError::from(e)),
                Ok(file) => verifier.finish(refused.or(ended)).map(|mut v| {
                    v.running = running;
                    (file, v)
                }),
            };
            blocking(move || {
                let truncate = |e: StoreError| {
                    if let Ok(f) = OpenOptions::new().write(true).open(&data) {
                        let _ = f.set_len(committed).and_then(|()| f.sync_data());
                    }
                    Err(e)
                };
                let ((file, mut writeback), verdict) = match outcome {
                    Ok(ok) => ok,
                    Err(e) => return truncate(e),
                };
                if let Err(e) = file.sync_data() {
                    return truncate(e.into());
                }
                writeback.release_all(&file);
                drop(file);
                info.offset = committed + verdict.received;
                info.expires = append.expires;
                if let Err(e) = Self::write_info(&info_path, &info) {
                    return truncate(e);
                }
                Ok(Appended {
                    info,
                    interrupted: verdict.interrupted,
                    running: verdict.running,
                })
            })
            .await
        }
        .boxed()
    }

    fn concatenate<'a>(&'a self, mut info: UploadInfo, parts: &'a [String]) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        let store = self.clone();
        let parts = parts.to_vec();
        async move {
            let data = store.data_path(&info.id)?;
            let info_path = store.info_path(&info.id)?;
            blocking(move || {
                let mut sources = Vec::with_capacity(parts.len());
                for p in &parts {
                    let part = Self::read_info(&store.info_path(p)?)?;
                    sources.push((store.data_path(p)?, part.offset));
                }
                let mut out = match OpenOptions::new().write(true).create_new(true).open(&data) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StoreError::Exists),
                    Err(e) => return Err(e.into()),
                };
                let r = (|| {
                    let mut total = 0u64;
                    for (path, len) in &sources {
                        let copied = io::copy(&mut File::open(path)?.take(*len), &mut out)?;
                        if copied != *len {
                            return Err(StoreError::Io(io::Error::other(format!(
                                "{} is shorter than its offset",
                                path.display()
                            ))));
                        }
                        total += copied;
                    }
                    out.sync_all()?;
                    info.length = Some(total);
                    info.offset = total;
                    Self::write_info(&info_path, &info)?;
                    Ok(info)
                })();
                if r.is_err() {
                    let _ = fs::remove_file(&data);
                }
                r
            })
            .await
        }
        .boxed()
    }

    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        async move {
            let mut file = tokio::fs::File::open(self.data_path(id)?).await?;
            file.seek(SeekFrom::Start(range.start)).await?;
            let reader = file.take(range.end.saturating_sub(range.start));
            Ok(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed())
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
