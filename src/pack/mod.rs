//! The packing pipeline, synchronous from end to end: walk → archive (zip | tar) → compress →
//! hashing writer → staging file → manifest. zip entries are compressed on worker threads and
//! appended in walk order by one writer ([`zip`]); tar streams through one encoder (zstd with its
//! own workers). Memory is bounded by the window of entries in flight, never by the archive size
//! or the number of files.

pub mod archive;
pub mod compress;
pub mod dry_run;
pub mod entry;
pub mod source;
pub mod staging;
pub mod walk;
pub mod zip;

use std::io;
use std::path::{Path, PathBuf};

pub use archive::Format;
pub use compress::{Codec, Compression};
pub use walk::WalkOptions;

use crate::fingerprint::HashingWriter;
use crate::manifest::{self, Manifest, ManifestError, Skipped, SourceInfo};
use crate::progress::{Event, Progress};
use entry::{Entry, Kind};
use staging::{Staging, WritebackFile};

/// Default chunk size: 8 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Everything `pack` needs, validated.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Files and folders to pack.
    pub paths: Vec<PathBuf>,
    /// The archive to write; the manifest goes beside it unless [`PackOptions::manifest`] says
    /// otherwise.
    pub output: PathBuf,
    /// Where the manifest goes; `None`: beside the archive ([`manifest::path_for`] `output`).
    pub manifest: Option<PathBuf>,
    /// Write the archive to standard output instead of `output` (`pack -o -`), hashed on its way
    /// out: `output` then only names it in the manifest, and the zip writer's spill files go
    /// beside the manifest.
    pub to_stdout: bool,
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
    /// Pack one link of an incremental chain (tar only): what changed since `previous`, with
    /// dumpdirs; the new records go to [`crate::incremental::state::pending_path`] of the output.
    pub incremental: Option<Incremental>,
    /// Tell a sender following the archive as it is written (`push` sending while it packs)
    /// of every byte written and every chunk hashed, and of the end or a failure.
    pub growing: Option<std::sync::Arc<crate::growing::Growing>>,
}

impl PackOptions {
    /// Where the manifest goes.
    pub fn manifest_path(&self) -> PathBuf {
        self.manifest
            .clone()
            .unwrap_or_else(|| manifest::path_for(&self.output))
    }

    /// The path the zip writer's spill files are placed beside ([`zip::spill_paths`]): the
    /// archive, or the manifest when the archive goes to standard output.
    pub fn work_path(&self) -> PathBuf {
        if self.to_stdout {
            self.manifest_path()
        } else {
            self.output.clone()
        }
    }

    /// The archive as messages name it.
    fn shown_output(&self) -> PathBuf {
        if self.to_stdout {
            PathBuf::from("standard output")
        } else {
            self.output.clone()
        }
    }
}

/// One link of an incremental chain to pack.
#[derive(Clone, Debug)]
pub struct Incremental {
    /// Where the archive stands in its chain (written into its manifest).
    pub link: crate::incremental::Link,
    /// What the last confirmed push saw; `None` for a full archive.
    pub previous: Option<std::sync::Arc<crate::incremental::state::Previous>>,
}

/// What `pack` made.
#[derive(Debug)]
pub struct PackReport {
    /// The archive (`standard output` when it was streamed there).
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
    #[error("writing {}: {}", .path.display(), crate::durable::IoReason(.source))]
    Output {
        /// The archive path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A stop was requested ([`crate::stop`]); no archive was left behind.
    #[error("packing was interrupted")]
    Interrupted,
}

impl PackError {
    /// Whether what went wrong is a flag's value (exit 2): an exclude pattern that is not a glob,
    /// an `--exclude-from` file that cannot be read.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PackError::Walk(walk::WalkError::Pattern { .. } | walk::WalkError::ExcludeFile { .. })
        )
    }
}

