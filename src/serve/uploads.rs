//! The life of an upload: ids, creation, one writer at a time (with stale-lock takeover),
//! appending with running digests, the whole-file check and publication at the last byte, and
//! the expiry sweeper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::digest::RunningDigest;
use super::error::ServeError;
use super::store::{Append, BodyStream, UploadInfo, UploadState};
use super::verify::{digest_stream, expected_whole};
use crate::protocol::Listed;
use crate::protocol::{ChecksumAlgorithm, DEFAULT_CHUNK_SIZE, Metadata, Status, StatusReport, chunks_received, meta};

/// A fresh unguessable upload id: 128 random bits as 32 lowercase hex digits.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether `id` has the shape of an upload id (and so is safe as a file name).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file name from the `filename` metadata that is safe to create inside the publish folder:
/// only its last path component, no NUL or control characters, not `.`/`..`, at most 200
/// bytes; `fallback` (the upload id) when nothing usable is left.
pub fn sanitize_filename(name: Option<&str>, fallback: &str) -> String {
    let base = name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let mut base = base.trim().to_string();
    while base.len() > 200 {
        base.pop();
    }
    if base.is_empty() || base == "." || base == ".." {
        fallback.to_string()
    } else {
        base
    }
}

/// Who is asking: the hash of the bearer token, or `None` when the server runs without tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner(pub Option<String>);

#[derive(Default)]
struct Slot {
    writer: Arc<tokio::sync::Mutex<()>>,
    current: Mutex<CancellationToken>,
}

/// Exclusive access to one upload, until dropped. `cancel` fires when a newer request for the
/// same upload wants it.
pub struct Lease {
    _guard: OwnedMutexGuard<()>,
    /// Fires when a newer request takes over.
    pub cancel: CancellationToken,
}

/// Per-upload locks and running whole-file digests (in memory; lost on restart, which only
/// costs one re-read of the file at its end).
#[derive(Default)]
pub struct Uploads {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    running: Mutex<HashMap<String, RunningDigest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a single insert/remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Uploads {
    /// Takes the upload's lock. A request still holding it (a PATCH whose client went away) is
    /// told to give up first, so a reconnecting client never waits on a dead one for long.
    pub async fn acquire(&self, id: &str) -> Lease {
        let slot = Arc::clone(lock(&self.slots).entry(id.to_string()).or_default());
        lock(&slot.current).cancel();
        let guard = Arc::clone(&slot.writer).lock_owned().await;
        let cancel = CancellationToken::new();
        *lock(&slot.current) = cancel.clone();
        Lease { _guard: guard, cancel }
    }

    /// Whether a request holds the upload's lock right now.
    pub fn is_busy(&self, id: &str) -> bool {
        lock(&self.slots)
            .get(id)
            .is_some_and(|slot| slot.writer.try_lock().is_err())
    }

    /// Takes the running digest of `id` if it covers exactly `offset` bytes; an upload at
    /// offset 0 gets a new one. `None` when the digest was lost (a restart): the file is then
    /// hashed at its end.
    fn take_running(&self, id: &str, offset: u64, algorithm: Option<ChecksumAlgorithm>) -> Option<RunningDigest> {
        let found = lock(&self.running).remove(id).filter(|d| d.offset() == offset);
        match (found, algorithm) {
            (Some(d), _) => Some(d),
            (None, Some(alg)) if offset == 0 => Some(RunningDigest::start(alg)),
            _ => None,
        }
    }

    fn put_running(&self, id: &str, digest: RunningDigest) {
        lock(&self.running).insert(id.to_string(), digest);
    }

