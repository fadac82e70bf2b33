//! The life of an upload: ids, creation, appending with running digests and held prefixes of
//! cut chunks, the whole-file check and publication at the last byte. What the server holds in
//! memory for uploads in progress (locks, digests, bytes kept for followers) is in
//! [`super::live`]; concatenation in [`super::concat`], status reports in [`super::status`],
//! the expiry sweeper in [`super::expiry`].
//!
//! Each function that acts on one upload runs in a debug-level span carrying its id (the
//! handler's info-level span carries it in default logs); what it counts goes to
//! [`super::metrics`].

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Instrument as _, instrument};

use super::AppState;
use bytes::Bytes;

use super::concat::complete_final;
use super::digest::{Collected, RunningDigest};
use super::error::ServeError;
pub(super) use super::live::{COLLECT_MAX, lock};
pub use super::live::{Lease, Uploads};
use super::store::{Append, BodyStream, Continuation, UploadInfo, UploadState};
use super::verify::{digest_stream, expected_whole_of, whole_algorithm};
use crate::protocol::{ChecksumAlgorithm, Concat};

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

/// Nanoseconds since the Unix epoch (`u64` holds them until the year 2554).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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

/// The upload ids named by `Upload-Concat: final;<urls>`: each a path `/files/<id>` or an
/// absolute URL of this server (`host`, the request's `Host`), whose last segment is an id.
pub fn concat_part_ids(urls: &[String], host: Option<&str>) -> Result<Vec<String>, ServeError> {
    urls.iter()
        .map(|url| {
            let not_ours =
                || ServeError::BadRequest(format!("'{url}' in Upload-Concat is not an upload URL of this server"));
            let path = match url.split_once("://") {
                Some((_, rest)) => {
                    let (authority, path) = rest.split_once('/').ok_or_else(not_ours)?;
                    if host.is_none_or(|h| !authority.eq_ignore_ascii_case(h)) {
                        return Err(not_ours());
                    }
                    path
                }
                None => url.as_str(),
            };
            let id = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if is_valid_id(id) && path.trim_start_matches('/').split('/').count() == 2 {
                Ok(id.to_string())
            } else {
                Err(not_ours())
            }
        })
        .collect()
}

/// The partial upload ids of a final upload's info.
pub(super) fn parts_of(info: &UploadInfo) -> Result<Vec<String>, ServeError> {
    match &info.concat {
        // Checked when the final was created ([`concat_part_ids`]).
        Some(Concat::Final(urls)) => Ok(urls
            .iter()
            .filter_map(|u| u.trim_end_matches('/').rsplit('/').next())
            .filter(|id| is_valid_id(id))
            .map(str::to_string)
            .collect()),
        _ => Err(ServeError::BadRequest(format!("{} is not a final upload", info.id))),
    }
}

/// Who is asking: the hash of the bearer token, or `None` when the server runs without tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner(pub Option<String>);

/// What a creation request asks for.
pub struct Creation {
    /// `Upload-Length`, or `None` for `Upload-Defer-Length: 1`.
    pub length: Option<u64>,
    /// `Upload-Metadata` as sent.
    pub metadata: Option<String>,
    /// `Upload-Concat` as sent.
    pub concat: Option<Concat>,
    /// `Want-Repr-Digest` of a deferred-length upload: the algorithm its whole-file checksum
    /// will come in.
    pub digest_wanted: Option<crate::protocol::ChecksumAlgorithm>,
}