/// The number of cores, the default for `--threads`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Where the archive's bytes go: hashed on the way into the staging file.
type Sink = HashingWriter<WritebackFile>;

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
    let r = match pack_archive(opts, progress) {
        // whatever the stop interrupted (a write, the walk), the archive was not committed
        Err(_) if crate::stop::requested() => Err(PackError::Interrupted),
        r => r,
    };
    if let (Err(e), Some(g)) = (&r, &opts.growing) {
        g.failed(e.to_string());
    }
    r
}

fn pack_archive(opts: &PackOptions, progress: &dyn Progress) -> Result<PackReport, PackError> {
    let manifest_path = opts.manifest_path();
    let mut walk_opts = opts.walk.clone();
    walk_opts.never.extend([
        opts.output.clone(),
        crate::durable::partial_path(&opts.output),
        manifest_path.clone(),
        crate::durable::partial_path(&manifest_path),
    ]);
    walk_opts.never.extend(zip::spill_paths(&opts.work_path()));
    walk_opts
        .never
        .push(crate::incremental::state::pending_path(&opts.output));
    let walk = walk::walk(&opts.paths, &walk_opts)?;
    progress.event(&Event::PackStarted {
        paths: opts.paths.iter().map(|p| p.display().to_string()).collect(),
    });
    let mut tally = Tally::default();

    let out_err = |source: io::Error| PackError::Output {
        path: opts.shown_output(),
        source,
    };
    let (staging, out) = if opts.to_stdout {
        (None, WritebackFile::stream(stdout_file().map_err(out_err)?))
    } else {
        let (staging, file) = Staging::create(&opts.output).map_err(out_err)?;
        if let Some(g) = &opts.growing {
            // a descriptor of its own to read from (the staging file is opened write-only)
            g.opened(std::fs::File::open(staging.partial()).map_err(out_err)?);
        }
        (Some(staging), WritebackFile::new(file, opts.keep_cached))
    };
    let sink = HashingWriter::reporting(out, opts.chunk_size, opts.growing.clone());
    let tracker = match &opts.incremental {
        None => None,
        Some(_) if opts.format != Format::Tar => {
            return Err(out_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "incremental archives are tar archives",
            )));
        }
        Some(inc) => {
            let pending = crate::incremental::state::pending_path(&opts.output);
            let follow = opts.walk.follow_symlinks;
            Some(
                crate::incremental::tracker::Tracker::create(&pending, inc.previous.clone(), follow)
                    .map_err(out_err)?,
            )
        }
    };
    let sink = match opts.format {
        Format::Zip => zip::write_zip(sink, walk, opts, &mut tally, progress)?,
        Format::Tar => write_tar(sink, walk, opts, tracker, &mut tally, progress).map_err(out_err)?,
    };
    let (out, fp) = sink.finish().map_err(out_err)?;
    if let Some(g) = &opts.growing {
        g.finished(fp.size, fp.md5);
    }
    let file = out.into_inner();
    // A manifest left from an earlier archive must never describe this one, even if writing
    // the new manifest fails below.
    match std::fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(out_err(e)),
        _ => {}
    }
    match staging {
        Some(staging) => staging.commit(file).map_err(out_err)?,
        // every byte was handed to the pipe by the hashing writer; nothing to sync or rename
        None => drop(file),
    }

    let source = SourceInfo {
        paths: opts.paths.iter().map(|p| p.display().to_string()).collect(),
        files: tally.files,
        bytes: tally.bytes,
        skipped: tally.skipped,
    };
    let c = opts.compression;
    let mut manifest = Manifest::new(&opts.output, opts.format.name(), c.codec.name(), c.level, fp, source);
    manifest.incremental = opts.incremental.as_ref().map(|i| i.link.clone());
    if let Err(e) = manifest.write(&manifest_path) {
        // a failed pack leaves no archive: one without its manifest cannot be verified, and
        // `push` would not know it is finished
        if !opts.to_stdout
            && let Err(rm) = std::fs::remove_file(&opts.output)
        {
            tracing::warn!("cannot remove {}: {rm}", opts.output.display());
        }
        return Err(e.into());
    }
    if let Some(g) = &opts.growing {
        g.committed();
    }
    progress.event(&Event::PackFinished {
        files: manifest.source.files,
        bytes_in: manifest.source.bytes,
        archive_size: manifest.archive.size,
        md5: manifest.archive.md5.hex(),
    });
    Ok(PackReport {
        archive: opts.shown_output(),
        manifest_path,
        manifest,
    })
}

