//! The staging folder of a restore: `.robusto-restore-<random>` inside the target folder (the
//! same filesystem, so moving an entry into place is a rename). Entries are extracted into it,
//! and moved into the target folder only once the whole archive has been read and checked
//! ([`Staging::commit`]); otherwise it is removed with everything in it ([`Staging::discard`], or
//! a drop), and the target folder never saw any of it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The start of a staging folder's name.
pub(super) const PREFIX: &str = ".robusto-restore-";

/// A staging folder, removed on drop unless committed.
#[derive(Debug)]
pub(super) struct Staging {
    root: PathBuf,
    dir: PathBuf,
    name: OsString,
    done: bool,
}

impl Staging {
    /// Creates a new, empty staging folder (owner-only) inside `root`.
    pub(super) fn create(root: &Path) -> io::Result<Staging> {
        loop {
            let name = OsString::from(format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
            let dir = root.join(&name);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    return Ok(Staging {
                        root: root.to_path_buf(),
                        dir,
                        name,
                        done: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The folder.
    pub(super) fn path(&self) -> &Path {
        &self.dir
    }

    /// Its name inside the target folder.
    pub(super) fn name(&self) -> &OsStr {
        &self.name
    }

    /// Moves everything staged into the target folder: a staged folder where the target has a
    /// folder is merged into it (entry by entry), anything else replaces what is there (a
    /// rename: the new file or link takes the name at once, a link in the way is replaced, never
    /// followed). Then removes the staging folder. On an error, the entries moved so far stay
    /// moved; the path named is the one that could not be moved.
    pub(super) fn commit(mut self) -> Result<(), (PathBuf, io::Error)> {
        merge(&self.dir, &self.root)?;
        self.done = true;
        fs::remove_dir(&self.dir).map_err(|e| (self.dir.clone(), e))
    }

    /// Removes the staging folder and everything in it.
    pub(super) fn discard(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        self.done = true;
        // remove_dir_all does not follow symlinks; staged folders keep the owner-writable mode
        // they were made with (archive modes are applied after the move)
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the staging folder {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            self.remove();
        }
    }
}

/// Moves the contents of the folder `from` into the folder `to` (see [`Staging::commit`]).
fn merge(from: &Path, to: &Path) -> Result<(), (PathBuf, io::Error)> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |e| (path, e)
    };
    for entry in fs::read_dir(from).map_err(fail(from))? {
        let entry = entry.map_err(fail(from))?;
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        // file_type does not follow a symlink
        let staged_dir = entry.file_type().map_err(fail(&src))?.is_dir();
        if staged_dir {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {
                    merge(&src, &dest)?;
                    fs::remove_dir(&src).map_err(fail(&src))?;
                    continue;
                }
                // a file or link where the archive has a folder: the folder replaces it
                Ok(_) => fs::remove_file(&dest).map_err(fail(&dest))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err((dest, e)),
            }
        }
        fs::rename(&src, &dest).map_err(fail(&dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_merges_folders_and_replaces_files_and_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("a/keep")).unwrap();
        fs::write(root.join("a/old.txt"), b"old").unwrap();
        fs::write(root.join("a/keep/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("was-link")).unwrap();
        let s = Staging::create(root).unwrap();
        let p = s.path().to_path_buf();
        assert!(s.name().to_string_lossy().starts_with(PREFIX));
        fs::create_dir_all(p.join("a/new")).unwrap();
        fs::write(p.join("a/old.txt"), b"new").unwrap();
        fs::write(p.join("a/new/y"), b"y").unwrap();
        fs::create_dir(p.join("was-link")).unwrap();
        fs::write(p.join("was-link/z"), b"z").unwrap();
        s.commit().unwrap();
        assert_eq!(fs::read(root.join("a/old.txt")).unwrap(), b"new");
        assert_eq!(fs::read(root.join("a/keep/x")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("a/new/y")).unwrap(), b"y");
        assert!(fs::symlink_metadata(root.join("was-link")).unwrap().is_dir());
        assert!(!p.exists());
    }

    #[test]
    fn a_dropped_staging_folder_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::create(d.path()).unwrap();
        let p = s.path().to_path_buf();
        fs::create_dir_all(p.join("deep/er")).unwrap();
        fs::write(p.join("deep/er/f"), b"f").unwrap();
        drop(s);
        assert!(!p.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