pub(super) fn expiry(state: &AppState) -> Option<u64> {
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
#[instrument(level = "debug", skip_all)]
pub async fn create(state: &AppState, owner: &Owner, req: Creation) -> Result<UploadInfo, ServeError> {
    let id = new_id();
    // Into this span, or the handler's when this one is off.
    let mut info = UploadInfo::new(id, req.length, now_secs());
    info.metadata = req.metadata;
    info.concat = req.concat;
    info.digest_wanted = req.digest_wanted;
    info.owner = owner.0.clone();
    info.expires = expiry(state);
    state.store.create(info.clone()).await?;
    state.metrics.created(&info);
    if info.is_partial() {
        tracing::debug!(id = %info.id, length = ?info.length, "partial upload created");
    } else {
        tracing::info!(id = %info.id, length = ?info.length, "upload created");
    }
    if info.is_full() {
        info = finish(state, info).await?;
    }
    Ok(info)
}

/// Appends a body (the caller holds the lease) and, at the last byte, finishes the upload.
/// `continues` is the number of held bytes the body continues (`Robusto-Chunk-Prefix`; the
/// caller checked that the upload holds them for this checksum). A checked body that is cut off
/// leaves its bytes held when the server keeps prefixes; the answer is still an error (nothing
/// was committed) naming what is held.
#[instrument(level = "debug", skip_all, fields(id = %info.id, offset = info.offset))]
pub async fn append(
    state: &AppState,
    info: UploadInfo,
    checksum: Option<crate::protocol::Checksum>,
    continues: u64,
    body: BodyStream,
) -> Result<UploadInfo, ServeError> {
    let max_len = match (info.length, state.config.max_size) {
        (Some(len), _) => len.saturating_sub(info.offset),
        (None, Some(max)) => max.saturating_sub(info.offset),
        (None, None) => u64::MAX,
    };
    // Partial uploads are not checked whole (their final upload is).
    let whole = whole_algorithm(&info).filter(|_| !info.is_partial());
    // The digest state of held bytes lives in memory beside the running digest, which was fed
    // them and not rolled back; after a restart both are gone, and a continued chunk is then
    // hashed from the store and the whole-file digest resumed from the info at its end.
    let continuation = (continues > 0).then(|| Continuation {
        len: continues,
        hasher: state.uploads.take_prefix(&info.id, continues),
    });
    if info.held.is_some() && continuation.is_none() {
        state.uploads.drop_prefix(&info.id);
    }
    // A store that carries the whole-file MD5 with the info needs no digest beside it.
    let whole = whole.filter(|alg| !(state.store.keeps_whole_md5() && *alg == ChecksumAlgorithm::Md5));
    let mut running = match &continuation {
        Some(c) if c.hasher.is_none() => {
            state.uploads.drop_running(&info.id);
            None
        }
        _ => match whole.and_then(|alg| state.uploads.take_running(&info.id, info.offset, Some(alg))) {
            Some(d) => Some(d),
            // Lost with a restart: resumed from the state the info keeps.
            None if whole == Some(ChecksumAlgorithm::Md5) => resumed_digest(state, &info).await,
            None => None,
        },
    };
    if continuation.is_none()
        && let Some(d) = running.as_mut()
    {
        // Forget held bytes it was fed, if any: this chunk starts afresh at the offset.
        d.rollback().await;
    }
    // A part written into an unfinished final keeps its bytes for the final's follower, which
    // then need not read them back.
    let ahead = match (&info.final_upload, info.placed_at) {
        (Some(f), Some(base)) if state.uploads.is_following(f) => {
            Some((f.clone(), base + info.offset, Collected::up_to(COLLECT_MAX)))
        }
        _ => None,
    };
    let feed = match (&running, &ahead) {
        (Some(d), _) => Some(d.feed()),
        (None, Some((_, _, kept))) => Some(kept.feed()),
        (None, None) => None,
    };
    let before = info.offset;
    let append = Append {
        offset: info.offset,
        max_len,
        checksum,
        running: feed,
        expires: expiry(state),
        yielding: ahead.is_some(),
        complete_at: info.is_partial().then(now_secs),
        keep_prefix: state.config.keep_prefixes,
        continues: continuation,
        saved_digest: running.as_ref().and_then(RunningDigest::saved),
    };
    let receiving = state.metrics.receiving();
    let (body, body_end) = state.metrics.meter(body);
    let appended = state.store.append(&info.id, append, body).await;
    drop(receiving);
    match &appended {
        Ok(a) => state.metrics.committed(a.info.offset.saturating_sub(before), &body_end),
        Err(super::store::StoreError::ChecksumMismatch { .. }) => state.metrics.chunk_refused(),
        Err(_) => {}
    }
    if let (Ok(a), Some((final_id, at, kept))) = (&appended, ahead)
        && let Some(bytes) = kept.take()
    {
        let len = bytes.iter().map(Bytes::len).sum::<usize>();
        if len > 0 && len as u64 == a.info.offset - before {
            state.uploads.keep_ahead(&final_id, at, bytes, len).await;
        }
    }
    if let Some(mut digest) = running.take() {
        match &appended {
            // Held bytes stay fed, uncommitted, for the request that completes the chunk.
            Ok(a) if a.held.is_some() => {}
            Ok(a) => digest.commit(a.info.offset).await,
            Err(_) => digest.rollback().await,
        }
        state.uploads.put_running(&info.id, digest);
    }
    // A body given up because the server stops is the server's doing: the client retries.
    let stopping = |e: ServeError| match e {
        ServeError::BadRequest(m) | ServeError::Conflict(m)
            if state.uploads.stopping.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            ServeError::ShuttingDown(m)
        }
        e => e,
    };
    let mut appended = appended.map_err(|e| stopping(e.into()))?;
    if let (Some(hasher), Some(held)) = (appended.held.take(), appended.info.held.clone()) {
        state.uploads.put_prefix(&info.id, held.len, hasher);
        let why = appended.interrupted.clone();
        let cut = appended.interrupted.map(|e| e.to_string()).unwrap_or_default();
        tracing::info!(id = %info.id, offset = info.offset, held = held.len, "{cut}; holding the chunk's first bytes");
        let message = format!(
            "{cut}; the server holds {} bytes of the chunk: send the rest with {}: {}",
            held.len,
            crate::protocol::header::CHUNK_PREFIX,
            held.len
        );
        // A stalled request taken over is answered 409: its client (if any) asks again; one
        // given up for silence or slowness 408.
        return Err(stopping(match why {
            Some(super::store::BodyError::Superseded) => ServeError::Conflict(message),
            Some(super::store::BodyError::TimedOut(_)) => ServeError::RequestTimeout(message),
            _ => ServeError::BadRequest(message),
        }));
    }
    if let Some(f) = &info.final_upload {
        state.uploads.notify_appended(f);
    }
    let info = appended.info;
    if let Some(cut) = &appended.interrupted {
        tracing::info!(id = %info.id, offset = info.offset, "{cut}; kept the bytes received");
    }
    if info.is_full() {
        return finish(state, info).await;
    }
    Ok(info)
}

