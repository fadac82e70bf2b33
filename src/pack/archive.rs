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
    // Info-ZIP reads the field as unsigned 32-bit seconds, as does the zip crate.
    let secs = entry.mtime.clamp(0, u32::MAX as i64) as u32;
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
    /// Set if the file changed while being read, or a read failed: the stored content may not be
    /// what is on disk now (it is stored anyway, and reported).
    pub problem: Option<String>,
}

/// The state of an open file that tells whether it changed: size, mtime and ctime to the
/// nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A file opened for archiving, with what `fstat` said when it was opened: the size, mode and
/// mtime stored in the archive all come from this one look, so header and content agree.
pub struct Source {
    file: File,
    stamp: Stamp,
    /// Size in bytes when opened.
    pub size: u64,
    /// Permission bits when opened.
    pub mode: u32,
    /// Modification time (seconds) when opened.
    pub mtime: i64,
}

/// Opens a file to archive without following a symlink that replaced it since the walk (unless
/// links are followed) and without blocking on a fifo that did; anything but a regular file is
/// refused. Failures are described the way the skipped list wants them.
pub fn open_source(path: &Path, follow: bool) -> Result<Source, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "vanished".to_string(),
            io::ErrorKind::PermissionDenied => "unreadable: permission denied".to_string(),
            _ if e.raw_os_error() == Some(libc::ELOOP) => "replaced by a symlink since the walk".to_string(),
            _ => format!("unreadable: {e}"),
        })?;
    let m = file.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if !m.is_file() {
        return Err("replaced by something other than a regular file since the walk".into());
    }
    Ok(Source {
        stamp: Stamp::of(&m),
        size: m.len(),
        mode: m.mode() & 0o7777,
        mtime: m.mtime(),
        file,
    })
}

impl Source {
    /// A reader of exactly the size seen at open.
    pub fn reader(self) -> ExactReader {
        ExactReader {
            remaining: self.size,
            file: self.file,
            stamp: self.stamp,
            problem: None,
        }
    }
}

/// Reads exactly the size a [`Source`] had when opened: if the file ends early or a read fails,
/// the rest is zeros (so headers already written stay true) and the problem is recorded.
pub struct ExactReader {
    file: File,
    stamp: Stamp,
    remaining: u64,
    problem: Option<String>,
}

impl ExactReader {
    /// Finishes: reports a failed read, or a file that changed (size, mtime or ctime: a file
    /// that grew changed its size) since it was opened.
    pub fn finish(self) -> ReadOutcome {
        let mut problem = self.problem;
        if problem.is_none() && self.file.metadata().map_or(true, |m| Stamp::of(&m) != self.stamp) {
            problem = Some("changed while being read".into());
        }
        ReadOutcome { problem }
    }
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        // a stop (SIGTERM) must not wait for the end of a large file
        crate::stop::check()?;
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

/// Copies a source's content into `out`, then reports whether the file changed meanwhile.
pub fn copy_exact(source: Source, out: &mut dyn Write) -> io::Result<ReadOutcome> {
    // no bigger than the file: a fresh 256 KiB buffer per small file would cost more than it reads
    let mut buf = vec![0u8; source.size.clamp(1, 256 << 10) as usize];
    let mut r = source.reader();
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    Ok(r.finish())
}

/// The reason recorded for a file whose content was stored but may be inconsistent.
pub fn changed_reason(problem: &str) -> String {
    format!("{problem}; stored content may be inconsistent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_reports_a_file_that_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abcdef").unwrap();
        let mut out = Vec::new();
        assert!(
            copy_exact(open_source(&p, false).unwrap(), &mut out)
                .unwrap()
                .problem
                .is_none()
        );
        assert_eq!(out, b"abcdef");
        // shrinks after open: zeros fill the size announced
        let src = open_source(&p, false).unwrap();
        std::fs::write(&p, b"abc").unwrap();
        let mut out = Vec::new();
        let outcome = copy_exact(src, &mut out).unwrap();
        assert_eq!(out, b"abc\0\0\0");
        assert!(outcome.problem.is_some());
        // grows after open: the size announced is kept, the change reported
        let src = open_source(&p, false).unwrap();
        std::fs::write(&p, b"abcdefghij").unwrap();
        let mut out = Vec::new();
        assert!(copy_exact(src, &mut out).unwrap().problem.is_some());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn open_source_refuses_links_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            open_source(&link, false).err().unwrap(),
            "replaced by a symlink since the walk"
        );
        assert!(open_source(&link, true).is_ok());
        let fifo = d.path().join("p");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(
            open_source(&fifo, false)
                .err()
                .unwrap()
                .contains("other than a regular file")
        );
    }

    #[test]
    fn dos_time_clamps() {
        assert_eq!(dos_time(0).year(), 1980);
        assert_eq!(dos_time(1_700_000_000).year(), 2023);
    }
}
