//! What the server reports about uploads: the status of one (`GET /files/{id}/status`) and the
//! listing of a token's completed uploads (`GET /files/`).

use super::AppState;

use super::error::ServeError;
use super::store::{UploadInfo, UploadState};
use crate::protocol::Listed;
use crate::protocol::{DEFAULT_CHUNK_SIZE, Metadata, Status, StatusReport, chunks_received, meta};

use super::uploads::*;

/// The status report of an upload; `url` is where a complete upload is read.
pub fn report(info: UploadInfo, url: String) -> StatusReport {
    let (status, value) = match info.state {
        UploadState::Receiving if info.offset == 0 => (Status::New, String::new()),
        UploadState::Receiving => (Status::Partial, chunks_received(info.offset, chunk_size_of(&info))),
        UploadState::Complete => (Status::Complete, url),
        UploadState::Error => (Status::Error, info.error.unwrap_or_else(|| "error".into())),
        UploadState::Expired => (Status::Error, "the upload expired before it was complete".into()),
    };
    StatusReport { status, value }
}

/// Like [`report`], for any upload: a final upload whose parts are still arriving reports the
/// chunks its parts hold so far (its own offset stays 0 until it is finished).
pub async fn status_report(state: &AppState, info: UploadInfo, url: String) -> StatusReport {
    if !(info.is_final() && info.state == UploadState::Receiving) {
        return report(info, url);
    }
    let (Ok(parts), Some(length)) = (parts_of(&info), info.length) else {
        return report(info, url);
    };
    // The committed byte ranges of the parts, in file order, merged where they touch.
    let mut held: Vec<(u64, u64)> = Vec::new();
    let mut base = 0u64;
    for id in parts {
        let Ok(part) = state.store.info(&id).await else {
            return report(info, url);
        };
        let end = base + part.offset;
        match held.last_mut() {
            Some(last) if last.1 == base => last.1 = end,
            _ if end > base => held.push((base, end)),
            _ => {}
        }
        base += part.length.unwrap_or(part.offset);
    }
    let chunk = chunk_size_of(&info);
    let received: Vec<String> = (0..length.div_ceil(chunk))
        .filter(|c| {
            let (start, end) = (c * chunk, ((c + 1) * chunk).min(length));
            held.iter().any(|&(a, b)| a <= start && end <= b)
        })
        .map(|c| c.to_string())
        .collect();
    if received.is_empty() {
        StatusReport {
            status: Status::New,
            value: String::new(),
        }
    } else {
        StatusReport {
            status: Status::Partial,
            value: received.join(","),
        }
    }
}

/// The `chunk-size` metadata of an upload, or the default.
fn chunk_size_of(info: &UploadInfo) -> u64 {
    info.metadata
        .as_deref()
        .and_then(|m| Metadata::parse(m).ok())
        .as_ref()
        .and_then(|m| m.get_str(meta::CHUNK_SIZE))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&c| c > 0)
        .unwrap_or(DEFAULT_CHUNK_SIZE)
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
            completed_ns: info.completed_ns,
            completed_at,
            metadata,
            id: info.id,
        });
    }
    out.sort_by(crate::retention::oldest_first);
    Ok(out)
}
