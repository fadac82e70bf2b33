//! The zip writer: entries go into the archive in walk order (`format` has the bytes). Files
//! up to [`PARALLEL_MAX_FILE`] are compressed on worker threads, each of which keeps one
//! compressor and its buffers for the whole run; larger files are compressed by the writer into a
//! spill file first, so every local header carries its CRC and sizes. The central directory
//! collects in a spill file of its own and is copied in at the end. Memory is bounded by the
//! window of entries in flight, whatever the number or the size of the files; the same tree
//! always gives the same bytes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

mod format;

use super::compress::Compression;
use super::entry::{Entry, Kind};
use super::source::{self, ExactReader, ReadOutcome, Source};
use super::walk::Walk;
use super::{PackError, PackOptions, Sink, Tally};
use crate::progress::Progress;
use format::{DataInfo, Method, ZipOut};

/// Files up to this size are compressed in memory on the worker threads.
pub const PARALLEL_MAX_FILE: u64 = 4 << 20;
/// Bytes of file content that may be in flight on the workers at once.
const WINDOW_BYTES: u64 = 16 << 20;
/// Entries in flight at most, per worker.
const WINDOW_ENTRIES_PER_WORKER: usize = 64;

/// The spill files beside the archive: large entries are compressed into the first, the
/// central directory collects in the second. Neither is ever packed, both are removed.
pub fn spill_paths(output: &Path) -> [PathBuf; 2] {
    let partial = crate::durable::partial_path(output).into_os_string();
    [".spill", ".central"].map(|ext| {
        let mut p = partial.clone();
        p.push(ext);
        PathBuf::from(p)
    })
}

/// A worker's compressor, kept for the whole run.
enum Encoder {
    Stored,
    Deflate(flate2::Compress),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Encoder {
    fn new(method: Method) -> io::Result<Self> {
        Ok(match method {
            Method::Stored => Encoder::Stored,
            Method::Deflate(level) => Encoder::Deflate(flate2::Compress::new(flate2::Compression::new(level), false)),
            Method::Zstd(level) => Encoder::Zstd(Box::new(zstd::bulk::Compressor::new(level)?)),
        })
    }

    /// `input` as stored: compressed into `out`, or `input` itself.
    fn encode<'a>(&mut self, input: &'a [u8], out: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        out.clear();
        match self {
            Encoder::Stored => return Ok(input),
            Encoder::Deflate(c) => {
                c.reset();
                out.reserve(input.len() + input.len() / 16 + 64);
                loop {
                    let done = c.total_in() as usize;
                    let status = c
                        .compress_vec(&input[done..], out, flate2::FlushCompress::Finish)
                        .map_err(io::Error::other)?;
                    if status == flate2::Status::StreamEnd {
                        break;
                    }
                    out.reserve(out.capacity().max(64 << 10));
                }
            }
            Encoder::Zstd(z) => {
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                z.compress_to_buffer(input, out)?;
            }
        }
        Ok(out)
    }
}

/// A file handed to a worker thread.
struct Job {
    entry: Entry,
    reply: SyncSender<Done>,
}

/// What a worker made of a file.
enum Done {
    /// Compressed: the entry as the file was when opened, its data as stored, its CRC, and a
    /// change noticed while reading, if any.
    Ready {
        entry: Entry,
        size: u64,
        data: Vec<u8>,
        crc: u32,
        problem: Option<String>,
    },
    /// Grew past what a worker holds in memory since the walk: the writer takes it.
    TooBig,
    /// Could not be read (why).
    Skip(String),
}

