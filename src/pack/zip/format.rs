//! The zip container's bytes: local headers with CRC and sizes up front, central directory
//! records (collected in a spill file as entries are written), the end records, and zip64 fields
//! where a size, an offset or the number of entries needs them. Entries carry their mode in the
//! external attributes (made by Unix), a DOS time and an Info-ZIP extended timestamp (mtime to
//! the second); nothing comes from the clock.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::pack::compress::{Codec, Compression};
use crate::pack::entry::{Entry, Kind};
use crate::pack::{PackError, Sink};

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

/// How an entry's data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Stored,
    Deflate(u32),
    Zstd(i32),
}

impl Method {
    /// The method for `entry` under `c`: files are compressed (deflate level 0 is stored),
    /// directories and links are stored.
    pub(super) fn of(entry: &Entry, c: Compression) -> Method {
        match entry.kind {
            Kind::File { .. } => Method::for_files(c),
            _ => Method::Stored,
        }
    }

    /// The method for files under `c`.
    pub(super) fn for_files(c: Compression) -> Method {
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
pub(super) struct DataInfo {
    /// CRC-32 of the content.
    pub(super) crc: u32,
    /// The content's size.
    pub(super) size: u64,
    /// The size as stored.
    pub(super) compressed: u64,
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
pub(super) struct ZipOut {
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
    /// Starts the archive in `sink` (written to `path`), collecting the central directory in
    /// `central` (an empty file at `central_path`).
    pub(super) fn new(sink: Sink, path: PathBuf, central: File, central_path: PathBuf) -> Self {
        ZipOut {
            sink,
            path,
            pos: 0,
            central: BufWriter::with_capacity(256 << 10, central),
            central_path,
            central_len: 0,
            entries: 0,
            header: Vec::new(),
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.sink.write_all(bytes).map_err(|source| PackError::Output {
            path: self.path.clone(),
            source,
        })?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the local header of an entry whose data comes next, and adds the entry to the
    /// central directory.
    pub(super) fn begin(&mut self, entry: &Entry, method: Method, d: DataInfo) -> Result<(), PackError> {
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
    pub(super) fn entry(&mut self, entry: &Entry, method: Method, crc: u32, data: &[u8]) -> Result<(), PackError> {
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
    pub(super) fn finish(mut self) -> Result<Sink, PackError> {
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
