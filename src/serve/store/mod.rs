//! The `Store` trait: the seam between the tus protocol and where upload bytes and their info
//! live. Handlers never touch files; they call a store. [`fs::FsStore`] is the default,
//! [`memory::MemoryStore`] serves tests, and every store passes the one shared suite in
//! `tests/it/store.rs`.

pub mod fs;
pub mod memory;
pub mod s3;

use std::io;
use std::ops::Range;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::protocol::{Checksum, ChecksumHasher};
use crate::serve::digest::DigestFeed;

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    /// Accepting bytes (possibly none yet).
    Receiving,
    /// Every byte received and verified (published unless it is a partial upload).
    Complete,
    /// Failed verification; never published.
    Error,
    /// Expired before completion; its bytes were freed, the record is kept to answer 410.
    Expired,
}

/// Everything the server knows about one upload (the fs store keeps it as `<id>.info`, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// 128-bit random id, 32 lowercase hex digits.
    pub id: String,
    /// Total length in bytes; `None` while deferred.
    pub length: Option<u64>,
    /// Bytes committed (durably, for the fs store) and acknowledged.
    pub offset: u64,
    /// `Upload-Metadata` exactly as the client sent it.
    pub metadata: Option<String>,
    /// Hash of the bearer token that created the upload (`None` without tokens).
    pub owner: Option<String>,
    /// `Upload-Concat` as the client sent it.
    pub concat: Option<crate::protocol::Concat>,
    /// Where the upload stands.
    pub state: UploadState,
    /// Why the upload failed, for [`UploadState::Error`].
    pub error: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Expiry time of an unfinished upload, seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// MD5 of the whole upload (hex), when it was computed.
    pub md5: Option<String>,
    /// The name the completed upload was published under (relative to the store's root).
    pub published: Option<String>,
    /// When the upload completed, seconds since the Unix epoch.
    #[serde(default)]
    pub completed: Option<u64>,
    /// The same instant in nanoseconds since the Unix epoch, so that uploads completed within
    /// one second keep their order (absent from records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ns: Option<u64>,
    /// For a partial upload: the final upload created before this one was complete
    /// (`concatenation-unfinished`), which is finished once all its parts are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_upload: Option<String>,
    /// For a partial upload of a `final_upload`: its bytes are written straight into the final
    /// upload's data, starting at this position, so that nothing is copied at the end (the fs
    /// store does this for a partial that had no bytes yet when the final was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<u64>,
    /// The bytes of a checked chunk whose request was cut off, held past `offset` until the
    /// chunk is completed (`robusto-chunk-prefix`); never counted, served or published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldPrefix>,
    /// The whole-file MD5 of bytes `0..offset` as a resumable digest state (base64), kept by
    /// stores that carry it with the info ([`Store::keeps_whole_md5`]): whichever node takes
    /// the last byte checks the whole file without reading it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole_md5: Option<String>,
    /// How many bytes [`UploadInfo::whole_md5`] covers when that is fewer than `offset` (the fs
    /// store records its running digest's latest position, which may trail by a chunk or two):
    /// a restarted server hashes only the bytes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole_md5_at: Option<u64>,
    /// The algorithm of the whole-file checksum a deferred-length upload gets late
    /// (`Want-Repr-Digest` at creation, [`crate::protocol::Extension::ReprDigest`]): the upload
    /// is hashed from its first byte, and its length comes only with the checksum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_wanted: Option<crate::protocol::ChecksumAlgorithm>,
    /// The whole-file checksum sent late (`Repr-Digest`), in the form of the `checksum`
    /// metadata (`md5 <base64>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repr_digest: Option<String>,
}

/// The first bytes of a chunk carrying `Upload-Checksum` whose request was cut off: stored
/// durably right after the committed offset, so that the client sends only the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPrefix {
    /// How many bytes are held.
    pub len: u64,
    /// The `Upload-Checksum` of the whole chunk they begin, as sent (`md5 <base64>`).
    pub checksum: String,
}

