//! Concatenation (tus `concatenation` and `concatenation-unfinished`): a final upload of complete
//! parts is copied together, checked and published at once; one created while its parts are
//! still arriving is recorded with its length, its parts are linked to it (those without bytes
//! yet write straight into its data where the store can), a follower task hashes the parts in
//! file order as they commit, and the last part to complete finishes it.

use std::time::Duration;

use tracing::{Instrument as _, instrument};

use super::AppState;
use bytes::Bytes;

use super::digest::RunningDigest;
use super::error::ServeError;
use super::store::{UploadInfo, UploadState};
use super::verify::expected_whole;
use crate::protocol::ChecksumAlgorithm;

use super::live::Ahead;
use super::uploads::*;

/// Creates a final upload from partial uploads. When all are complete it is concatenated,
/// checked and published at once; otherwise (`concatenation-unfinished`) it waits for them: its
/// parts are linked to it (and, where the store can, write straight into it), a digest
/// follower hashes their bytes in order as they arrive, and the last part to complete finishes
/// it.
#[instrument(level = "debug", skip_all, fields(parts = parts.len()))]
pub async fn concatenate(
    state: &AppState,
    owner: &Owner,
    metadata: Option<String>,
    urls: Vec<String>,
    parts: Vec<String>,
) -> Result<UploadInfo, ServeError> {
    let mut infos = Vec::with_capacity(parts.len());
    for id in &parts {
        let part = load(state, id, owner).await?;
        if !part.is_partial() {
            return Err(ServeError::BadRequest(format!("{id} is not a partial upload")));
        }
        infos.push(part);
    }
    let unfinished = infos.iter().any(|p| p.state != UploadState::Complete);
    let mut total = 0u64;
    for part in &infos {
        let len = match (unfinished, part.state, part.length) {
            (false, _, _) => part.offset,
            (true, UploadState::Receiving | UploadState::Complete, Some(len)) => len,
            (true, UploadState::Receiving | UploadState::Complete, None) => {
                return Err(ServeError::BadRequest(format!(
                    "partial upload {} has no length yet: it cannot join an unfinished concatenation",
                    part.id
                )));
            }
            (true, _, _) => {
                return Err(ServeError::BadRequest(format!(
                    "partial upload {} has failed or expired",
                    part.id
                )));
            }
        };
        total = total.saturating_add(len);
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
    info.concat = Some(crate::protocol::Concat::Final(urls));
    info.owner = owner.0.clone();
    if unfinished {
        let mut unique = parts.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != parts.len() {
            return Err(ServeError::BadRequest(
                "an unfinished concatenation names each partial upload once".into(),
            ));
        }
        info.length = Some(total);
        return begin_unfinished(state, info, infos).await;
    }
    let mut running = expected_whole(info.metadata.as_deref())
        .filter(|c| !(state.store.keeps_whole_md5() && c.algorithm == ChecksumAlgorithm::Md5))
        .map(|c| RunningDigest::start(c.algorithm));
    let concatenated = state
        .store
        .concatenate(info, &parts, running.as_ref().map(RunningDigest::feed))
        .await;
    let info = concatenated?;
    state.metrics.created(&info);
    if let Some(mut digest) = running.take() {
        digest.commit(info.offset).await;
        state.uploads.put_running(&info.id, digest);
    }
    tracing::info!(id = %info.id, parts = parts.len(), length = ?info.length, "final upload concatenated");
    finish(state, info).await
}

/// How long the completion of a final upload waits for its follower to hash what is left.
const FOLLOWER_CATCH_UP: Duration = Duration::from_secs(600);

/// A follower that has seen no new bytes for this long polls the parts' offsets (a wake-up may
/// have been lost with a dropped request).
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// A follower with no progress for this long lets go of the bytes kept for it (they are read
/// back when it moves on): a paused parallel upload does not hold memory for days.
const FOLLOWER_IDLE: Duration = Duration::from_secs(30);

/// How long the expiry of a final waits for a chunk in flight to one of its parts.
const LET_CHUNK_FINISH: Duration = Duration::from_secs(5);

/// Parts of an unfinished final linked at once (each link is a small durable write).
const LINKS_AT_ONCE: usize = 16;

/// Records a final upload whose parts are still arriving, links them to it and starts its
/// digest follower; finishes it at once if the parts completed meanwhile.
#[instrument(level = "debug", skip_all, fields(id = %info.id))]
async fn begin_unfinished(
    state: &AppState,
    info: UploadInfo,
    parts: Vec<UploadInfo>,
) -> Result<UploadInfo, ServeError> {
    use futures_util::StreamExt as _;
    // The same request again (a retry after a lost answer, or a client killed before it
    // recorded the answer) gets the final upload its parts already wait for, not a second one
    // that would be published as a second copy.
    let mut info = info;
    let mut existing = None;
    if let Some(f) = parts.first().and_then(|p| p.final_upload.clone())
        && let Ok(found) = state.store.info(&f).await
        && found.state == UploadState::Receiving
        && found.offset == 0
        && (&found.concat, &found.metadata, &found.owner, found.length)
            == (&info.concat, &info.metadata, &info.owner, info.length)
    {
        tracing::info!(id = %found.id, "the final upload of these parts exists already");
        info = found;
        existing = Some(());
    }
    // Held while the parts are linked and the follower starts: a part that completes meanwhile
    // finishes the final only after that.
    let final_lease = state.uploads.acquire_waiting(&info.id).await;
    if existing.is_some() {
        // Look again under its lock: it may have been finished meanwhile.
        let now = state.store.info(&info.id).await?;
        if now.state != UploadState::Receiving || now.offset > 0 {
            return Ok(now);
        }
    }
    if existing.is_none() {
        // No expiry of its own: it lives as long as its parts do (see `sweep`).
        state.store.create(info.clone()).await?;
        state.metrics.created(&info);
    }
    let mut bases = Vec::with_capacity(parts.len());
    let mut at = 0u64;
    for part in &parts {
        bases.push((part.id.clone(), at, part.length.unwrap_or(0)));
        at = at.saturating_add(part.length.unwrap_or(0));
    }
    // Each part is linked under its own lock, a few at a time, waiting for a chunk in flight
    // rather than cancelling it (each holds one part's lock only: no two wait on each other).
    let linked: Vec<UploadInfo> = futures_util::stream::iter(bases.clone())
        .map(|(part, base, _)| {
            let (state, final_id) = (state.clone(), info.id.clone());
            async move {
                let _lease = state.uploads.acquire_waiting(&part).await;
                state.store.link(&part, &final_id, base).await
            }
        })
        .buffer_unordered(LINKS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let placed = linked
        .iter()
        .filter(|p| p.placed_at.is_some() && p.final_upload.as_deref() == Some(info.id.as_str()))
        .count();
    let following = lock(&state.uploads.followers).contains_key(&info.id);
    if !following
        && state.store.reads_unfinished()
        && let Some(expected) = expected_whole(info.metadata.as_deref())
    {
        lock(&state.uploads.ahead).insert(info.id.clone(), Ahead::default());
        let follower = tokio::spawn(
            follow(
                state.clone(),
                info.id.clone(),
                bases.iter().map(|(id, _, len)| (id.clone(), *len)).collect(),
                expected.algorithm,
            )
            .in_current_span(),
        );
        lock(&state.uploads.followers).insert(info.id.clone(), follower);
    }
    drop(final_lease);
    tracing::info!(id = %info.id, parts = parts.len(), placed, length = ?info.length, "final upload created before its parts are complete");
    complete_final(state, &info.id).await
}

/// Marks the parts placed into final upload `final_id` expired before its bytes go (it is
/// deleted or expires): their bytes live in its file, and a part must never claim bytes that
/// are gone. Their client learns 410 and sends them again.
#[instrument(level = "debug", skip_all, fields(id = %final_info.id))]
pub async fn expire_placed_parts(state: &AppState, final_info: &UploadInfo) {
    let Ok(parts) = parts_of(final_info) else {
        return;
    };
    for id in parts {
        // A chunk in flight is let finish (its client then learns 410 on the next one), unless
        // it takes long: then it is cut off.
        let _lease = match tokio::time::timeout(LET_CHUNK_FINISH, state.uploads.acquire_waiting(&id)).await {
            Ok(lease) => lease,
            Err(_) => state.uploads.acquire(&id).await,
        };
        match state.store.info(&id).await {
            Ok(part)
                if part.final_upload.as_deref() == Some(final_info.id.as_str())
                    && part.placed_at.is_some()
                    && part.state != UploadState::Expired =>
            {
                match state.store.expire(&id).await {
                    Ok(()) => tracing::info!(%id, "part expired with its final upload {}", final_info.id),
                    Err(e) => tracing::warn!(%id, "could not expire a part of {}: {e}", final_info.id),
                }
                state.uploads.forget(&id);
            }
            _ => {}
        }
    }
}

/// Hashes the bytes of an unfinished final upload's parts in order as they are committed, so
/// that its whole-file check at the end has (almost) nothing left to read. Leaves the digest
/// as the final's running digest; on any trouble it leaves nothing and the final is re-read.
#[instrument(level = "debug", skip_all, fields(id = %final_id))]
async fn follow(state: AppState, final_id: String, parts: Vec<(String, u64)>, algorithm: ChecksumAlgorithm) {
    if let Some(digest) = follow_parts(&state, &final_id, parts, algorithm).await {
        state.uploads.put_running(&final_id, digest);
    }
    lock(&state.uploads.ahead).remove(&final_id);
}

async fn follow_parts(
    state: &AppState,
    final_id: &str,
    parts: Vec<(String, u64)>,
    algorithm: ChecksumAlgorithm,
) -> Option<RunningDigest> {
    use futures_util::StreamExt as _;
    let mut digest = RunningDigest::start_urgent(algorithm);
    let mut changes = state.uploads.appends_of(final_id)?;
    let mut at = 0u64;
    let (mut from_memory, mut read_back) = (0u64, 0u64);
    let mut idle_since = std::time::Instant::now();
    for (part, len) in parts {
        let mut done = 0u64;
        while done < len {
            changes.borrow_and_update();
            // Bytes kept in memory by the append that committed them, else read back.
            let next_kept = match state.uploads.take_ahead(final_id, at + done) {
                Ok(bytes) => {
                    let n = bytes.iter().map(Bytes::len).sum::<usize>() as u64;
                    if done + n > len {
                        return None;
                    }
                    digest.feed().feed(bytes).await;
                    done += n;
                    from_memory += n;
                    digest.commit(at + done).await;
                    state.uploads.follower_at(final_id, at + done);
                    continue;
                }
                Err(next) => next,
            };
            let Ok(info) = state.store.info(&part).await else {
                return None;
            };
            if matches!(info.state, UploadState::Error | UploadState::Expired) {
                return None;
            }
            let mut committed = info.offset.min(len);
            if let Some(next) = next_kept {
                committed = committed.min(next.saturating_sub(at).max(done));
            }
            if committed > done {
                let Ok(mut stream) = state.store.read_once(&part, done..committed).await else {
                    return None;
                };
                let feed = digest.feed();
                let mut batch = Vec::new();
                let mut batched = 0usize;
                let mut got = 0u64;
                while let Some(bytes) = stream.next().await {
                    let Ok(bytes) = bytes else {
                        return None;
                    };
                    got += bytes.len() as u64;
                    batched += bytes.len();
                    batch.push(bytes);
                    if batched >= 1 << 20 {
                        batched = 0;
                        feed.feed(std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    feed.feed(batch).await;
                }
                if got != committed - done {
                    return None;
                }
                read_back += committed - done;
                done = committed;
                digest.commit(at + done).await;
                state.uploads.follower_at(final_id, at + done);
                continue;
            }
            match tokio::time::timeout(FOLLOWER_POLL, changes.changed()).await {
                Ok(Ok(())) => idle_since = std::time::Instant::now(),
                Ok(Err(_)) => return None,
                Err(_) if idle_since.elapsed() >= FOLLOWER_IDLE => {
                    state.uploads.release_ahead(final_id);
                    idle_since = std::time::Instant::now();
                }
                Err(_) => {}
            }
        }
        at += len;
    }
    tracing::debug!(id = %final_id, bytes = at, from_memory, read_back, "digest follower caught up");
    Some(digest)
}

/// Finishes an unfinished final upload if all its parts are complete: the parts not written in
/// place are copied in, the digest follower is waited for, then the whole-file check and the
/// publication. Returns the final's info as it then stands.
pub fn complete_final<'a>(
    state: &'a AppState,
    final_id: &'a str,
) -> futures_util::future::BoxFuture<'a, Result<UploadInfo, ServeError>> {
    use futures_util::FutureExt as _;
    let span = tracing::debug_span!("complete_final", id = %final_id);
    async move {
        let _lease = state.uploads.acquire_waiting(final_id).await;
        let info = state.store.info(final_id).await?;
        if info.state != UploadState::Receiving || !info.is_final() {
            return Ok(info);
        }
        if info.is_full() && info.offset > 0 {
            // Concatenated, then a crash before its check and publication: finish now.
            return finish(state, info).await;
        }
        let parts = parts_of(&info)?;
        // Parts complete about in file order: the last ones tell soonest that one is missing.
        for id in parts.iter().rev() {
            let part = match state.store.info(id).await {
                Ok(part) => part,
                Err(super::store::StoreError::NotFound) => {
                    return Err(ServeError::Gone(format!(
                        "its partial upload {id} is gone; create a new final upload"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            match part.state {
                UploadState::Complete => {}
                UploadState::Receiving if part.expires.is_none_or(|e| now_secs() < e) => return Ok(info),
                _ => {
                    return Err(ServeError::Gone(format!(
                        "its partial upload {id} expired or failed; send it again and create a new final upload"
                    )));
                }
            }
        }
        let info = state.store.concatenate(info, &parts, None).await?;
        let follower = lock(&state.uploads.followers).remove(final_id);
        if let Some(mut follower) = follower {
            // Every part is in: the follower only has to catch up. If it does not within the
            // limit it is stopped, and the check reads the file instead.
            state.uploads.notify_appended(final_id);
            if tokio::time::timeout(FOLLOWER_CATCH_UP, &mut follower).await.is_err() {
                tracing::warn!(id = %final_id, "the digest follower did not catch up; reading the file instead");
                follower.abort();
                lock(&state.uploads.ahead).remove(final_id);
            }
        }
        tracing::info!(id = %info.id, parts = parts.len(), length = ?info.length, "final upload complete: all its parts are in");
        finish(state, info).await
    }
    .instrument(span)
    .boxed()
}
