//! Reading a file's content into the archive: open it without following a symlink that replaced
//! it since the walk and without blocking on a fifo, read exactly the size seen at open (zeros
//! for what went missing), and say afterwards whether it changed while being read.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

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
    /// Reads the whole content (exactly the size seen at open) into `buf`, replacing what it
    /// held, then reports whether the file changed meanwhile.
    pub fn read_into(self, buf: &mut Vec<u8>) -> io::Result<ReadOutcome> {
        buf.clear();
        buf.reserve(self.size as usize);
        let mut r = self.reader();
        r.read_to_end(buf)?;
        Ok(r.finish())
    }

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

/// The reason recorded for a file whose content was stored but may be inconsistent.
pub fn changed_reason(problem: &str) -> String {
    format!("{STORED_BUT} {problem}: the content in the archive may be inconsistent")
}

/// How the reason of a file that was stored, but changed while being read, begins.
pub const STORED_BUT: &str = "stored, but";

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
            open_source(&p, false)
                .unwrap()
                .read_into(&mut out)
                .unwrap()
                .problem
                .is_none()
        );
        assert_eq!(out, b"abcdef");
        // shrinks after open: zeros fill the size announced
        let src = open_source(&p, false).unwrap();
        std::fs::write(&p, b"abc").unwrap();
        let mut out = Vec::new();
        let outcome = src.read_into(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0\0");
        assert!(outcome.problem.is_some());
        // grows after open: the size announced is kept, the change reported
        let src = open_source(&p, false).unwrap();
        std::fs::write(&p, b"abcdefghij").unwrap();
        let mut out = Vec::new();
        assert!(src.read_into(&mut out).unwrap().problem.is_some());
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
}