impl UploadInfo {
    /// A fresh upload record: nothing received, receiving.
    pub fn new(id: String, length: Option<u64>, created: u64) -> Self {
        UploadInfo {
            id,
            length,
            offset: 0,
            metadata: None,
            owner: None,
            concat: None,
            state: UploadState::Receiving,
            error: None,
            created,
            expires: None,
            md5: None,
            published: None,
            completed: None,
            completed_ns: None,
            final_upload: None,
            placed_at: None,
            held: None,
            whole_md5: None,
            whole_md5_at: None,
            digest_wanted: None,
            repr_digest: None,
        }
    }

    /// Whether every announced byte has arrived.
    pub fn is_full(&self) -> bool {
        self.length == Some(self.offset)
    }

    /// Whether this is a partial upload of the concatenation extension.
    pub fn is_partial(&self) -> bool {
        self.concat == Some(crate::protocol::Concat::Partial)
    }

    /// Whether this is a final upload of the concatenation extension.
    pub fn is_final(&self) -> bool {
        matches!(self.concat, Some(crate::protocol::Concat::Final(_)))
    }
}

/// Why a request body ended early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The connection broke or the read timed out. Without a checksum, the bytes received so
    /// far are kept (tus default).
    #[error("the request body was cut off: {0}")]
    Interrupted(String),
    /// The body sent nothing for the read timeout, or came slower than the minimum rate. Like
    /// a cut: without a checksum what arrived is kept.
    #[error("the request body was given up: {0}")]
    TimedOut(String),
    /// The body is longer than the upload allows; nothing of it is kept.
    #[error("the request body is longer than the upload's remaining length")]
    TooLong,
    /// The body's framing is broken (a chunk size that does not parse or overflows): nothing
    /// of it is kept.
    #[error("the request body is malformed: {0}")]
    Malformed(String),
    /// A newer request for the upload took over from this one, which had stalled (or the
    /// server is shutting down). Like a cut: without a checksum what arrived is kept.
    #[error("the request stalled and a newer one for this upload took over")]
    Superseded,
}

/// A request body as the store consumes it.
pub type BodyStream = BoxStream<'static, Result<Bytes, BodyError>>;
/// Bytes read back from a store.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What an append expects and carries along.
pub struct Append {
    /// The offset the client sent; must equal the committed offset.
    pub offset: u64,
    /// At most this many bytes may follow (remaining length, or the size limit).
    pub max_len: u64,
    /// `Upload-Checksum`: when set, the chunk is committed only whole and matching.
    pub checksum: Option<Checksum>,
    /// Where to send the bytes as they are written, for the upload's running whole-file digest
    /// (the caller commits or rolls it back by the outcome).
    pub running: Option<DigestFeed>,
    /// The expiry to record with the new offset.
    pub expires: Option<u64>,
    /// The chunk's own check may yield the CPU to other work: set for a part of a parallel
    /// upload, whose final's digest must keep pace with all the parts at once.
    pub yielding: bool,
    /// The completion time to record (state complete, no expiry) if this append brings the
    /// upload to its length: for a partial upload, which needs no check at its end, so that
    /// its completion costs no second durable write.
    pub complete_at: Option<u64>,
    /// A checked chunk cut off before its end is held ([`UploadInfo::held`]) instead of dropped.
    pub keep_prefix: bool,
    /// The body continues the upload's held prefix: the chunk is the held bytes followed by the
    /// body, and `checksum` covers both.
    pub continues: Option<Continuation>,
    /// The saved state of the upload's running whole-file digest and the offset it covers, to
    /// record with the new offset ([`UploadInfo::whole_md5`], [`UploadInfo::whole_md5_at`]).
    pub saved_digest: Option<(u64, String)>,
}

/// What an append that continues a held prefix knows of it.
pub struct Continuation {
    /// The held bytes (equal to [`HeldPrefix::len`]).
    pub len: u64,
    /// The digest state of the held bytes, if it was kept in memory; without it the store
    /// hashes them again from where it holds them.
    pub hasher: Option<ChecksumHasher>,
}

impl Append {
    /// How many held bytes come before the body.
    pub fn prefix_len(&self) -> u64 {
        self.continues.as_ref().map_or(0, |c| c.len)
    }

