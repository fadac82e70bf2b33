//! The packing pipeline, synchronous from end to end: walk → archive (zip | tar) → compress →
//! hashing writer → staging file → manifest. zip entries are compressed on worker threads and
//! appended in walk order by one writer; tar streams through one encoder (zstd with its own
//! workers). Memory is bounded by the window of entries in flight, never by the archive size.

pub mod archive;
pub mod compress;
pub mod staging;
pub mod walk;

use std::collections::VecDeque;
use std::io::{self, BufWriter};
use std::os::unix::fs::OpenOptionsExt;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use zip::write::{PreparedZipFile, ZipFileBuilder};
use zip::{ZipArchive, ZipWriter};

pub use archive::Format;
pub use compress::{Codec, Compression};
pub use walk::WalkOptions;

use crate::fingerprint::{HashingWriter, PatchingHashingWriter};
use crate::manifest::{self, Manifest, ManifestError, Skipped, SourceInfo};
use crate::progress::{Event, Progress};
use staging::{Staging, WritebackFile};
use walk::{Entry, Kind};

/// Default chunk size: 8 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Files up to this size are compressed in memory on worker threads; larger ones are compressed
/// by the writer into a spill file first (so every zip header carries its sizes and CRC up
/// front — no data descriptors — and memory stays bounded).
const PARALLEL_MAX_FILE: u64 = 4 << 20;
/// Bytes of file content that may be in flight on the workers at once.
const WINDOW_BYTES: u64 = 16 << 20;

/// Everything `pack` needs, validated.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Files and folders to pack.
    pub paths: Vec<PathBuf>,
    /// The archive to write; the manifest goes beside it.
    pub output: PathBuf,
    /// zip or tar.
    pub format: Format,
    /// Codec and level.
    pub compression: Compression,
    /// Manifest chunk size.
    pub chunk_size: u64,
    /// Compression threads (≥ 1).
    pub threads: usize,
    /// What to include.
    pub walk: WalkOptions,
    /// Keep the archive's pages in the page cache, for a caller about to read it again (`push`
    /// sends it next). Otherwise they are dropped once on disk (see [`crate::writeback`]).
    pub keep_cached: bool,
}

