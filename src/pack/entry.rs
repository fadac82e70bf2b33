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
    /// What else tells a change, as the walk saw it (for incremental archives).
    pub change: Change,
}

/// The parts of a file's status that change when its content might have, beyond size and mode:
/// times to the nanosecond and identity. A write always moves `ctime`, even when `mtime` is put
/// back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device.
    pub dev: u64,
    /// Hard links to the inode (a file with more than one is stored once in a tar archive).
    pub nlink: u64,
}

impl Change {
    /// The change stamp of `m`.
    pub fn of(m: &std::fs::Metadata) -> Change {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Change {
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
        }
    }
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