    /// Checks that the upload holds the bytes this append continues, if it continues any.
    pub fn check_continues(&self, info: &UploadInfo) -> StoreResult<()> {
        let (prefix, held) = (self.prefix_len(), info.held.as_ref().map_or(0, |h| h.len));
        if prefix > 0 && held != prefix {
            return Err(StoreError::PrefixMismatch {
                held,
                continues: prefix,
            });
        }
        Ok(())
    }
}

impl Append {
    /// Records the new offset (and, at the end of an upload that needs no further check, its
    /// completion) in `info`: what every store writes when it commits an append.
    pub fn commit(&self, info: &mut UploadInfo, received: u64) {
        info.offset += received;
        info.expires = self.expires;
        info.held = None;
        if let Some((at, state)) = &self.saved_digest {
            info.whole_md5 = Some(state.clone());
            info.whole_md5_at = Some(*at);
        }
        if let Some(at) = self.complete_at
            && info.is_full()
        {
            info.state = UploadState::Complete;
            info.completed = Some(at);
            info.expires = None;
        }
    }
}

/// The outcome of a committed append.
pub struct Appended {
    /// The upload after the append (new offset persisted).
    pub info: UploadInfo,
    /// Whether the body was cut off: without a checksum the bytes before the cut were
    /// committed; with one, they are held ([`Appended::held`]) and the offset did not move.
    pub interrupted: Option<BodyError>,
    /// The digest state of the bytes now held, when a checked chunk was cut off and kept.
    pub held: Option<ChecksumHasher>,
}

/// What a store can fail with, grouped by what the caller answers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No upload with this id.
    #[error("upload not found")]
    NotFound,
    /// The client's offset is not the committed one.
    #[error("offset mismatch: the upload is at {actual}, the request says {expected}")]
    OffsetMismatch {
        /// What the client sent.
        expected: u64,
        /// The committed offset.
        actual: u64,
    },
    /// `Upload-Checksum` did not match the body; nothing was stored.
    #[error("checksum mismatch: the chunk's {algorithm} is {actual}, Upload-Checksum says {expected}")]
    ChecksumMismatch {
        /// The algorithm.
        algorithm: &'static str,
        /// Base64 digest the client sent.
        expected: String,
        /// Base64 digest of what arrived.
        actual: String,
    },
    /// The append continues held bytes the upload does not hold (another length, or none).
    #[error("the upload holds {held} bytes of the chunk in progress, the request continues {continues}")]
    PrefixMismatch {
        /// Bytes held.
        held: u64,
        /// Bytes the request said it continues.
        continues: u64,
    },
    /// The body ended early or was too long, and nothing was stored.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// No space left on the device (or quota exceeded); nothing was stored.
    #[error("no space left on the device")]
    DiskFull,
    /// Two uploads cannot take the same id.
    #[error("an upload with this id exists")]
    Exists,
    /// Another request changed the upload first (a conditional write lost): nothing of this
    /// one was counted; the client asks for the offset again.
    #[error("another request changed the upload at the same time; ask for its offset again")]
    Conflict,
    /// A checked chunk larger than the store keeps in memory while it checks it.
    #[error("a chunk with Upload-Checksum may be at most {max} bytes on this server")]
    ChunkTooLarge {
        /// The largest checked chunk.
        max: u64,
    },
    /// Any other I/O failure.
    #[error("storage I/O: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull,
            _ if e.kind() == io::ErrorKind::NotFound => StoreError::NotFound,
            _ => StoreError::Io(e),
        }
    }
}

