//! The expiry sweeper: unfinished uploads past their expiry are freed (their records kept to
//! answer 410), finals that can never complete are expired with their parts, and the records of
//! parts long since written into a completed final are removed.

use std::time::Duration;

use super::AppState;

use super::store::{UploadInfo, UploadState};

use super::concat::expire_placed_parts;
use super::uploads::*;

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
        if retired(state, &info, now).await {
            // A part written into its final upload, long complete: only a record is left (its
            // bytes are the final's); tus lets a server remove parts after a concatenation.
            let _lease = state.uploads.acquire_waiting(&id).await;
            if state.store.delete(&id).await.is_ok() {
                state.uploads.forget(&id);
                tracing::debug!(%id, "removed the record of a part of a completed final upload");
            }
            continue;
        }
        if !(expired(&info) || stranded(state, &info, now).await) || state.uploads.is_busy(&id) {
            continue;
        }
        let _lease = state.uploads.acquire(&id).await;
        // Look again under the lock: a chunk may have just renewed the expiry.
        match state.store.info(&id).await {
            Ok(info) if expired(&info) || stranded(state, &info, now).await => {}
            _ => continue,
        }
        if let Ok(info) = state.store.info(&id).await
            && info.is_final()
        {
            expire_placed_parts(state, &info).await;
        }
        match state.store.expire(&id).await {
            Ok(()) => {
                state.uploads.forget(&id);
                state.metrics.expired();
                tracing::info!(%id, "unfinished upload expired; its bytes were freed");
                n += 1;
            }
            Err(e) => tracing::warn!(%id, "could not expire: {e}"),
        }
    }
    n
}

/// Whether `info` is a part placed into a final upload that completed more than the expiry
/// period ago (a client had that long to use the part again).
async fn retired(state: &AppState, info: &UploadInfo, now: u64) -> bool {
    let (Some(final_id), Some(_)) = (&info.final_upload, info.placed_at) else {
        return false;
    };
    if info.state != UploadState::Complete {
        return false;
    }
    let keep = state.config.expire_after.as_secs();
    match state.store.info(final_id).await {
        Ok(f) => f.state == UploadState::Complete && f.completed.is_some_and(|c| now >= c.saturating_add(keep)),
        Err(_) => false,
    }
}

/// Whether `info` is an unfinished final upload that can never complete: one of its parts
/// expired, failed or is gone. (It has no expiry of its own: it lives as long as its parts.)
async fn stranded(state: &AppState, info: &UploadInfo, now: u64) -> bool {
    if !info.is_final() || info.state != UploadState::Receiving || info.expires.is_some() {
        return false;
    }
    let Ok(parts) = parts_of(info) else {
        return true;
    };
    for id in parts {
        match state.store.info(&id).await {
            Ok(part) => match part.state {
                UploadState::Complete => {}
                UploadState::Receiving if part.expires.is_none_or(|e| now < e) => {}
                _ => return true,
            },
            Err(super::store::StoreError::NotFound) => return true,
            Err(_) => {}
        }
    }
    false
}

/// How often the sweeper runs for a given `--expire-after`.
pub fn sweep_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}