    fn drop_running(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// Tells every request holding an upload to give up (the server is shutting down): a chunk
    /// with a checksum is discarded, one without keeps what arrived; clients resume later.
    pub fn cancel_all(&self) {
        for slot in lock(&self.slots).values() {
            lock(&slot.current).cancel();
        }
    }

    /// Forgets everything held for `id`.
    pub fn forget(&self, id: &str) {
        lock(&self.running).remove(id);
        lock(&self.slots).remove(id);
    }
}

/// What a creation request asks for.
pub struct Creation {
    /// `Upload-Length`, or `None` for `Upload-Defer-Length: 1`.
    pub length: Option<u64>,
    /// `Upload-Metadata` as sent.
    pub metadata: Option<String>,
    /// `Upload-Concat` as sent.
    pub concat: Option<String>,
}

fn expiry(state: &AppState) -> Option<u64> {
    Some(now_secs().saturating_add(state.config.expire_after.as_secs()))
}

/// Loads an upload for `owner`: another token's upload does not exist; an unfinished upload
/// past its expiry reads as expired (the sweeper frees its bytes, under the upload's lock).
pub async fn load(state: &AppState, id: &str, owner: &Owner) -> Result<UploadInfo, ServeError> {
    if !is_valid_id(id) {
        return Err(ServeError::NotFound);
    }
    let mut info = state.store.info(id).await?;
    if info.owner != owner.0 {
        return Err(ServeError::NotFound);
    }
    if info.state == UploadState::Receiving && info.expires.is_some_and(|e| now_secs() >= e) {
        info.state = UploadState::Expired;
    }
    Ok(info)
}

/// Like [`load`], for requests that continue an upload: expired and failed uploads are gone.
pub async fn load_live(state: &AppState, id: &str, owner: &Owner) -> Result<UploadInfo, ServeError> {
    let info = load(state, id, owner).await?;
    match info.state {
        UploadState::Expired => Err(ServeError::Gone("the upload expired; start a new upload".into())),
        UploadState::Error => Err(ServeError::Gone(format!(
            "the upload failed ({}); start a new upload",
            info.error.as_deref().unwrap_or("error")
        ))),
        _ => Ok(info),
    }
}

/// Creates an upload (not a final one); an empty upload is complete at once.
pub async fn create(state: &AppState, owner: &Owner, req: Creation) -> Result<UploadInfo, ServeError> {
    let mut info = UploadInfo::new(new_id(), req.length, now_secs());
    info.metadata = req.metadata;
    info.concat = req.concat;
    info.owner = owner.0.clone();
    info.expires = expiry(state);
    state.store.create(info.clone()).await?;
    tracing::info!(id = %info.id, length = ?info.length, "upload created");
    if info.is_full() {
        info = finish(state, info).await?;
    }
    Ok(info)
}

/// Creates a final upload from complete partial uploads, then checks and publishes it.
pub async fn concatenate(
    state: &AppState,
    owner: &Owner,
    metadata: Option<String>,
    concat: String,
    parts: Vec<String>,
) -> Result<UploadInfo, ServeError> {
    let mut total = 0u64;
    for id in &parts {
        let part = load(state, id, owner).await?;
        if !part.is_partial() {
            return Err(ServeError::BadRequest(format!("{id} is not a partial upload")));
        }
        if part.state != UploadState::Complete {
            return Err(ServeError::BadRequest(format!("partial upload {id} is not complete")));
        }
        total = total.saturating_add(part.offset);
    }
    if let Some(max) = state.config.max_size
        && total > max
    {
        return Err(ServeError::TooLarge(format!(
            "the concatenation ({total} bytes) exceeds the maximum {max}"
        )));
    }
    let mut info = UploadInfo::new(new_id(), None, now_secs());
    info.metadata = metadata;
    info.concat = Some(concat);
    info.owner = owner.0.clone();
    let mut running = expected_whole(info.metadata.as_deref()).map(|c| RunningDigest::start(c.algorithm));
    let concatenated = state
        .store
        .concatenate(info, &parts, running.as_ref().map(RunningDigest::feed))
        .await;
    let info = concatenated?;
    if let Some(mut digest) = running.take() {
        digest.commit(info.offset).await;
        state.uploads.put_running(&info.id, digest);
    }
    tracing::info!(id = %info.id, parts = parts.len(), length = ?info.length, "final upload concatenated");
    finish(state, info).await
}

/// Appends a body (the caller holds the lease) and, at the last byte, finishes the upload.
pub async fn append(
    state: &AppState,
    info: UploadInfo,
    checksum: Option<crate::protocol::Checksum>,
    body: BodyStream,
) -> Result<UploadInfo, ServeError> {
    let max_len = match (info.length, state.config.max_size) {
        (Some(len), _) => len.saturating_sub(info.offset),
        (None, Some(max)) => max.saturating_sub(info.offset),
        (None, None) => u64::MAX,
    };
    // Partial uploads are not checked whole (their final upload is).
    let whole = expected_whole(info.metadata.as_deref())
        .filter(|_| !info.is_partial())
        .map(|c| c.algorithm);
    let mut running = whole.and_then(|alg| state.uploads.take_running(&info.id, info.offset, Some(alg)));
    let append = Append {
        offset: info.offset,
        max_len,
        checksum,
        running: running.as_ref().map(RunningDigest::feed),
        expires: expiry(state),
    };
    let appended = state.store.append(&info.id, append, body).await;
    if let Some(mut digest) = running.take() {
        match &appended {
            Ok(a) => digest.commit(a.info.offset).await,
            Err(_) => digest.rollback().await,
        }
        state.uploads.put_running(&info.id, digest);
    }
    let appended = appended?;
    let info = appended.info;
    if let Some(cut) = &appended.interrupted {
        tracing::info!(id = %info.id, offset = info.offset, "{cut}; kept the bytes received");
    }
    if info.is_full() {
        return finish(state, info).await;
    }
    Ok(info)
}

/// Runs the whole-file check of a fully received upload, then publishes it (partial uploads
/// are only marked complete). On a mismatch the upload is marked `error` and not published.
pub async fn finish(state: &AppState, mut info: UploadInfo) -> Result<UploadInfo, ServeError> {
    let id = info.id.clone();
    let length = info.offset;
    info.expires = None;
    if !info.is_partial()
        && let Some(expected) = expected_whole(info.metadata.as_deref())
    {
        let running = match state.uploads.take_running(&id, length, None) {
            Some(d) => d.finish().await,
            None => None,
        };
        let digest = match running {
            Some(digest) => digest,
            None => {
                tracing::debug!(%id, "no running digest (server restarted?); re-reading the file");
                let stream = state.store.read(&id, 0..length).await?;
                digest_stream(stream, expected.algorithm)
                    .await
                    .map_err(|e| ServeError::from(super::store::StoreError::from(e)))?
            }
        };
        let actual = crate::protocol::Checksum {
            algorithm: expected.algorithm,
            digest: digest.clone(),
        };
        if expected.algorithm == ChecksumAlgorithm::Md5 {
            info.md5 = Some(hex::encode(&digest));
        }
        if digest != expected.digest {
            let reason = format!(
                "whole-file checksum mismatch: the metadata says '{}', the {length} bytes received hash to '{}'",
                expected.to_header(),
                actual.to_header()
            );
            tracing::warn!(%id, "{reason}");
            info.state = UploadState::Error;
            info.error = Some(reason.clone());
            state.store.update(info).await?;
            return Err(ServeError::ChecksumMismatch(reason));
        }
    }
    state.uploads.drop_running(&id);
    if !info.is_partial() {
        let meta = info
            .metadata
            .as_deref()
            .and_then(|m| Metadata::parse(m).ok())
            .unwrap_or_default();
        let name = sanitize_filename(meta.get_str(meta::FILENAME), &id);
        info.published = Some(state.store.publish(&id, &name).await?);
        tracing::info!(%id, length, name = info.published.as_deref().unwrap_or(""), "upload complete and published");
    }
    info.state = UploadState::Complete;
    info.completed = Some(now_secs());
    state.store.update(info.clone()).await?;
    Ok(info)
}

/// The status report of an upload (DESIGN §5); `url` is where a complete upload is read.
pub fn report(info: UploadInfo, url: String) -> StatusReport {
    let (status, value) = match info.state {
        UploadState::Receiving if info.offset == 0 => (Status::New, String::new()),
        UploadState::Receiving => {
            let meta = info.metadata.as_deref().and_then(|m| Metadata::parse(m).ok());
            let chunk = meta
                .as_ref()
                .and_then(|m| m.get_str(meta::CHUNK_SIZE))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&c| c > 0)
                .unwrap_or(DEFAULT_CHUNK_SIZE);
            (Status::Partial, chunks_received(info.offset, chunk))
        }
        UploadState::Complete => (Status::Complete, url),
        UploadState::Error => (Status::Error, info.error.unwrap_or_else(|| "error".into())),
        UploadState::Expired => (Status::Error, "the upload expired before it was complete".into()),
    };
    StatusReport { status, value }
}

/// The completed (published) uploads `owner` may see, oldest first.
pub async fn list_complete(state: &AppState, owner: &Owner) -> Result<Vec<Listed>, ServeError> {
    let mut out = Vec::new();
    for id in state.store.list().await? {
        let Ok(info) = state.store.info(&id).await else {
            continue;
        }; // deleted meanwhile
        if info.owner != owner.0 || info.state != UploadState::Complete || info.is_partial() {
            continue;
        }
        let meta = info
            .metadata
            .as_deref()
            .and_then(|m| Metadata::parse(m).ok())
            .unwrap_or_default();
        let metadata = meta
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let completed_at = info
            .completed
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        out.push(Listed {
            url: format!("/files/{}", info.id),
            name: meta
                .get_str(meta::FILENAME)
                .map(str::to_string)
                .or(info.published.clone())
                .unwrap_or_else(|| info.id.clone()),
            size: info.length.unwrap_or(info.offset),
            md5: info.md5,
            completed: info.completed,
            completed_at,
            metadata,
            id: info.id,
        });
    }
    out.sort_by(|a, b| (a.completed, &a.id).cmp(&(b.completed, &b.id)));
    Ok(out)
}

/// Expires every unfinished upload past its expiry; returns how many.
pub async fn sweep(state: &AppState) -> usize {
    let ids = match state.store.list().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("expiry sweep could not list uploads: {e}");
            return 0;
        }
    };
    let now = now_secs();
    let mut n = 0;
    let expired = |info: &UploadInfo| info.state == UploadState::Receiving && info.expires.is_some_and(|e| now >= e);
    for id in ids {
        // An upload being written to is not expired under its writer's feet.
        let Ok(info) = state.store.info(&id).await else {
            continue;
        };
        if !expired(&info) || state.uploads.is_busy(&id) {
            continue;
        }
        let _lease = state.uploads.acquire(&id).await;
        // Look again under the lock: a chunk may have just renewed the expiry.
        match state.store.info(&id).await {
            Ok(info) if expired(&info) => {}
            _ => continue,
        }
        match state.store.expire(&id).await {
            Ok(()) => {
                state.uploads.forget(&id);
                tracing::info!(%id, "unfinished upload expired; its bytes were freed");
                n += 1;
            }
            Err(e) => tracing::warn!(%id, "could not expire: {e}"),
        }
    }
    n
}

/// How often the sweeper runs for a given `--expire-after`.
pub fn sweep_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex() {
        let a = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, new_id());
        assert!(!is_valid_id("../../etc/passwd"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }

    #[test]
    fn names_never_escape() {
        assert_eq!(sanitize_filename(Some("backup.zip"), "id"), "backup.zip");
        assert_eq!(sanitize_filename(Some("../../etc/passwd"), "id"), "passwd");
        assert_eq!(sanitize_filename(Some("/abs/x.tar"), "id"), "x.tar");
        assert_eq!(sanitize_filename(Some("C:\\win\\y.txt"), "id"), "y.txt");
        assert_eq!(sanitize_filename(Some(".."), "id"), "id");
        assert_eq!(sanitize_filename(Some("a/.."), "id"), "id");
        assert_eq!(sanitize_filename(Some("nul\0byte"), "id"), "nulbyte");
        assert_eq!(sanitize_filename(None, "id"), "id");
        assert_eq!(sanitize_filename(Some(&"é".repeat(300)), "id").len(), 200);
    }
}