/// A worker's tools for the whole run: its compressor, and the buffers a file is read and
/// compressed into (they grow to the largest file it was handed, at most [`PARALLEL_MAX_FILE`]).
struct Worker {
    encoder: Encoder,
    follow: bool,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Worker {
    fn compress(&mut self, entry: &Entry) -> Done {
        let source = match source::open_source(&entry.src, self.follow) {
            Ok(s) => s,
            Err(reason) => return Done::Skip(reason),
        };
        if source.size > PARALLEL_MAX_FILE {
            return Done::TooBig;
        }
        let (fresh, size) = (entry.refreshed(&source), source.size);
        let outcome = match source.read_into(&mut self.input) {
            Ok(o) => o,
            Err(e) => return Done::Skip(format!("unreadable: {e}")),
        };
        let crc = crc32fast::hash(&self.input);
        match self.encoder.encode(&self.input, &mut self.output) {
            Ok(data) => Done::Ready {
                entry: fresh,
                size,
                data: data.to_vec(),
                crc,
                problem: outcome.problem,
            },
            Err(e) => Done::Skip(format!("compression failed: {e}")),
        }
    }
}

fn spawn_workers(n: usize, method: Method, follow: bool) -> io::Result<(Sender<Job>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let mut worker = Worker {
            encoder: Encoder::new(method)?,
            follow,
            input: Vec::new(),
            output: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("zip-worker-{i}"))
            .spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => match guard.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        },
                        Err(_) => return,
                    };
                    let _ = job.reply.send(worker.compress(&job.entry));
                }
            })?;
        handles.push(handle);
    }
    Ok((tx, handles))
}

/// An entry on its way into the archive, in walk order.
enum Pending {
    /// Written by the writer thread itself (directories, links, large files).
    Inline(Entry),
    /// Being compressed by a worker (its size at walk time counts against the window).
    Worker(Entry, u64, Receiver<Done>),
}

/// The writer's state.
struct ZipRun<'a> {
    out: ZipOut,
    c: Compression,
    spill: &'a Path,
    follow: bool,
    window: VecDeque<Pending>,
    in_flight: u64,
    /// The buffer large files are read through.
    buf: Vec<u8>,
}

