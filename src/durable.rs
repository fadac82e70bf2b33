//! Durable file replacement: write to a temporary sibling, fsync, rename over the target, fsync
//! the directory. Every piece of state robusto keeps on disk (staging files, manifests, server
//! upload info, client journals) goes through here, so a crash leaves either the old or the new
//! version, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary sibling used while `path` is being replaced: `NAME.partial` beside it.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// A path robusto would replace with a file of its own, where something other than a regular
/// file already is: renaming over it would put a file where a device, a fifo, a folder or a
/// link was (as root, `-o /dev/null` would replace the device).
#[derive(Debug, thiserror::Error)]
#[error("{} is {kind}, not a regular file: robusto writes a new file there and will not replace it", .path.display())]
pub struct NotAFile {
    /// The path.
    pub path: PathBuf,
    /// What is there: "a folder", "a fifo", "a character device"…
    pub kind: &'static str,
}

/// `Ok` when `path` is free or a regular file (what robusto may replace by renaming a file over
/// it); otherwise what is there. A symbolic link is not followed: it is refused too.
pub fn check_replaceable(path: &Path) -> Result<(), NotAFile> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(NotAFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Flushes a directory entry table to stable storage, so that a rename or a create inside it
/// survives a power cut.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// The directory that holds `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Atomically replaces `path` with `bytes`: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = partial_path(path);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(parent_dir(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a finished temporary file permanent: fsync it, rename it to `path`, fsync the directory.
pub fn commit_file(file: File, tmp: &Path, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    fsync_dir(parent_dir(path))
}

/// Whether `e`, or an I/O error inside it, says the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<io::Error>())
            .is_some_and(is_disk_full)
}

/// An I/O error as a message says it: "the disk is full (No space left on device …)" when it
/// is ([`is_disk_full`]), else the error itself.
#[derive(Debug)]
pub struct IoReason<'a>(pub &'a io::Error);

impl std::fmt::Display for IoReason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if is_disk_full(self.0) {
            write!(f, "the disk is full ({})", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_said_so() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(IoReason(&full).to_string(), format!("the disk is full ({full})"));
        let wrapped = io::Error::other(io::Error::from_raw_os_error(libc::EDQUOT));
        assert!(is_disk_full(&wrapped));
        let other = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(IoReason(&other).to_string(), other.to_string());
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("info.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!partial_path(&p).exists());
    }

    #[test]
    fn only_free_paths_and_regular_files_are_replaceable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        assert!(check_replaceable(&file).is_ok(), "nothing there yet");
        fs::write(&file, b"x").unwrap();
        assert!(check_replaceable(&file).is_ok());
        let e = check_replaceable(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a folder, not a regular file: robusto writes a new file there and will not replace it",
                dir.path().display()
            )
        );
        assert_eq!(
            check_replaceable(Path::new("/dev/null")).unwrap_err().kind,
            "a character device"
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(check_replaceable(&link).unwrap_err().kind, "a symbolic link");
    }

    #[test]
    fn partial_path_is_a_sibling() {
        assert_eq!(partial_path(Path::new("/a/b.zip")), PathBuf::from("/a/b.zip.partial"));
        assert_eq!(parent_dir(Path::new("b.zip")), Path::new("."));
    }
}
