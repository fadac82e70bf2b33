//! The HTTP handlers, thin: read headers through [`super::verify`], act through
//! [`super::uploads`], answer with tus headers.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::header::IntoHeaderName;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header as http};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tracing::{Instrument as _, instrument};

use super::AppState;
use super::error::ServeError;
use super::store::{UploadInfo, UploadState};
use super::uploads::{self, Creation, Owner};
use super::verify::{self, MAX_CONCAT_PARTS};
use super::{concat, origin, status};
use crate::protocol::Listed;
use crate::protocol::{self, StatusReport, header};

type Result<T> = std::result::Result<T, ServeError>;

fn set(headers: &mut HeaderMap, name: impl IntoHeaderName, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

/// The upload's URL path.
fn location(id: &str) -> String {
    format!("/files/{id}")
}

/// `Upload-Expires` for an unfinished upload.
fn set_expires(headers: &mut HeaderMap, info: &UploadInfo) {
    if info.state == UploadState::Receiving
        && let Some(secs) = info.expires
    {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        set(headers, header::UPLOAD_EXPIRES, httpdate::fmt_http_date(t));
    }
}

/// `OPTIONS`: what this server speaks.
#[instrument(skip_all)]
pub async fn options(State(state): State<AppState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    set(h, header::TUS_VERSION, protocol::TUS_VERSION);
    let keep = state.config.keep_prefixes;
    let offered = protocol::Extension::ALL
        .into_iter()
        .filter(|e| keep || *e != protocol::Extension::ChunkPrefix);
    set(h, header::TUS_EXTENSION, protocol::Extension::header(offered));
    set(h, header::TUS_CHECKSUM_ALGORITHM, protocol::CHECKSUM_ALGORITHMS);
    if let Some(max) = state.config.max_size {
        set(h, header::TUS_MAX_SIZE, max);
    }
    r
}

/// `POST /files`: creation, creation-with-upload, creation-defer-length, concatenation. Its span
/// carries the new upload's id once it is known.
#[instrument(skip_all, fields(id = tracing::field::Empty))]
pub async fn create(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    verify::check_transfer_encoding(&headers)?;
    let metadata = verify::upload_metadata(&headers)?;
    let length = verify::header_u64(&headers, header::UPLOAD_LENGTH)?;
    let concat = verify::header_str(&headers, header::UPLOAD_CONCAT)?
        .map(protocol::Concat::parse)
        .transpose()
        .map_err(ServeError::BadRequest)?;
    if let Some(protocol::Concat::Final(urls)) = &concat {
        if length.is_some() {
            return Err(ServeError::BadRequest(
                "a final upload must not carry Upload-Length".into(),
            ));
        }
        verify::header_str(&headers, "host")?;
        let origin = origin::of_request(&uri, &headers, state.tls.is_some(), state.config.behind_proxy);
        let parts = uploads::concat_part_ids(urls, origin.as_ref().map(|o| o.authority.as_str()))?;
        if parts.is_empty() || parts.len() > MAX_CONCAT_PARTS {
            return Err(ServeError::BadRequest(format!(
                "a final upload names 1 to {MAX_CONCAT_PARTS} partial uploads"
            )));
        }
        let info = concat::concatenate(&state, &owner, metadata, urls.clone(), parts).await?;
        tracing::Span::current().record("id", tracing::field::display(&info.id));
        return Ok(created(&info, false));
    }
    let deferred = match verify::header_str(&headers, header::UPLOAD_DEFER_LENGTH)? {
        None => false,
        Some("1") => true,
        Some(_) => return Err(ServeError::BadRequest("Upload-Defer-Length must be 1".into())),
    };
    if deferred == length.is_some() {
        return Err(ServeError::BadRequest(
            "send exactly one of Upload-Length and Upload-Defer-Length: 1".into(),
        ));
    }
    if let (Some(len), Some(max)) = (length, state.config.max_size)
        && len > max
    {
        return Err(ServeError::TooLarge(format!(
            "Upload-Length {len} exceeds the maximum size {max}"
        )));
    }
    let with_data = verify::is_offset_stream(&headers);
    let checksum = if with_data {
        verify::upload_checksum(&headers)?
    } else {
        None
    };
    // A deferred-length upload whose client will send its whole-file checksum late: hashed
    // from its first byte (robusto-repr-digest). Without a `checksum` metadata only.
    let digest_wanted = match verify::header_str(&headers, header::WANT_REPR_DIGEST)? {
        Some(v) if deferred && concat.is_none() && verify::expected_whole(metadata.as_deref()).is_none() => {
            protocol::wanted_repr_digest(v)
        }
        _ => None,
    };
    let mut info = uploads::create(
        &state,
        &owner,
        Creation {
            length,
            metadata,
            concat,
            digest_wanted,
        },
    )
    .await?;
    tracing::Span::current().record("id", tracing::field::display(&info.id));
    if with_data && info.state == UploadState::Receiving {
        let lease = state.uploads.acquire(&info.id).await;
        let stream = verify::guarded_body(body, state.config.read_timeout, state.config.min_rate, &lease);
        // A failure after the upload exists is logged with its id (the path names none).
        match uploads::append(&state, info.clone(), checksum, 0, stream).await {
            Ok(after) => info = after,
            // The body was cut off: the upload exists, the client learns the offset and
            // continues with PATCH. Any other failure (checksum, disk) is answered as such.
            Err(ServeError::BadRequest(reason)) => {
                tracing::info!(id = %info.id, "data sent with the creation request was not kept: {reason}");
                match state.store.info(&info.id).await {
                    Ok(now) => info = now,
                    Err(e) => return Ok(ServeError::from(e).into_response_for(&info.id)),
                }
            }
            Err(e) => return Ok(e.into_response_for(&info.id)),
        }
    }
    Ok(created(&info, with_data))
}

fn created(info: &UploadInfo, with_offset: bool) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, http::LOCATION, location(&info.id));
    if with_offset {
        set(h, header::UPLOAD_OFFSET, info.offset);
    }
    set_expires(h, info);
    r
}