/// Standard output as a file of its own (a duplicate of descriptor 1), to be written from the
/// hashing writer's thread without Rust's line buffer in between.
fn stdout_file() -> io::Result<std::fs::File> {
    use std::os::fd::AsFd as _;
    Ok(std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

// ---------------------------------------------------------------------------------------------
// tar

/// Writes a folder's GNU dumpdir entry (type `D`): the folder, with its children's names.
fn append_dumpdir<W: io::Write>(builder: &mut tar::Builder<W>, e: &Entry, listing: Vec<u8>) -> io::Result<()> {
    let mut h = archive::tar_header(e);
    h.set_entry_type(tar::EntryType::new(b'D'));
    h.set_size(listing.len() as u64);
    builder.append_data(&mut h, format!("{}/", e.name), listing.as_slice())
}

fn write_tar(
    sink: Sink,
    walk: walk::Walk,
    opts: &PackOptions,
    mut tracker: Option<crate::incremental::tracker::Tracker>,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> io::Result<Sink> {
    let enc = compress::StreamEncoder::new(sink, opts.compression, opts.threads)?;
    let mut builder = tar::Builder::new(enc);
    builder.follow_symlinks(false);
    // the first name stored of each inode with several hard links: later names are links to it
    let mut linked: std::collections::HashMap<(u64, u64), String> = std::collections::HashMap::new();
    for item in walk {
        crate::stop::check()?;
        let Some(e) = tally.take(item, progress) else { continue };
        if let Some(t) = &mut tracker {
            match &e.kind {
                Kind::Dir => {
                    let listing = t.folder(&e)?;
                    append_dumpdir(&mut builder, &e, listing)?;
                    continue;
                }
                _ if !t.changed(&e) => {
                    t.unchanged(&e)?;
                    continue;
                }
                _ => {}
            }
        }
        match &e.kind {
            Kind::Dir => builder.append_data(&mut archive::tar_header(&e), format!("{}/", e.name), io::empty())?,
            Kind::Symlink { target } => {
                builder.append_link(&mut archive::tar_header(&e), &e.name, target)?;
                if let Some(t) = &mut tracker {
                    t.stored(&e)?;
                }
            }
            Kind::File { .. } if e.change.nlink > 1 && linked.contains_key(&(e.change.dev, e.change.ino)) => {
                let first = linked.get(&(e.change.dev, e.change.ino)).cloned().unwrap_or_default();
                let mut h = archive::tar_header(&e);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                builder.append_link(&mut h, &e.name, &first)?;
                if let Some(t) = &mut tracker {
                    t.stored(&e)?;
                }
                tally.stored(0, progress);
            }
            Kind::File { .. } => {
                let source = match source::open_source(&e.src, opts.walk.follow_symlinks) {
                    Ok(s) => s,
                    Err(reason) => {
                        if let Some(t) = &mut tracker {
                            t.unreadable(&e)?;
                        }
                        tally.skip(&e.src, reason, progress);
                        continue;
                    }
                };
                if let Some(t) = &mut tracker {
                    t.stored(&e)?;
                }
                if e.change.nlink > 1 {
                    linked.insert((e.change.dev, e.change.ino), e.name.clone());
                }
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
                    tally.skip(&e.src, source::changed_reason(&problem), progress);
                }
                tally.stored(size, progress);
            }
        }
    }
    if let Some(t) = tracker {
        t.finish()?;
    }
    let enc = builder.into_inner()?;
    enc.finish()
}
