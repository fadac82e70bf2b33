//! The manifest: `FILE.manifest.json` beside an archive, recording how it was made and the MD5 of
//! the whole file and of every chunk. Written atomically after the archive is complete;
//! `robusto verify` re-hashes the archive against it; the sender takes its chunking and digests
//! from it instead of reading the file twice.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::fingerprint::{ChunkDigest, Fingerprint, Md5, fingerprint_file};

/// The manifest format version this build writes and reads.
pub const VERSION: u32 = 1;

/// What went wrong reading or checking a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// There is no manifest beside the file.
    #[error("no manifest at {0} (was the file made by 'robusto pack'?)")]
    Missing(PathBuf),
    /// The manifest or the archive could not be read or written.
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path} is not a valid manifest: {source}")]
    Malformed {
        /// The manifest file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The manifest is internally inconsistent or of an unknown version.
    #[error("{path} is not a usable manifest: {reason}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A chunk's bytes do not match the manifest.
    #[error(
        "chunk {index} (bytes {offset}..{end}) does not match the manifest: expected md5 {expected}, found {found}",
        end = offset.saturating_add(*len)
    )]
    ChunkMismatch {
        /// Chunk number, from 0.
        index: usize,
        /// First byte of the chunk.
        offset: u64,
        /// Chunk length per the manifest.
        len: u64,
        /// MD5 recorded in the manifest.
        expected: Md5,
        /// MD5 of the bytes found (of the bytes present, for a short chunk).
        found: Md5,
    },
    /// The file has another size than the manifest records.
    #[error("size is {found} bytes, the manifest says {expected}{}", if found < expected { ": the archive is too short (truncated)" } else { ": the archive is too long" })]
    SizeMismatch {
        /// Size recorded in the manifest.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// The whole-file MD5 does not match.
    #[error("whole-file md5 is {found}, the manifest says {expected}")]
    WholeMismatch {
        /// MD5 recorded in the manifest.
        expected: Md5,
        /// MD5 found.
        found: Md5,
    },
}

/// The archive a manifest describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// The archive's file name (no directory).
    pub file: String,
    /// `zip`, `tar`, or `raw` for a file that robusto did not pack.
    pub format: String,
    /// `none`, `deflate` or `zstd`.
    pub compress: String,
    /// The compression level used, if any.
    pub level: Option<i32>,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of the whole archive.
    pub md5: Md5,
}

/// A file that could not be packed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The path as given on the command line plus the path inside it.
    pub path: String,
    /// Why it was skipped (unreadable, vanished, changed, special file …).
    pub reason: String,
}

/// What was packed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The paths given to `pack`.
    pub paths: Vec<String>,
    /// Regular files stored.
    pub files: u64,
    /// Bytes of regular file content stored (before compression).
    pub bytes: u64,
    /// Files left out, each with the reason.
    pub skipped: Vec<Skipped>,
}

/// The manifest of an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`VERSION`].
    pub version: u32,
    /// The archive.
    pub archive: ArchiveInfo,
    /// Chunk size in bytes; every chunk but the last has this length.
    pub chunk_size: u64,
    /// One digest per chunk.
    pub chunks: Vec<ChunkDigest>,
    /// What went into the archive.
    pub source: SourceInfo,
    /// When the manifest was made (RFC 3339, UTC).
    pub created: String,
    /// Where the archive stands in an incremental chain (`push --incremental`); absent for an
    /// archive that stands alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::incremental::Link>,
}

/// `FILE.manifest.json` for `FILE`.
pub fn path_for(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".manifest.json");
    archive.with_file_name(name)
}

