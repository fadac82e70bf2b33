//! The zip writer. Entries go into the archive in walk order, each with its CRC and sizes in its
//! local header (no data descriptors), the mode in its external attributes (made by Unix), a DOS
//! time and an Info-ZIP extended timestamp (mtime to the second), and zip64 fields where a size,
//! an offset or the number of entries needs them. The same tree always gives the same bytes.
//!
//! Files up to [`PARALLEL_MAX_FILE`] are compressed on worker threads, each of which keeps one
//! compressor and its buffers for the whole run; larger files are compressed by the writer into
//! a spill file first. The central directory goes to a spill file of its own as entries are
//! written and is copied in at the end. Memory is bounded by the window of entries in flight,
//! whatever the number or the size of the files.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::compress::{Codec, Compression};
use super::entry::{Entry, Kind};
use super::source::{self, ExactReader, ReadOutcome, Source};
use super::walk::Walk;
use super::{PackError, PackOptions, Sink, Tally};
use crate::progress::Progress;

/// Files up to this size are compressed in memory on the worker threads.
pub const PARALLEL_MAX_FILE: u64 = 4 << 20;
/// Bytes of file content that may be in flight on the workers at once.
const WINDOW_BYTES: u64 = 16 << 20;
/// Entries in flight at most, per worker.
const WINDOW_ENTRIES_PER_WORKER: usize = 64;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
/// Header id of the zip64 extended information extra field.
const ZIP64_EXTRA: u16 = 0x0001;
/// Header id of the Info-ZIP extended timestamp extra field.
const EXTENDED_TIMESTAMP: u16 = 0x5455;
/// "Version made by": the attributes are Unix modes.
const MADE_BY_UNIX: u16 = 3 << 8;
/// General purpose flag: the name is UTF-8.
const UTF8_NAME: u16 = 1 << 11;
/// The version needed to read zip64 fields.
const ZIP64_VERSION: u16 = 45;
const MAX32: u64 = 0xFFFF_FFFF;
const MAX16: u64 = 0xFFFF;

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

/// How an entry's data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Stored,
    Deflate(u32),
    Zstd(i32),
}

impl Method {
    /// The method for `entry` under `c`: files are compressed (deflate level 0 is stored),
    /// directories and links are stored.
    fn of(entry: &Entry, c: Compression) -> Method {
        match entry.kind {
            Kind::File { .. } => Method::for_files(c),
            _ => Method::Stored,
        }
    }

    /// The method for files under `c`.
    fn for_files(c: Compression) -> Method {
        match (c.codec, c.level) {
            (Codec::Deflate, Some(l)) if l > 0 => Method::Deflate(l as u32),
            (Codec::Zstd, l) => Method::Zstd(l.unwrap_or(3)),
            _ => Method::Stored,
        }
    }

    /// The method id in the headers.
    fn id(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflate(_) => 8,
            Method::Zstd(_) => 93,
        }
    }

    /// The version needed to extract (zstd: APPNOTE 6.3.7).
    fn version_needed(self) -> u16 {
        match self {
            Method::Stored => 10,
            Method::Deflate(_) => 20,
            Method::Zstd(_) => 63,
        }
    }
}

/// What the headers say about an entry's data.
#[derive(Clone, Copy, Debug)]
struct DataInfo {
    crc: u32,
    size: u64,
    compressed: u64,
}

/// The DOS time and date of `mtime` (years clamped to 1980–2107).
fn dos_time(mtime: i64) -> (u16, u16) {
    let t = time::OffsetDateTime::from_unix_timestamp(mtime).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (t.year().clamp(1980, 2107) as u16, t.month() as u16, t.day() as u16);
    let date = ((year - 1980) << 9) | (month << 5) | day;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    (time, date)
}

/// The file type and permission bits, as Unix `st_mode` in the high half of the attributes.
fn external_attributes(entry: &Entry) -> u32 {
    let kind = match entry.kind {
        Kind::Dir => 0o040000,
        Kind::File { .. } => 0o100000,
        Kind::Symlink { .. } => 0o120000,
    };
    (kind | entry.mode) << 16
}

