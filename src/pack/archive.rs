//! Archive formats and their deterministic headers. zip entries carry the mode, a DOS time and an
//! extended-timestamp field (mtime to the second, as Info-ZIP writes); tar entries carry mode,
//! numeric owner and mtime in GNU headers (long names via GNU long-name records), with no user or
//! group names and nothing taken from the clock. The same tree always gives the same bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use zip::write::{ExtendedFileOptions, FileOptions, FullFileOptions};
use zip::{CompressionMethod, DateTime};

use super::compress::{Codec, Compression};
use super::walk::{Entry, Kind};

/// The archive container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// zip: each entry compressed on its own (in parallel).
    Zip,
    /// tar: the whole stream compressed.
    Tar,
}

impl Format {
    /// Parses `zip` or `tar`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "zip" => Some(Format::Zip),
            "tar" => Some(Format::Tar),
            _ => None,
        }
    }

    /// The name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::Tar => "tar",
        }
    }

    /// The usual file extension for this format and codec: `zip`, `tar`, `tar.gz`, `tar.zst`.
    pub fn extension(self, codec: Codec) -> &'static str {
        match (self, codec) {
            (Format::Zip, _) => "zip",
            (Format::Tar, Codec::None) => "tar",
            (Format::Tar, Codec::Deflate) => "tar.gz",
            (Format::Tar, Codec::Zstd) => "tar.zst",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Files at least this large are written with zip64 sizes (compressed output of incompressible
/// data can exceed the input a little).
const ZIP64_THRESHOLD: u64 = 0xFFFF_FFFF - (64 << 20);

/// Header id of the Info-ZIP extended timestamp extra field.
const EXTENDED_TIMESTAMP: u16 = 0x5455;

fn dos_time(mtime: i64) -> DateTime {
    let t = time::OffsetDateTime::from_unix_timestamp(mtime).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let clamp_year = t.year().clamp(1980, 2107) as u16;
    DateTime::from_date_and_time(clamp_year, t.month() as u8, t.day(), t.hour(), t.minute(), t.second())
        .unwrap_or_default()
}

/// The zip options for `entry` compressed with `c`: method, level, mode, times.
pub fn zip_options(entry: &Entry, c: Compression) -> zip::result::ZipResult<FullFileOptions<'static, 'static>> {
    let (method, level) = match (entry.kind.clone(), c.codec, c.level) {
        (Kind::File { .. }, Codec::Deflate, Some(l)) if l > 0 => (CompressionMethod::Deflated, Some(l as i64)),
        (Kind::File { .. }, Codec::Zstd, l) => (CompressionMethod::Zstd, l.map(i64::from)),
        _ => (CompressionMethod::Stored, None),
    };
    let large = matches!(entry.kind, Kind::File { size } if size >= ZIP64_THRESHOLD);
    let mut opts: FileOptions<'static, 'static, ExtendedFileOptions> = FileOptions::default()
        .compression_method(method)
        .compression_level(level)
        .last_modified_time(dos_time(entry.mtime))
        .unix_permissions(entry.mode)
        .large_file(large);
    let secs = entry.mtime.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    let mut field = vec![1u8];
    field.extend_from_slice(&secs.to_le_bytes());
    opts.add_extra_field(EXTENDED_TIMESTAMP, field, false)?;
    Ok(opts)
}

/// A GNU tar header for `entry` (the caller sets the name through the builder).
pub fn tar_header(entry: &Entry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(entry.mode);
    h.set_uid(entry.uid as u64);
    h.set_gid(entry.gid as u64);
    h.set_mtime(entry.mtime.max(0) as u64);
    match &entry.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        Kind::File { size } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*size);
        }
        Kind::Symlink { .. } => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
        }
    }
    h
}

/// What happened while a file's content was read.
#[derive(Debug, Default, Clone)]
pub struct ReadOutcome {
    /// Set if the file changed size or was modified while being read, or a read failed: the
    /// stored content may not be what is on disk now.
    pub problem: Option<String>,
}

/// Reads exactly `size` bytes of an open file: if the file ends early or a read fails, the rest
/// is zeros (so headers already written stay true) and the problem is recorded.
pub struct ExactReader {
    file: File,
    remaining: u64,
    problem: Option<String>,
}

impl ExactReader {
    /// Reads `size` bytes of `file`.
    pub fn new(file: File, size: u64) -> Self {
        ExactReader {
            file,
            remaining: size,
            problem: None,
        }
    }

    /// Finishes: checks whether the file grew or was modified since `mtime`.
    pub fn finish(self, mtime: i64) -> ReadOutcome {
        use std::os::unix::fs::MetadataExt;
        let mut problem = self.problem;
        if problem.is_none()
            && let Ok(m) = self.file.metadata()
        {
            if m.mtime() != mtime {
                problem = Some("changed while being read".into());
            } else {
                let mut probe = [0u8; 1];
                if matches!((&self.file).read(&mut probe), Ok(n) if n > 0) {
                    problem = Some("grew while being read".into());
                }
            }
        }
        ReadOutcome { problem }
    }
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = if self.problem.is_some() {
            0
        } else {
            loop {
                match self.file.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.problem = Some(format!("read failed: {e}"));
                        break 0;
                    }
                }
            }
        };
        let n = if n == 0 {
            if self.problem.is_none() {
                self.problem = Some("shrank while being read".into());
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Copies exactly `size` bytes of `file` into `out`, then reports whether the file changed.
pub fn copy_exact(file: File, size: u64, mtime: i64, out: &mut dyn Write) -> io::Result<ReadOutcome> {
    let mut r = ExactReader::new(file, size);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    Ok(r.finish(mtime))
}

/// Opens a file to archive, describing failures the way the skipped list wants them.
pub fn open_source(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "vanished".to_string(),
        io::ErrorKind::PermissionDenied => "unreadable: permission denied".to_string(),
        _ => format!("unreadable: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_pads_a_short_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let mut out = Vec::new();
        let outcome = copy_exact(File::open(&p).unwrap(), 5, 0, &mut out).unwrap();
        assert_eq!(out, b"abc\0\0");
        assert_eq!(outcome.problem.as_deref(), Some("shrank while being read"));
        let mut out = Vec::new();
        let outcome = copy_exact(File::open(&p).unwrap(), 2, 0, &mut out).unwrap();
        assert_eq!(out, b"ab");
        assert!(outcome.problem.is_some(), "mtime 0 differs, or it grew");
    }

    #[test]
    fn dos_time_clamps() {
        assert_eq!(dos_time(0).year(), 1980);
        assert_eq!(dos_time(1_700_000_000).year(), 2023);
    }
}