/// The current time as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Manifest {
    /// A manifest for `archive` with fingerprint `fp`.
    pub fn new(
        archive: &Path,
        format: &str,
        compress: &str,
        level: Option<i32>,
        fp: Fingerprint,
        source: SourceInfo,
    ) -> Self {
        Manifest {
            version: VERSION,
            archive: ArchiveInfo {
                file: archive
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                format: format.to_string(),
                compress: compress.to_string(),
                level,
                size: fp.size,
                md5: fp.md5,
            },
            chunk_size: fp.chunk_size,
            chunks: fp.chunks,
            source,
            created: now_rfc3339(),
            incremental: None,
        }
    }

    /// Writes the manifest to `path` atomically (temp, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| ManifestError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(e),
        })?;
        json.push(b'\n');
        durable::write_atomic(path, &json).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and checks the manifest at `path`.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ManifestError::Missing(path.to_path_buf())),
            Err(source) => {
                return Err(ManifestError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Malformed {
            path: path.to_path_buf(),
            source,
        })?;
        m.check().map_err(|reason| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(m)
    }

    /// Reads the manifest that belongs to `archive`.
    pub fn read_for(archive: &Path) -> Result<Self, ManifestError> {
        Self::read(&path_for(archive))
    }

    /// Checks that the chunk list tiles the archive exactly.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "version {} (this robusto reads version {VERSION})",
                self.version
            ));
        }
        if self.chunk_size == 0 {
            return Err("chunk_size is 0".into());
        }
        let mut offset = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let last = i + 1 == self.chunks.len();
            if c.offset != offset || c.len == 0 || c.len > self.chunk_size || (!last && c.len != self.chunk_size) {
                return Err(format!("chunk {i} does not follow the chunk size {}", self.chunk_size));
            }
            offset = offset.checked_add(c.len).ok_or("chunk offsets overflow")?;
        }
        if offset != self.archive.size {
            return Err(format!(
                "chunks cover {offset} bytes but the archive has {}",
                self.archive.size
            ));
        }
        Ok(())
    }

    /// Compares a fingerprint of the archive with this manifest; the first difference wins,
    /// chunks first so that damage is located.
    pub fn compare(&self, fp: &Fingerprint) -> Result<(), ManifestError> {
        // a file cut short is said to be so, not as a damaged last chunk
        if fp.size < self.archive.size {
            return Err(ManifestError::SizeMismatch {
                expected: self.archive.size,
                found: fp.size,
            });
        }
        for (index, (want, got)) in self.chunks.iter().zip(&fp.chunks).enumerate() {
            if want.md5 != got.md5 || want.len != got.len {
                return Err(ManifestError::ChunkMismatch {
                    index,
                    offset: want.offset,
                    len: want.len,
                    expected: want.md5,
                    found: got.md5,
                });
            }
        }
        if fp.size != self.archive.size {
            return Err(ManifestError::SizeMismatch {
                expected: self.archive.size,
                found: fp.size,
            });
        }
        if fp.md5 != self.archive.md5 {
            return Err(ManifestError::WholeMismatch {
                expected: self.archive.md5,
                found: fp.md5,
            });
        }
        Ok(())
    }
}

/// Re-hashes `archive` against its manifest: whole MD5 and every chunk.
pub fn verify(archive: &Path) -> Result<Manifest, ManifestError> {
    let m = Manifest::read_for(archive)?;
    let fp = fingerprint_file(archive, m.chunk_size).map_err(|source| ManifestError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    m.compare(&fp)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::fingerprint_reader;

    fn sample(dir: &Path, data: &[u8], chunk: u64) -> PathBuf {
        let file = dir.join("a.bin");
        fs::write(&file, data).unwrap();
        let fp = fingerprint_reader(data, chunk).unwrap();
        Manifest::new(&file, "raw", "none", None, fp, SourceInfo::default())
            .write(&path_for(&file))
            .unwrap();
        file
    }

    #[test]
    fn verify_passes_then_names_the_damaged_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let file = sample(dir.path(), &data, 1000);
        let m = verify(&file).unwrap();
        assert_eq!(m.chunks.len(), 10);
        assert_eq!(m.archive.md5, Md5::of(&data));
        let mut bad = data.clone();
        bad[4321] ^= 0x01;
        fs::write(&file, &bad).unwrap();
        match verify(&file) {
            Err(ManifestError::ChunkMismatch { index, offset, len, .. }) => {
                assert_eq!((index, offset, len), (4, 4000, 1000))
            }
            other => panic!("expected chunk 4 mismatch, got {other:?}"),
        }
        // a file cut short is said to be too short, not a damaged last chunk
        fs::write(&file, &data[..9_500]).unwrap();
        let e = verify(&file).unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::SizeMismatch {
                    expected: 10_000,
                    found: 9_500
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("too short (truncated)"), "{e}");
    }

    #[test]
    fn missing_and_malformed_manifests_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.zip");
        fs::write(&file, b"abc").unwrap();
        assert!(matches!(verify(&file), Err(ManifestError::Missing(_))));
        fs::write(path_for(&file), b"{not json").unwrap();
        let e = verify(&file).unwrap_err();
        assert!(matches!(e, ManifestError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("x.zip.manifest.json"));
    }

    #[test]
    fn inconsistent_chunk_list_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = sample(dir.path(), b"0123456789", 4);
        let mut m = Manifest::read_for(&file).unwrap();
        m.chunks.pop();
        m.write(&path_for(&file)).unwrap();
        assert!(matches!(Manifest::read_for(&file), Err(ManifestError::Invalid { .. })));
    }
}