/// The name an entry is stored under: directories end in `/`.
fn stored_name(entry: &Entry) -> String {
    match entry.kind {
        Kind::Dir => format!("{}/", entry.name),
        _ => entry.name.clone(),
    }
}

/// The archive being written: the sink, where it is, and the central directory so far.
struct ZipOut {
    sink: Sink,
    path: PathBuf,
    pos: u64,
    central: BufWriter<File>,
    central_path: PathBuf,
    central_len: u64,
    entries: u64,
    /// One header's bytes, reused.
    header: Vec<u8>,
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A 32-bit header field, or the zip64 marker when the value does not fit.
fn field32(v: u64) -> u32 {
    v.min(MAX32) as u32
}

impl ZipOut {
    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.sink.write_all(bytes).map_err(|source| PackError::Output {
            path: self.path.clone(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the local header of an entry whose data comes next, and adds the entry to the
    /// central directory.
    fn begin(&mut self, entry: &Entry, method: Method, d: DataInfo) -> Result<(), PackError> {
        let name = stored_name(entry);
        let offset = self.pos;
        let flags = if name.is_ascii() { 0 } else { UTF8_NAME };
        let (time, date) = dos_time(entry.mtime);
        // Info-ZIP reads the timestamp as unsigned 32-bit seconds.
        let mtime = entry.mtime.clamp(0, MAX32 as i64) as u32;
        let big = d.size >= MAX32 || d.compressed >= MAX32;
        let mut needed = method.version_needed();
        if matches!(entry.kind, Kind::Dir) {
            needed = needed.max(20);
        }

        let mut h = std::mem::take(&mut self.header);
        h.clear();
        put32(&mut h, LOCAL_HEADER);
        put16(&mut h, if big { needed.max(ZIP64_VERSION) } else { needed });
        put16(&mut h, flags);
        put16(&mut h, method.id());
        put16(&mut h, time);
        put16(&mut h, date);
        put32(&mut h, d.crc);
        put32(&mut h, if big { MAX32 as u32 } else { d.compressed as u32 });
        put32(&mut h, if big { MAX32 as u32 } else { d.size as u32 });
        put16(&mut h, name.len() as u16);
        put16(&mut h, if big { 20 + 9 } else { 9 });
        h.extend_from_slice(name.as_bytes());
        if big {
            put16(&mut h, ZIP64_EXTRA);
            put16(&mut h, 16);
            put64(&mut h, d.size);
            put64(&mut h, d.compressed);
        }
        put16(&mut h, EXTENDED_TIMESTAMP);
        put16(&mut h, 5);
        h.push(1); // the modification time is present
        put32(&mut h, mtime);
        let written = self.write(&h);
        self.header = h;
        written?;

        // the central directory record, zip64 fields only for the values that need them
        let mut zip64 = Vec::new();
        if d.size >= MAX32 {
            put64(&mut zip64, d.size);
        }
        if d.compressed >= MAX32 {
            put64(&mut zip64, d.compressed);
        }
        if offset >= MAX32 {
            put64(&mut zip64, offset);
        }
        if !zip64.is_empty() {
            needed = needed.max(ZIP64_VERSION);
        }
        let extra_len = 9 + if zip64.is_empty() { 0 } else { 4 + zip64.len() };
        let mut c = Vec::with_capacity(46 + name.len() + extra_len);
        put32(&mut c, CENTRAL_HEADER);
        put16(&mut c, MADE_BY_UNIX | needed.max(20));
        put16(&mut c, needed);
        put16(&mut c, flags);
        put16(&mut c, method.id());
        put16(&mut c, time);
        put16(&mut c, date);
        put32(&mut c, d.crc);
        put32(&mut c, field32(d.compressed));
        put32(&mut c, field32(d.size));
        put16(&mut c, name.len() as u16);
        put16(&mut c, extra_len as u16);
        put16(&mut c, 0); // comment
        put16(&mut c, 0); // disk
        put16(&mut c, 0); // internal attributes
        put32(&mut c, external_attributes(entry));
        put32(&mut c, field32(offset));
        c.extend_from_slice(name.as_bytes());
        if !zip64.is_empty() {
            put16(&mut c, ZIP64_EXTRA);
            put16(&mut c, zip64.len() as u16);
            c.extend_from_slice(&zip64);
        }
        put16(&mut c, EXTENDED_TIMESTAMP);
        put16(&mut c, 5);
        c.push(1);
        put32(&mut c, mtime);
        self.central.write_all(&c).map_err(|source| PackError::Output {
            path: self.central_path.clone(),
            source,
        })?;
        self.central_len += c.len() as u64;
        self.entries += 1;
        Ok(())
    }

    /// An entry whose data is in memory.
    fn entry(&mut self, entry: &Entry, method: Method, crc: u32, data: &[u8]) -> Result<(), PackError> {
        let size = match entry.kind {
            Kind::File { size } => size,
            _ => data.len() as u64,
        };
        let d = DataInfo {
            crc,
            size,
            compressed: data.len() as u64,
        };
        self.begin(entry, method, d)?;
        self.write(data)
    }

    /// Copies the central directory in and ends the archive.
    fn finish(mut self) -> Result<Sink, PackError> {
        let cd_offset = self.pos;
        let central_path = self.central_path.clone();
        let cd_err = move |source| PackError::Output {
            path: central_path.clone(),
            source,
        };
        self.central.flush().map_err(&cd_err)?;
        self.central.get_mut().seek(SeekFrom::Start(0)).map_err(&cd_err)?;
        let mut buf = vec![0u8; 256 << 10];
        let mut left = self.central_len;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            self.central.get_mut().read_exact(&mut buf[..want]).map_err(&cd_err)?;
            self.write(&buf[..want])?;
            left -= want as u64;
        }
        let (entries, cd_size) = (self.entries, self.central_len);
        let mut e = Vec::with_capacity(98);
        if entries >= MAX16 || cd_size >= MAX32 || cd_offset >= MAX32 {
            let end64 = self.pos;
            put32(&mut e, ZIP64_END_OF_CENTRAL_DIRECTORY);
            put64(&mut e, 44); // the size of the rest of this record
            put16(&mut e, MADE_BY_UNIX | ZIP64_VERSION);
            put16(&mut e, ZIP64_VERSION);
            put32(&mut e, 0); // this disk
            put32(&mut e, 0); // the disk of the central directory
            put64(&mut e, entries);
            put64(&mut e, entries);
            put64(&mut e, cd_size);
            put64(&mut e, cd_offset);
            put32(&mut e, ZIP64_LOCATOR);
            put32(&mut e, 0); // the disk of the zip64 end record
            put64(&mut e, end64);
            put32(&mut e, 1); // disks
        }
        put32(&mut e, END_OF_CENTRAL_DIRECTORY);
        put16(&mut e, 0); // this disk
        put16(&mut e, 0); // the disk of the central directory
        put16(&mut e, entries.min(MAX16) as u16);
        put16(&mut e, entries.min(MAX16) as u16);
        put32(&mut e, field32(cd_size));
        put32(&mut e, field32(cd_offset));
        put16(&mut e, 0); // comment
        self.write(&e)?;
        Ok(self.sink)
    }
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
    let [spill, central_path] = spill_paths(&opts.output);
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
        out: ZipOut {
            sink,
            path: opts.output.clone(),
            pos: 0,
            central: BufWriter::with_capacity(256 << 10, central),
            central_path: central_path.to_path_buf(),
            central_len: 0,
            entries: 0,
            header: Vec::new(),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_time_clamps() {
        assert_eq!(dos_time(0).1 >> 9, 0, "1970 is stored as 1980");
        // 2023-11-14 22:13:20 UTC
        let (time, date) = dos_time(1_700_000_000);
        assert_eq!((date >> 9, (date >> 5) & 0xF, date & 0x1F), (43, 11, 14));
        assert_eq!((time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2), (22, 13, 20));
    }
}