/// What `pack` made.
#[derive(Debug)]
pub struct PackReport {
    /// The archive.
    pub archive: PathBuf,
    /// Its manifest file.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

impl PackReport {
    /// Files that were left out (exit code 3 when not empty).
    pub fn skipped(&self) -> &[Skipped] {
        &self.manifest.source.skipped
    }
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The walk could not start.
    #[error(transparent)]
    Walk(#[from] walk::WalkError),
    /// The archive could not be written.
    #[error("writing {path}: {source}")]
    Output {
        /// The archive path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The zip writer refused something.
    #[error("zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// The manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A stop was requested ([`crate::stop`]); no archive was left behind.
    #[error("packing was interrupted")]
    Interrupted,
}

/// Where large zip entries are compressed before being copied into the archive.
fn spill_path(output: &Path) -> PathBuf {
    let mut p = crate::durable::partial_path(output).into_os_string();
    p.push(".spill");
    PathBuf::from(p)
}

std::thread_local! {
    static COMPRESSION_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is one of the zip compression workers. The binary's allocator
/// serves these threads from a separate arena: each file's short-lived compression buffers,
/// interleaved with the long-lived entry records kept for the zip's central directory, fragment
/// glibc's heaps without bound (2.7 GB RSS for 48,000 files). Safe to call inside an allocator
/// (no allocation, no destructor).
pub fn on_compression_worker() -> bool {
    COMPRESSION_WORKER.with(|w| w.get())
}

/// The number of cores, the default for `--threads`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

type Sink = HashingWriter<WritebackFile>;
type ZipSink = PatchingHashingWriter<WritebackFile>;

/// Per-run tallies.
#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    skipped: Vec<Skipped>,
}

impl Tally {
    fn stored(&mut self, bytes: u64, progress: &dyn Progress) {
        self.files += 1;
        self.bytes += bytes;
        progress.event(&Event::PackFile { bytes });
    }

    /// Takes the next walk item: the entry, or `None` after recording what could not be walked.
    fn take(&mut self, item: walk::Item, progress: &dyn Progress) -> Option<Entry> {
        match item {
            walk::Item::Entry(e) => Some(e),
            walk::Item::Skipped(s) => {
                progress.event(&Event::Skipped {
                    path: s.path.clone(),
                    reason: s.reason.clone(),
                });
                self.skipped.push(s);
                None
            }
        }
    }

    fn skip(&mut self, path: &Path, reason: String, progress: &dyn Progress) {
        let path = path.display().to_string();
        progress.event(&Event::Skipped {
            path: path.clone(),
            reason: reason.clone(),
        });
        self.skipped.push(Skipped { path, reason });
    }
}

/// Packs `opts.paths` into `opts.output` and writes its manifest. Files that cannot be read are
/// skipped and listed in the manifest; the archive is valid either way.
pub fn pack(opts: &PackOptions, progress: &dyn Progress) -> Result<PackReport, PackError> {
    match pack_archive(opts, progress) {
        // whatever the stop interrupted (a write, the walk), the archive was not committed
        Err(_) if crate::stop::requested() => Err(PackError::Interrupted),
        r => r,
    }
}

fn pack_archive(opts: &PackOptions, progress: &dyn Progress) -> Result<PackReport, PackError> {
    let manifest_path = manifest::path_for(&opts.output);
    let mut walk_opts = opts.walk.clone();
    walk_opts.never.extend([
        opts.output.clone(),
        crate::durable::partial_path(&opts.output),
        spill_path(&opts.output),
        manifest_path.clone(),
    ]);
    let walk = walk::walk(&opts.paths, &walk_opts)?;
    progress.event(&Event::PackStarted {
        paths: opts.paths.iter().map(|p| p.display().to_string()).collect(),
    });
    let mut tally = Tally::default();

    let out_err = |source: io::Error| PackError::Output {
        path: opts.output.clone(),
        source,
    };
    let (staging, file) = Staging::create(&opts.output).map_err(out_err)?;
    let out = WritebackFile::new(file, opts.keep_cached);
    let (out, fp) = match opts.format {
        Format::Zip => {
            let sink = PatchingHashingWriter::new(out, opts.chunk_size);
            let spill = spill_path(&opts.output);
            let sink = write_zip(sink, walk, opts, &spill, &mut tally, progress);
            let _ = std::fs::remove_file(&spill);
            sink?.finish()
        }
        Format::Tar => {
            let sink = HashingWriter::new(out, opts.chunk_size);
            write_tar(sink, walk, opts, &mut tally, progress)
                .map_err(out_err)?
                .finish()
        }
    }
    .map_err(out_err)?;
    let file = out.into_inner();
    // A manifest left from an earlier archive must never describe this one, even if writing
    // the new manifest fails below.
    match std::fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(out_err(e)),
        _ => {}
    }
    staging.commit(file).map_err(out_err)?;

    let source = SourceInfo {
        paths: opts.paths.iter().map(|p| p.display().to_string()).collect(),
        files: tally.files,
        bytes: tally.bytes,
        skipped: tally.skipped,
    };
    let c = opts.compression;
    let manifest = Manifest::new(&opts.output, opts.format.name(), c.codec.name(), c.level, fp, source);
    manifest.write(&manifest_path)?;
    progress.event(&Event::PackFinished {
        files: manifest.source.files,
        bytes_in: manifest.source.bytes,
        archive_size: manifest.archive.size,
        md5: manifest.archive.md5.hex(),
    });
    Ok(PackReport {
        archive: opts.output.clone(),
        manifest_path,
        manifest,
    })
}

// ---------------------------------------------------------------------------------------------
// tar

fn write_tar(
    sink: Sink,
    walk: walk::Walk,
    opts: &PackOptions,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> io::Result<Sink> {
    let enc = compress::StreamEncoder::new(sink, opts.compression, opts.threads)?;
    let mut builder = tar::Builder::new(enc);
    builder.follow_symlinks(false);
    for item in walk {
        crate::stop::check()?;
        let Some(e) = tally.take(item, progress) else { continue };
        match &e.kind {
            Kind::Dir => builder.append_data(&mut archive::tar_header(&e), format!("{}/", e.name), io::empty())?,
            Kind::Symlink { target } => builder.append_link(&mut archive::tar_header(&e), &e.name, target)?,
            Kind::File { .. } => {
                let source = match archive::open_source(&e.src, opts.walk.follow_symlinks) {
                    Ok(s) => s,
                    Err(reason) => {
                        tally.skip(&e.src, reason, progress);
                        continue;
                    }
                };
                // Header and content come from the same look at the open file.
                let fresh = e.refreshed(&source);
                let mut h = archive::tar_header(&fresh);
                let size = source.size;
                let mut r = source.reader();
                if size > 64 << 10 {
                    // io::copy reads 8 KiB at a time unless the reader brings its own buffer
                    builder.append_data(&mut h, &e.name, io::BufReader::with_capacity(256 << 10, &mut r))?;
                } else {
                    builder.append_data(&mut h, &e.name, &mut r)?;
                }
                if let Some(problem) = r.finish().problem {
                    tally.skip(&e.src, archive::changed_reason(&problem), progress);
                }
                tally.stored(size, progress);
            }
        }
    }
    let enc = builder.into_inner()?;
    enc.finish()
}

// ---------------------------------------------------------------------------------------------
// zip

type Zip = ZipWriter<ZipSink>;

/// A file handed to a worker thread for compression.
struct Job {
    entry: Entry,
    c: Compression,
    follow: bool,
    reply: std::sync::mpsc::SyncSender<JobResult>,
}

enum JobResult {
    /// Compressed; the size stored, and a change noticed while reading, if any.
    Ready(PreparedZipFile, u64, Option<String>),
    /// Grew past what a worker holds in memory since the walk: the writer takes it.
    TooBig,
    Skip(String),
}

enum Pending {
    /// Written by the writer thread itself (directories, links, large files).
    Inline(Entry),
    /// Being compressed by a worker.
    Worker(Entry, u64, Receiver<JobResult>),
}

fn compress_job(job: &Job) -> JobResult {
    let source = match archive::open_source(&job.entry.src, job.follow) {
        Ok(s) => s,
        Err(reason) => return JobResult::Skip(reason),
    };
    if source.size > PARALLEL_MAX_FILE {
        return JobResult::TooBig;
    }
    let fresh = job.entry.refreshed(&source);
    let size = source.size;
    let compressed = (|| -> zip::result::ZipResult<(PreparedZipFile, Option<String>)> {
        let mut builder = ZipFileBuilder::new(&fresh.name, archive::zip_options(&fresh, job.c)?)?;
        let outcome = archive::copy_exact(source, &mut builder)?;
        Ok((builder.finish()?, outcome.problem))
    })();
    match compressed {
        Ok((prepared, problem)) => JobResult::Ready(prepared, size, problem),
        Err(e) => JobResult::Skip(format!("zip: {e}")),
    }
}

fn spawn_workers(n: usize) -> io::Result<(Sender<Job>, Vec<std::thread::JoinHandle<()>>)> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let handle = std::thread::Builder::new()
            .name(format!("zip-worker-{i}"))
            .spawn(move || {
                COMPRESSION_WORKER.with(|w| w.set(true));
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => match guard.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    let _ = job.reply.send(compress_job(&job));
                }
            })?;
        handles.push(handle);
    }
    Ok((tx, handles))
}