/// Writes the zip of `walk` into `sink`.
pub(super) fn write_zip(
    sink: Sink,
    walk: Walk,
    opts: &PackOptions,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> Result<Sink, PackError> {
    let [spill, central_path] = spill_paths(&opts.work_path());
    let result = write_entries(sink, walk, opts, &spill, &central_path, tally, progress);
    let _ = std::fs::remove_file(&spill);
    let _ = std::fs::remove_file(&central_path);
    result
}

fn write_entries(
    sink: Sink,
    walk: Walk,
    opts: &PackOptions,
    spill: &Path,
    central_path: &Path,
    tally: &mut Tally,
    progress: &dyn Progress,
) -> Result<Sink, PackError> {
    let out_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| PackError::Output { path, source }
    };
    let central = side_file(central_path).map_err(out_err(central_path))?;
    let threads = opts.threads.max(1);
    let file_method = Method::for_files(opts.compression);
    let (jobs, workers) =
        spawn_workers(threads, file_method, opts.walk.follow_symlinks).map_err(out_err(&opts.output))?;
    let mut run = ZipRun {
        out: ZipOut::new(sink, opts.output.clone(), central, central_path.to_path_buf()),
        c: opts.compression,
        spill,
        follow: opts.walk.follow_symlinks,
        window: VecDeque::new(),
        in_flight: 0,
        buf: Vec::new(),
    };
    let result = (|| -> Result<(), PackError> {
        for item in walk {
            if crate::stop::requested() {
                return Err(PackError::Interrupted);
            }
            let Some(e) = tally.take(item, progress) else { continue };
            run.window.push_back(match e.kind {
                Kind::File { size } if size <= PARALLEL_MAX_FILE => {
                    let (reply, rx) = sync_channel(1);
                    let job = Job {
                        entry: e.clone(),
                        reply,
                    };
                    if jobs.send(job).is_err() {
                        return Err(out_err(&opts.output)(io::Error::other("compression workers stopped")));
                    }
                    run.in_flight += size;
                    Pending::Worker(e, size, rx)
                }
                _ => Pending::Inline(e),
            });
            while run.window.len() > WINDOW_ENTRIES_PER_WORKER * threads || run.in_flight > WINDOW_BYTES {
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
    run.out.finish()
}

/// Creates (or truncates) an owner-only side file beside the archive.
fn side_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
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
                    Ok(Done::Ready {
                        entry,
                        size,
                        data,
                        crc,
                        problem,
                    }) => {
                        let method = Method::of(&entry, self.c);
                        self.out.entry(&entry, method, crc, &data)?;
                        if let Some(problem) = problem {
                            tally.skip(&e.src, source::changed_reason(&problem), progress);
                        }
                        tally.stored(size, progress);
                    }
                    Ok(Done::TooBig) => self.write_inline(&e, tally, progress)?,
                    Ok(Done::Skip(reason)) => tally.skip(&e.src, reason, progress),
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
            Kind::Dir => self.out.entry(e, Method::Stored, 0, &[])?,
            Kind::Symlink { target } => match target.to_str() {
                Some(t) => self
                    .out
                    .entry(e, Method::Stored, crc32fast::hash(t.as_bytes()), t.as_bytes())?,
                None => tally.skip(&e.src, "symlink target is not valid UTF-8".into(), progress),
            },
            Kind::File { .. } => {
                let source = match source::open_source(&e.src, self.follow) {
                    Ok(s) => s,
                    Err(reason) => {
                        tally.skip(&e.src, reason, progress);
                        return Ok(());
                    }
                };
                let size = source.size;
                if let Some(problem) = self.spill_copy(&e.refreshed(&source), size, source)?.problem {
                    tally.skip(&e.src, source::changed_reason(&problem), progress);
                }
                tally.stored(size, progress);
            }
        }
        Ok(())
    }

    /// Compresses a large file into the spill file beside the output, then writes the entry with
    /// its CRC and sizes known up front and copies the compressed data in.
    fn spill_copy(&mut self, e: &Entry, size: u64, source: Source) -> Result<ReadOutcome, PackError> {
        let spill_err = |source: io::Error| PackError::Output {
            path: self.spill.to_path_buf(),
            source,
        };
        let method = Method::of(e, self.c);
        let spill = BufWriter::with_capacity(1 << 20, side_file(self.spill).map_err(spill_err)?);
        if self.buf.is_empty() {
            self.buf = vec![0u8; 256 << 10];
        }
        let mut reader = source.reader();
        let mut crc = crc32fast::Hasher::new();
        let spill = match method {
            Method::Stored => copy_crc(&mut reader, &mut crc, spill, &mut self.buf),
            Method::Deflate(level) => {
                let enc = flate2::write::DeflateEncoder::new(spill, flate2::Compression::new(level));
                copy_crc(&mut reader, &mut crc, enc, &mut self.buf).and_then(|enc| enc.finish())
            }
            Method::Zstd(level) => zstd::stream::write::Encoder::new(spill, level)
                .and_then(|enc| copy_crc(&mut reader, &mut crc, enc, &mut self.buf))
                .and_then(|enc| enc.finish()),
        }
        .map_err(spill_err)?;
        let outcome = reader.finish();
        let mut spill = spill.into_inner().map_err(|err| spill_err(err.into_error()))?;
        let compressed = spill.stream_position().map_err(spill_err)?;
        spill.seek(SeekFrom::Start(0)).map_err(spill_err)?;
        let d = DataInfo {
            crc: crc.finalize(),
            size,
            compressed,
        };
        self.out.begin(e, method, d)?;
        let mut left = compressed;
        while left > 0 {
            let want = (self.buf.len() as u64).min(left) as usize;
            spill.read_exact(&mut self.buf[..want]).map_err(spill_err)?;
            let chunk = std::mem::take(&mut self.buf);
            let written = self.out.write(&chunk[..want]);
            self.buf = chunk;
            written?;
            left -= want as u64;
        }
        Ok(outcome)
    }
}

/// Copies everything `reader` gives into `w`, through `buf`, adding it to `crc`.
fn copy_crc<W: Write>(
    reader: &mut ExactReader,
    crc: &mut crc32fast::Hasher,
    mut w: W,
    buf: &mut [u8],
) -> io::Result<W> {
    loop {
        let n = reader.read(buf)?;
        if n == 0 {
            return Ok(w);
        }
        crc.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
}
