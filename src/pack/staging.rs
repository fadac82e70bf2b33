//! The staging file: the archive is written to `FILE.partial`, fsynced and renamed to `FILE` only
//! when complete, so `FILE` is never a half-written archive. A staging file that is dropped
//! without being committed is removed.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::durable;

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
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