/// The zip writer's loop state.
struct ZipRun<'a> {
    zip: Zip,
    c: Compression,
    spill: &'a Path,
    follow: bool,
    window: VecDeque<Pending>,
    in_flight: u64,
}

fn write_zip(
    sink: ZipSink,
    walk: walk::Walk,
    opts: &PackOptions,
    spill: &Path,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> Result<ZipSink, PackError> {
    let out_err = |source: io::Error| PackError::Output {
        path: opts.output.clone(),
        source,
    };
    let (jobs, workers) = spawn_workers(opts.threads.max(1)).map_err(out_err)?;
    let max_entries = 64 * opts.threads.max(1);
    let mut run = ZipRun {
        zip: ZipWriter::new(sink),
        c: opts.compression,
        spill,
        follow: opts.walk.follow_symlinks,
        window: VecDeque::new(),
        in_flight: 0,
    };
    let result = (|| -> Result<(), PackError> {
        for item in walk {
            if crate::stop::requested() {
                return Err(PackError::Interrupted);
            }
            let Some(e) = tally.take(item, progress) else { continue };
            let pending = match e.kind {
                Kind::File { size } if size <= PARALLEL_MAX_FILE => {
                    let (reply, rx) = sync_channel(1);
                    let job = Job {
                        entry: e.clone(),
                        c: run.c,
                        follow: run.follow,
                        reply,
                    };
                    if jobs.send(job).is_err() {
                        return Err(out_err(io::Error::other("compression workers stopped")));
                    }
                    run.in_flight += size;
                    Pending::Worker(e, size, rx)
                }
                _ => Pending::Inline(e),
            };
            run.window.push_back(pending);
            while run.window.len() > max_entries || run.in_flight > WINDOW_BYTES {
                run.drain_one(tally, progress)?;
            }
        }
        while !run.window.is_empty() {
            run.drain_one(tally, progress)?;
        }
        Ok(())
    })();
    drop(jobs);
    for w in workers {
        let _ = w.join();
    }
    result?;
    Ok(run.zip.finish()?)
}

impl ZipRun<'_> {
    fn drain_one(&mut self, tally: &mut Tally, progress: &dyn Progress) -> Result<(), PackError> {
        let Some(front) = self.window.pop_front() else {
            return Ok(());
        };
        match front {
            Pending::Worker(e, size, rx) => {
                self.in_flight -= size;
                match rx.recv() {
                    Ok(JobResult::Ready(prepared, size, problem)) => {
                        self.zip.add_prepared_file(prepared)?;
                        if let Some(problem) = problem {
                            tally.skip(&e.src, archive::changed_reason(&problem), progress);
                        }
                        tally.stored(size, progress);
                    }
                    Ok(JobResult::TooBig) => self.write_inline(&e, tally, progress)?,
                    Ok(JobResult::Skip(reason)) => tally.skip(&e.src, reason, progress),
                    Err(_) => {
                        return Err(PackError::Output {
                            path: e.src.clone(),
                            source: io::Error::other("a compression worker stopped unexpectedly"),
                        });
                    }
                }
            }
            Pending::Inline(e) => self.write_inline(&e, tally, progress)?,
        }
        Ok(())
    }

    fn write_inline(&mut self, e: &Entry, tally: &mut Tally, progress: &dyn Progress) -> Result<(), PackError> {
        match &e.kind {
            Kind::Dir => self
                .zip
                .add_directory(e.name.as_str(), archive::zip_options(e, self.c)?)?,
            Kind::Symlink { target } => match target.to_str() {
                Some(t) => self
                    .zip
                    .add_symlink(e.name.as_str(), t, archive::zip_options(e, self.c)?)?,
                None => tally.skip(&e.src, "symlink target is not valid UTF-8".into(), progress),
            },
            Kind::File { .. } => {
                let source = match archive::open_source(&e.src, self.follow) {
                    Ok(s) => s,
                    Err(reason) => {
                        tally.skip(&e.src, reason, progress);
                        return Ok(());
                    }
                };
                let size = source.size;
                if let Some(problem) = self.spill_copy(&e.refreshed(&source), source)?.problem {
                    tally.skip(&e.src, archive::changed_reason(&problem), progress);
                }
                tally.stored(size, progress);
            }
        }
        Ok(())
    }

    /// Compresses a large file into a one-entry zip beside the output, then copies the
    /// compressed entry into the archive with its CRC and sizes known up front.
    fn spill_copy(&mut self, e: &Entry, source: archive::Source) -> Result<archive::ReadOutcome, PackError> {
        let spill_err = |source: io::Error| PackError::Output {
            path: self.spill.to_path_buf(),
            source,
        };
        let spill = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.spill)
            .map_err(spill_err)?;
        let mut side = ZipWriter::new(BufWriter::with_capacity(1 << 20, spill));
        side.start_file(e.name.as_str(), archive::zip_options(e, self.c)?)?;
        let outcome = archive::copy_exact(source, &mut side).map_err(spill_err)?;
        let spill = side.finish()?.into_inner().map_err(|err| spill_err(err.into_error()))?;
        let mut side = ZipArchive::new(spill)?;
        let entry = side.by_index_raw(0)?;
        self.zip.raw_copy_file(entry)?;
        Ok(outcome)
    }
}