/// How long a HEAD of an unfinished final upload waits for it to be finished before answering
/// without an offset (well below clients' stall timeouts).
const HEAD_WAITS_FOR_FINAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Finishes a final upload created before its parts were complete if they are now (normally
/// the last part does; this covers a restart in between). It never holds a HEAD for long: while
/// another request is finishing it, or when finishing takes longer than a few seconds (a
/// re-read after a restart), the answer is the upload as it stands (no offset yet) and the
/// work goes on in the background.
async fn finish_final(state: &AppState, mut info: UploadInfo) -> Result<UploadInfo> {
    if state.uploads.is_busy(&info.id) {
        // Someone is finishing it (the last part did): wait for them, a little.
        match tokio::time::timeout(HEAD_WAITS_FOR_FINAL, state.uploads.acquire_waiting(&info.id)).await {
            Err(_) => return Ok(info),
            Ok(lease) => drop(lease),
        }
        info = state.store.info(&info.id).await?;
        if info.state != UploadState::Receiving {
            return settled(info);
        }
    }
    let finishing = {
        let (state, id) = (state.clone(), info.id.clone());
        tokio::spawn(async move { concat::complete_final(&state, &id).await }.in_current_span())
    };
    let done = match tokio::time::timeout(HEAD_WAITS_FOR_FINAL, finishing).await {
        // Another request (on another node) is finishing it: not finished yet, as far as this
        // answer goes.
        Ok(Ok(Err(ServeError::Conflict(why)))) => {
            tracing::debug!("the final upload is being finished elsewhere: {why}");
            state.store.info(&info.id).await?
        }
        Ok(Ok(done)) => done?,
        Ok(Err(e)) => {
            return Err(ServeError::Internal(super::store::StoreError::Io(
                std::io::Error::other(format!("finishing the upload failed: {e}")),
            )));
        }
        Err(_) => info,
    };
    settled(done)
}

/// A final upload that failed its check is gone for its client.
fn settled(info: UploadInfo) -> Result<UploadInfo> {
    if info.state == UploadState::Error {
        return Err(ServeError::Gone(format!(
            "the upload failed ({}); start a new upload",
            info.error.as_deref().unwrap_or("error")
        )));
    }
    Ok(info)
}

/// How long a HEAD waits for a request in flight that is still receiving bytes before it
/// answers what is recorded.
const HEAD_WAITS_FOR_WRITER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a HEAD waits for a request in flight that receives nothing more (ending, or
/// stalled) before it answers what is recorded.
const HEAD_WAITS_FOR_ENDING: std::time::Duration = std::time::Duration::from_secs(10);

/// `HEAD /files/{id}`: where the upload stands, as recorded once a request in flight that is
/// ending has finished ([`HEAD_WAITS_FOR_ENDING`]; one still receiving, at most
/// [`HEAD_WAITS_FOR_WRITER`]); it ends no request.
#[instrument(skip_all, fields(id = %id))]
pub async fn head(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Response> {
    let mut info = uploads::load_live(&state, &id, &owner).await?;
    if !info.is_final() && state.uploads.is_busy(&id) {
        // A request in flight that is ending (its connection was just cut: it receives nothing
        // more and commits what it has) is let finish, so that the answer counts what it
        // delivered; one still receiving bytes is waited for at most HEAD_WAITS_FOR_WRITER.
        // None is ever cut.
        let started = tokio::time::Instant::now();
        while let Some(idle) = state.uploads.holder_idle(&id) {
            let waited = started.elapsed();
            let receiving = idle < std::time::Duration::from_millis(250);
            if waited >= HEAD_WAITS_FOR_ENDING || (receiving && waited >= HEAD_WAITS_FOR_WRITER) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        info = uploads::load_live(&state, &id, &owner).await?;
    }
    if info.is_final() {
        if info.state == UploadState::Receiving {
            info = finish_final(&state, info).await?;
        }
    } else if info.state == UploadState::Receiving && info.is_full() {
        // A crash between the last byte and its publication: finish now (after a request in
        // flight, never cutting it: a HEAD ends no PATCH).
        let _lease = state.uploads.acquire_waiting(&id).await;
        info = uploads::load_live(&state, &id, &owner).await?;
        if info.state == UploadState::Receiving && info.is_full() {
            info = uploads::finish(&state, info).await?;
        }
    }
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert(http::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A final upload tells its offset only once it is concatenated (tus concatenation).
    if !(info.is_final() && info.state == UploadState::Receiving) {
        set(h, header::UPLOAD_OFFSET, info.offset);
    }
    match info.length {
        Some(len) => set(h, header::UPLOAD_LENGTH, len),
        None => set(h, header::UPLOAD_DEFER_LENGTH, 1),
    }
    if let Some(m) = &info.metadata {
        set(h, header::UPLOAD_METADATA, m);
    }
    if let Some(c) = &info.concat {
        set(h, header::UPLOAD_CONCAT, c.to_header());
    }
    if let Some(held) = info.held.as_ref().filter(|_| info.state == UploadState::Receiving) {
        set(h, header::CHUNK_PREFIX, held.len);
        set(h, header::CHUNK_CHECKSUM, &held.checksum);
    }
    set_expires(h, &info);
    Ok(r)
}

/// `PATCH /files/{id}`: append a chunk (checked against `Upload-Checksum` if sent).
#[instrument(skip_all, fields(id = %id))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    verify::check_transfer_encoding(&headers)?;
    if !verify::is_offset_stream(&headers) {
        return Err(ServeError::UnsupportedMediaType);
    }
    let offset = verify::header_u64(&headers, header::UPLOAD_OFFSET)?
        .ok_or_else(|| ServeError::BadRequest("Upload-Offset is required".into()))?;
    let checksum = verify::upload_checksum(&headers)?;
    let new_length = verify::header_u64(&headers, header::UPLOAD_LENGTH)?;
    let content_length = verify::header_u64(&headers, "content-length")?;
    let continues = verify::header_u64(&headers, header::CHUNK_PREFIX)?.unwrap_or(0);
    if continues > 0 && checksum.is_none() {
        return Err(ServeError::BadRequest(format!(
            "{} needs the whole chunk's Upload-Checksum",
            header::CHUNK_PREFIX
        )));
    }

    let lease =
        state.uploads.acquire_for_patch(&id).await.map_err(|_| {
            ServeError::Locked("another request is still sending bytes for this upload; try again".into())
        })?;
    let mut info = uploads::load_live(&state, &id, &owner).await?;
    if info.is_final() {
        return Err(ServeError::Forbidden("a final upload cannot be patched".into()));
    }
    if info.offset != offset {
        return Err(ServeError::Conflict(format!(
            "Upload-Offset {offset} does not match the upload's offset {}",
            info.offset
        )));
    }
    if continues > 0 {
        let sent = checksum.as_ref().map(protocol::Checksum::to_header);
        match &info.held {
            Some(held) if held.len == continues && Some(&held.checksum) == sent.as_ref() => {}
            held => {
                return Err(ServeError::Conflict(match held {
                    Some(h) => format!(
                        "the server holds {} bytes of a chunk with checksum '{}', not {continues} of this one",
                        h.len, h.checksum
                    ),
                    None => format!("the server holds no bytes of a chunk at offset {offset}"),
                }));
            }
        }
    }
    let late = verify::header_str(&headers, header::REPR_DIGEST)?
        .map(protocol::Checksum::parse_repr_digest)
        .transpose()
        .map_err(|e| ServeError::BadRequest(e.to_string()))?;
    let mut changed = false;
    if let Some(late) = &late {
        if info.is_partial() {
            return Err(ServeError::BadRequest(
                "a partial upload is checked whole in its final upload: Repr-Digest does not apply".into(),
            ));
        }
        match (verify::expected_whole_of(&info), info.digest_wanted) {
            (Some(known), _) if &known != late => {
                return Err(ServeError::BadRequest(format!(
                    "the upload's whole-file checksum is '{}' and cannot change",
                    known.to_header()
                )));
            }
            (Some(_), _) => {}
            (None, Some(wanted)) if wanted != late.algorithm => {
                return Err(ServeError::BadRequest(format!(
                    "the upload was created for a {wanted} Repr-Digest (Want-Repr-Digest), not {}",
                    late.algorithm
                )));
            }
            (None, _) if info.state == UploadState::Complete => {
                return Err(ServeError::BadRequest(
                    "the upload is complete: its whole-file checksum can no longer be given".into(),
                ));
            }
            (None, _) => {
                info.repr_digest = Some(late.to_header());
                // Readers (HEAD, status, listing, get and restore) find the whole-file checksum
                // where an upload that knew it at creation carries it.
                let mut meta = match info.metadata.as_deref() {
                    Some(raw) => protocol::Metadata::parse(raw).map_err(|e| ServeError::BadRequest(e.to_string()))?,
                    None => protocol::Metadata::default(),
                };
                meta.insert(protocol::meta::CHECKSUM, &late.to_header());
                info.metadata = Some(meta.to_header());
                changed = true;
            }
        }
    }
    match (info.length, new_length) {
        (Some(len), Some(new)) if len != new => {
            return Err(ServeError::BadRequest(format!(
                "the upload's length is {len} and cannot change"
            )));
        }
        (None, Some(_)) if info.digest_wanted.is_some() && verify::expected_whole_of(&info).is_none() => {
            return Err(ServeError::BadRequest(format!(
                "the upload was created with {}: send its Repr-Digest with Upload-Length",
                header::WANT_REPR_DIGEST
            )));
        }
        (None, Some(new)) => {
            if let Some(max) = state.config.max_size
                && new > max
            {
                return Err(ServeError::TooLarge(format!(
                    "Upload-Length {new} exceeds the maximum size {max}"
                )));
            }
            if new < info.offset {
                return Err(ServeError::BadRequest(
                    "Upload-Length is below the upload's offset".into(),
                ));
            }
            info.length = Some(new);
            changed = true;
        }
        _ => {}
    }
    if changed {
        // The length and the late checksum are recorded together, before any byte.
        state.store.update(info.clone()).await?;
    }
    if let (Some(len), Some(cl)) = (info.length, content_length)
        && cl > len.saturating_sub(info.offset + continues)
    {
        return Err(ServeError::TooLarge(format!(
            "the body ({cl} bytes) is longer than the {} bytes the upload still needs",
            len.saturating_sub(info.offset + continues)
        )));
    }
    if info.state == UploadState::Complete {
        // Nothing more to take; an empty PATCH at the end is answered with the offset.
        if content_length.unwrap_or(0) > 0 {
            return Err(ServeError::TooLarge("the upload is already complete".into()));
        }
    } else {
        let stream = verify::guarded_body(body, state.config.read_timeout, state.config.min_rate, &lease);
        info = uploads::append(&state, info, checksum, continues, stream).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    set(r.headers_mut(), header::UPLOAD_OFFSET, info.offset);
    set_expires(r.headers_mut(), &info);
    if info.state == UploadState::Complete
        && let Some(md5) = info.md5.as_deref().and_then(crate::fingerprint::Md5::from_hex)
    {
        // What the server computed of the whole upload (RFC 9530), for the client to compare.
        set(
            r.headers_mut(),
            header::REPR_DIGEST,
            protocol::Checksum::md5(md5).to_repr_digest(),
        );
    }
    Ok(r)
}

/// `DELETE /files/{id}`: termination.
#[instrument(skip_all, fields(id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Response> {
    let _lease = state.uploads.acquire(&id).await;
    let info = uploads::load(&state, &id, &owner).await?;
    if info.is_final() {
        concat::expire_placed_parts(&state, &info).await;
    }
    state.store.delete(&id).await?;
    state.uploads.forget(&id);
    tracing::info!(%id, "upload terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /files/{id}/status`: the robusto status report.
#[instrument(skip_all, fields(id = %id))]
pub async fn status(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<StatusReport>> {
    let info = uploads::load(&state, &id, &owner).await?;
    let url = match origin::of_request(&uri, &headers, state.tls.is_some(), state.config.behind_proxy) {
        Some(origin) => format!("{}{}", origin.url(), location(&id)),
        None => location(&id),
    };
    Ok(Json(status::status_report(&state, info, url).await))
}

/// `GET /files`: the completed uploads the caller's token may see, as JSON, oldest first.
#[instrument(skip_all)]
pub async fn list(State(state): State<AppState>, Extension(owner): Extension<Owner>) -> Result<Json<Vec<Listed>>> {
    Ok(Json(status::list_complete(&state, &owner).await?))
}

/// A single `bytes=` range of a file of `len` bytes; `None` for the whole file.
pub(crate) fn parse_range(headers: &HeaderMap, len: u64) -> Result<Option<std::ops::Range<u64>>> {
    let Some(spec) = verify::header_str(headers, "range")? else {
        return Ok(None);
    };
    let unsatisfiable = ServeError::RangeNotSatisfiable { length: len };
    let Some(spec) = spec.strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: answer with the whole file
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (a.trim().is_empty(), num(a), num(b)) {
        (true, _, Some(n)) if n > 0 => len.saturating_sub(n)..len,
        (false, Some(start), None) if b.trim().is_empty() => start..len,
        (false, Some(start), Some(end)) if end >= start => start..(end.saturating_add(1)).min(len),
        _ => return Ok(None),
    };
    if range.start >= len {
        return Err(unsatisfiable);
    }
    Ok(Some(range))
}

/// `GET /files/{id}`: the bytes of a completed upload, with `Range`.
#[instrument(skip_all, fields(id = %id))]
pub async fn download(
    State(state): State<AppState>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let info = uploads::load(&state, &id, &owner).await?;
    if info.state != UploadState::Complete {
        return Err(ServeError::Conflict(
            "the upload is not complete, so it cannot be read yet".into(),
        ));
    }
    let len = info.offset;
    let range = parse_range(&headers, len)?;
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..len),
    };
    let stream = state.store.read(&id, span.clone()).await?;
    let mut r = (status, Body::from_stream(stream)).into_response();
    let h = r.headers_mut();
    set(h, http::CONTENT_LENGTH, span.end - span.start);
    set(h, http::CONTENT_TYPE, "application/octet-stream");
    set(h, http::ACCEPT_RANGES, "bytes");
    set(h, http::CACHE_CONTROL, "no-store");
    let md5 = info.md5.as_deref().and_then(crate::fingerprint::Md5::from_hex);
    set(h, http::ETAG, format!("\"{}\"", md5.map(|m| m.hex()).unwrap_or(id)));
    if let Some(m) = md5
        && range.is_none()
    {
        set(h, "content-md5", base64::engine::general_purpose::STANDARD.encode(m.0));
    }
    if range.is_some() {
        set(
            h,
            "content-range",
            format!("bytes {}-{}/{len}", span.start, span.end - 1),
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_range(&h, 10).unwrap(), None);
        for (spec, want) in [
            ("bytes=2-4", 2..5),
            ("bytes=5-", 5..10),
            ("bytes=-3", 7..10),
            ("bytes=8-99", 8..10),
        ] {
            h.insert("range", HeaderValue::from_static(spec));
            assert_eq!(parse_range(&h, 10).unwrap(), Some(want), "{spec}");
        }
        h.insert("range", HeaderValue::from_static("bytes=10-"));
        assert!(parse_range(&h, 10).is_err());
        h.insert("range", HeaderValue::from_static("bytes=1-2,4-5"));
        assert_eq!(parse_range(&h, 10).unwrap(), None);
    }
}
