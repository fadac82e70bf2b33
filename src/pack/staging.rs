//! The staging file: the archive is written to `FILE.partial`, fsynced and renamed to `FILE` only
//! when complete, so `FILE` is never a half-written archive. A staging file that is dropped
//! without being committed is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::durable;
use crate::writeback::Writeback;

/// An archive being written.
pub struct Staging {
    target: PathBuf,
    partial: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates (or truncates) `FILE.partial` for `target`.
    pub fn create(target: &Path) -> io::Result<(Self, File)> {
        let partial = durable::partial_path(target);
        // Owner-only: an archive of private files must not be readable by others meanwhile.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        Ok((
            Staging {
                target: target.to_path_buf(),
                partial,
                committed: false,
            },
            file,
        ))
    }

    /// The temporary path being written.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// fsyncs the finished file and renames it into place.
    pub fn commit(mut self, file: File) -> io::Result<()> {
        durable::commit_file(file, &self.partial, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Bytes written between two early-writeback requests.
const WRITEBACK_STEP: u64 = 8 << 20;

/// The staging file's writer: asks the kernel to start writing each 8 MiB back to disk as soon as
/// it is written ([`Writeback`]), so the disk works while the pipeline computes and the final
/// fsync has little left to do. Written pages are dropped from the cache once on disk, unless the
/// file is about to be read again (`push` sends it next).
pub struct WritebackFile {
    file: File,
    /// `None` for a stream (`pack -o -`): there is no file to write back.
    writeback: Option<Writeback>,
}

impl WritebackFile {
    /// Wraps an open, empty staging file; `keep_cached` leaves its pages in the page cache.
    pub fn new(file: File, keep_cached: bool) -> Self {
        let writeback = Writeback::new(0, WRITEBACK_STEP);
        WritebackFile {
            file,
            writeback: Some(if keep_cached {
                writeback.keeping_cache()
            } else {
                writeback
            }),
        }
    }

    /// Wraps a pipe or a terminal (standard output): written as it comes, never written back.
    pub fn stream(file: File) -> Self {
        WritebackFile { file, writeback: None }
    }

    /// The file, for [`Staging::commit`].
    pub fn into_inner(self) -> File {
        self.file
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::stop::check()?;
        let n = self.file.write(buf)?;
        if let Some(w) = &mut self.writeback {
            w.wrote(&self.file, n as u64)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writeback_file_writes_everything() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("w.bin");
        let (s, f) = Staging::create(&target).unwrap();
        let mut w = WritebackFile::new(f, false);
        let block = vec![7u8; 3 << 20];
        for _ in 0..6 {
            w.write_all(&block).unwrap();
        }
        s.commit(w.into_inner()).unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().len(), 18 << 20);
    }

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a.zip");
        let (s, mut f) = Staging::create(&target).unwrap();
        f.write_all(b"data").unwrap();
        assert!(s.partial().exists());
        s.commit(f).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        assert!(!durable::partial_path(&target).exists());

        let (s, _f) = Staging::create(&d.path().join("b.zip")).unwrap();
        let p = s.partial().to_path_buf();
        drop(s);
        assert!(!p.exists());
        assert!(!d.path().join("b.zip").exists());
    }
}
