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

mod append;

/// Body bytes gathered before one write to disk.
const BATCH: usize = 1 << 20;
/// Batches that may wait for the writer thread: bounds memory per PATCH to about 5 MiB.
const DEPTH: usize = 4;
/// Read buffer when streaming a file back.
const READ_CHUNK: usize = 256 << 10;

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

    fn append<'a>(&'a self, id: &'a str, append: Append, body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        self.append_chunk(id, append, body).boxed()
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
