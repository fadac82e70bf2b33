//! What goes into an archive: one [`Entry`] per directory, file or symlink, as the walk found it
//! (and, for a file, as it was when opened for reading, see [`Entry::refreshed`]).

use std::path::PathBuf;

use super::source::Source;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory (stored even when empty).
    Dir,
    /// A regular file of the given size at walk time.
    File {
        /// Size in bytes when walked.
        size: u64,
    },
    /// A symbolic link, stored as a link.
    Symlink {
        /// Where it points.
        target: PathBuf,
    },
}

/// One thing to store.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where it is on disk.
    pub src: PathBuf,
    /// Its name inside the archive: relative, `/`-separated, no trailing slash.
    pub name: String,
    /// Directory, file or link.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Entry {
    /// This entry with the size, mode and mtime of `source`, the file as opened for reading.
    pub fn refreshed(&self, source: &Source) -> Entry {
        Entry {
            kind: Kind::File { size: source.size },
            mode: source.mode,
            mtime: source.mtime,
            ..self.clone()
        }
    }
}