/// The running MD5 of `info`'s upload resumed from the state its info keeps (after a
/// restart): the bytes after that state, at most the digest's lag of a chunk or two, are read
/// back and hashed; the file is not read again at its end. `None` without a saved state, or
/// when those bytes cannot be read.
async fn resumed_digest(state: &AppState, info: &UploadInfo) -> Option<RunningDigest> {
    let saved = info.whole_md5.as_deref()?;
    let at = info.whole_md5_at.unwrap_or(info.offset);
    if at > info.offset {
        return None;
    }
    let mut digest = RunningDigest::resume(saved, at).ok()?;
    if at < info.offset {
        let mut tail = state.store.read(&info.id, at..info.offset).await.ok()?;
        let feed = digest.feed();
        let mut read = 0u64;
        while let Some(bytes) = futures_util::TryStreamExt::try_next(&mut tail).await.ok()? {
            read += bytes.len() as u64;
            feed.feed(vec![bytes]).await;
        }
        if read != info.offset - at {
            return None;
        }
    }
    digest.commit(info.offset).await;
    tracing::debug!(id = %info.id, from = at, to = info.offset, "running digest resumed from the info");
    Some(digest)
}

/// Runs the whole-file check of a fully received upload, then publishes it (partial uploads
/// are only marked complete). On a mismatch the upload is marked `error` and not published.
#[instrument(level = "debug", skip_all, fields(id = %info.id))]
pub async fn finish(state: &AppState, mut info: UploadInfo) -> Result<UploadInfo, ServeError> {
    let id = info.id.clone();
    let length = info.offset;
    info.expires = None;
    if !info.is_partial()
        && let Some(expected) = expected_whole_of(&info)
    {
        let running = match state.uploads.take_running(&id, length, None) {
            Some(d) => d.finish().await,
            None => None,
        };
        // A store that carries the digest state: from it (none yet means nothing hashed, or a
        // crash between counting the bytes and hashing them: read back then).
        let carried = (state.store.keeps_whole_md5()
            && expected.algorithm == ChecksumAlgorithm::Md5
            && (info.whole_md5.is_some() || length == 0))
            .then_some(info.whole_md5.as_deref())
            .map(super::digest::WholeMd5::resume);
        let digest = match (running, carried) {
            (Some(digest), _) => digest,
            (None, Some(Ok(whole))) => whole.finish(),
            (None, Some(Err(e))) => {
                return Err(ServeError::Internal(super::store::StoreError::Io(
                    std::io::Error::other(e),
                )));
            }
            (None, None)
                if let Some(d) = resumed_digest(state, &info).await
                    && let Some(digest) = d.finish().await =>
            {
                digest
            }
            (None, None) => {
                tracing::debug!(%id, "no running digest (server restarted?); re-reading the file");
                let stream = state.store.read_once(&id, 0..length).await?;
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
            state.store.update(info.clone()).await?;
            state.metrics.failed(&info);
            return Err(ServeError::ChecksumMismatch(reason));
        }
    }
    state.uploads.drop_running(&id);
    if !info.is_partial() {
        let name = super::store::published_name(&info);
        info.published = Some(state.store.publish(&id, &name).await?);
        tracing::info!(%id, length, name = info.published.as_deref().unwrap_or(""), "upload complete and published");
    }
    // A partial upload recorded its completion with its last append.
    if info.state != UploadState::Complete {
        let ns = now_ns();
        info.state = UploadState::Complete;
        info.completed = Some(ns / 1_000_000_000);
        info.completed_ns = Some(ns);
        state.store.update(info.clone()).await?;
    }
    state.metrics.completed(&info);
    if let Some(final_id) = info.final_upload.clone() {
        // The final upload waiting for this part may be complete now: finished in the
        // background (its check may take long after a restart), not in this part's answer. Its
        // failure is its own, reported on its URL.
        let state = state.clone();
        tokio::spawn(
            async move {
                if let Err(e) = complete_final(&state, &final_id).await {
                    tracing::warn!(id = %final_id, "the final upload could not be finished: {}", e.detail());
                }
            }
            .in_current_span(),
        );
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn ids_are_128_bit_hex() {
        let a = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, new_id());
        assert!(!is_valid_id("../../etc/passwd"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }

    #[test]
    pub(super) fn names_never_escape() {
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
