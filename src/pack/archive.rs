//! The archive formats (zip, tar) and the tar headers: mode, numeric owner and mtime in GNU
//! headers (long names via GNU long-name records), with no user or group names and nothing taken
//! from the clock, so the same tree always gives the same bytes. zip writes its own headers
//! ([`super::zip`]).

use std::fmt;

use super::compress::Codec;
use super::entry::{Entry, Kind};

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