/// `name`, or with `-n` before its extension for the n-th collision (`backup-1.zip`): how every
/// store names a published upload whose name is taken.
pub fn suffixed(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

/// The name a completed upload is published under, before any collision suffix: its
/// sanitised `filename` metadata, or its id.
pub fn published_name(info: &UploadInfo) -> String {
    let meta = info
        .metadata
        .as_deref()
        .and_then(|m| crate::protocol::Metadata::parse(m).ok())
        .unwrap_or_default();
    crate::serve::uploads::sanitize_filename(meta.get_str(crate::protocol::meta::FILENAME), &info.id)
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Storage for uploads. The server holds a per-upload lock around every mutating call within
/// one process; a store shared by several processes (S3) makes each change a conditional write
/// and answers [`StoreError::Conflict`] to the loser.
pub trait Store: Send + Sync + 'static {
    /// Records a new upload (offset 0, no bytes).
    fn create(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>>;

    /// The upload's current info.
    fn info<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<UploadInfo>>;

    /// Replaces the upload's info (length, state, error, expiry…), atomically and durably.
    /// The offset and the held bytes change only through [`Store::append`]: this call keeps
    /// the stored ones.
    fn update(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>>;

    /// Appends a body at `append.offset`. Bytes are committed (made durable, then the new offset
    /// recorded) only when the body is complete and matches `append.checksum`; a body without
    /// checksum that is cut off keeps what arrived. A checked body that is cut off is held
    /// ([`UploadInfo::held`], made durable before it is recorded) when `append.keep_prefix`
    /// is set. An append that continues the held bytes (`append.continues`, whose length must
    /// be the held length, else [`StoreError::PrefixMismatch`]) checks them and the body as one
    /// chunk; one that does not continue them discards them first. On any error nothing of
    /// the body is kept, and neither are held bytes it continued.
    fn append<'a>(&'a self, id: &'a str, append: Append, body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>>;

    /// Fills `info` (a final upload: new, or created earlier with offset 0 and its length) with
    /// the bytes of `parts` in order, makes them durable and records offset = length = their
    /// total. Parts placed into this final upload (`placed_at`) are already where they belong
    /// and are not copied. The copied bytes also go to `running` (the final's whole-file
    /// digest), if given, in order; give it only when no part is placed.
    fn concatenate<'a>(
        &'a self,
        info: UploadInfo,
        parts: &'a [String],
        running: Option<DigestFeed>,
    ) -> BoxFuture<'a, StoreResult<UploadInfo>>;

    /// Records that the unfinished final upload `final_id` waits for the partial upload `part`,
    /// whose bytes start at `base` in the final (`final_upload`). A store that can write a
    /// partial's bytes straight into the final's data does so from now on when the partial has
    /// none yet (`placed_at`). A partial already waited for by another final keeps that link.
    /// Returns the partial's info as recorded.
    fn link<'a>(&'a self, part: &'a str, final_id: &'a str, base: u64) -> BoxFuture<'a, StoreResult<UploadInfo>>;

    /// Streams bytes `range` of the upload.
    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>>;

    /// Streams bytes `range` of the upload that will not be read again soon (the whole-file
    /// check): a store may drop them from its caches behind the reader. By default, [`Store::read`].
    fn read_once<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        self.read(id, range)
    }

    /// Makes a completed upload available under a name derived from `name` (already
    /// sanitised), adding a suffix on collision; records and returns the name used.
    fn publish<'a>(&'a self, id: &'a str, name: &'a str) -> BoxFuture<'a, StoreResult<String>>;

    /// Removes the upload, its bytes and what it published.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>>;

    /// Frees the bytes of an unfinished upload and marks it [`UploadState::Expired`].
    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>>;

    /// The ids of all uploads.
    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>>;

    /// Whether the store keeps [`UploadInfo::whole_md5`] current with every append (and
    /// concatenation): the server then runs no digest of its own beside the appends, and
    /// checks the whole file from that state.
    fn keeps_whole_md5(&self) -> bool {
        false
    }

    /// Whether [`Store::read`] serves the bytes of an unfinished upload (the digest follower
    /// of an unfinished concatenation reads its parts as they arrive).
    fn reads_unfinished(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_get_a_suffix_before_the_extension() {
        assert_eq!(suffixed("backup.zip", 0), "backup.zip");
        assert_eq!(suffixed("backup.zip", 2), "backup-2.zip");
        assert_eq!(suffixed("README", 1), "README-1");
        assert_eq!(suffixed(".env", 1), ".env-1");
    }
}
