//! The one error type of the server and its one mapping to HTTP answers: a status code and a
//! short plain-text reason, never an internal detail. Those go to the log, once, from
//! [`log_server_errors`]: the answer carries them there in a response extension.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::store::{BodyError, StoreError};
use crate::protocol;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A malformed or missing header, or a request that makes no sense (400).
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token, or not one of ours (401).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The request is not allowed on this upload (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such upload, or not this token's (404).
    #[error("upload not found")]
    NotFound,
    /// The offset does not match, or the upload is not in a state for this request (409).
    #[error("{0}")]
    Conflict(String),
    /// A request the server does not implement (501): a transfer coding it cannot undo.
    #[error("{0}")]
    NotImplemented(String),
    /// Another request is still sending bytes for the upload (423, `Retry-After`).
    #[error("{0}")]
    Locked(String),
    /// The upload expired or failed; start a new one (410).
    #[error("{0}")]
    Gone(String),
    /// Larger than `--max-size` or than the upload (413).
    #[error("{0}")]
    TooLarge(String),
    /// `Tus-Resumable` missing or not a version we speak (412).
    #[error("unsupported or missing Tus-Resumable; this server speaks {}", protocol::TUS_VERSION)]
    VersionUnsupported,
    /// A PATCH without `Content-Type: application/offset+octet-stream` (415).
    #[error("Content-Type must be {}", protocol::OFFSET_OCTET_STREAM)]
    UnsupportedMediaType,
    /// A `Range` outside the file (416).
    #[error("range not satisfiable")]
    RangeNotSatisfiable {
        /// The file's length, for `Content-Range: bytes */LEN`.
        length: u64,
    },
    /// A chunk or the whole file does not match its checksum (460).
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The server is shutting down and gave up the request body; the client continues later
    /// (503, `Retry-After`).
    #[error("the server is shutting down: {0}")]
    ShuttingDown(String),
    /// The request body stalled or trickled under the minimum rate (408); the connection is
    /// closed after the answer.
    #[error("{0}")]
    RequestTimeout(String),
    /// The disk is full; nothing of the request was kept (507).
    #[error("insufficient storage on the server; nothing of this request was kept")]
    DiskFull,
    /// Anything else (500); the detail is logged, not answered.
    #[error("internal server error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for ServeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServeError::NotFound,
            StoreError::OffsetMismatch { .. } | StoreError::PrefixMismatch { .. } | StoreError::Conflict => {
                ServeError::Conflict(e.to_string())
            }
            StoreError::ChunkTooLarge { .. } => ServeError::TooLarge(e.to_string()),
            StoreError::ChecksumMismatch { .. } => ServeError::ChecksumMismatch(e.to_string()),
            StoreError::Body(BodyError::TooLong) => ServeError::TooLarge(e.to_string()),
            StoreError::Body(BodyError::Malformed(_)) => ServeError::BadRequest(format!("{e}; nothing of it was kept")),
            StoreError::Body(BodyError::Superseded) => ServeError::Conflict(format!(
                "{e}; nothing of it was kept: ask for the offset (HEAD) and continue"
            )),
            StoreError::Body(BodyError::Interrupted(_)) => {
                ServeError::BadRequest(format!("{e}; nothing of it was kept"))
            }
            StoreError::Body(BodyError::TimedOut(_)) => {
                ServeError::RequestTimeout(format!("{e}; nothing of it was kept"))
            }
            StoreError::DiskFull => ServeError::DiskFull,
            StoreError::Exists | StoreError::Io(_) => ServeError::Internal(e),
        }
    }
}

impl ServeError {
    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::NotFound => StatusCode::NOT_FOUND,
            ServeError::Conflict(_) => StatusCode::CONFLICT,
            ServeError::Locked(_) => StatusCode::LOCKED,
            ServeError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ServeError::Gone(_) => StatusCode::GONE,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::VersionUnsupported => StatusCode::PRECONDITION_FAILED,
            ServeError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ServeError::ChecksumMismatch(_) => {
                StatusCode::from_u16(protocol::STATUS_CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ServeError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ServeError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServeError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ServeError {
    /// What the log says of this error: the answer's reason, and for an internal error the
    /// detail behind it with its causes (never answered).
    pub fn detail(&self) -> String {
        let ServeError::Internal(source) = self else {
            return self.to_string();
        };
        crate::error_chain(source)
    }

    /// The answer, for a request about upload `id` whose path does not name it (a creation
    /// that failed after the upload was created): its 5xx is logged with that id.
    pub fn into_response_for(self, id: &str) -> Response {
        let mut response = self.into_response();
        response.extensions_mut().insert(UploadId(id.to_string()));
        response
    }
}

/// The detail of a 5xx answer, from [`ServeError::into_response`] to [`log_server_errors`].
#[derive(Clone, Debug)]
struct Detail(String);

/// The upload a request was about, when its path does not name it.
#[derive(Clone, Debug)]
struct UploadId(String);

/// The upload id in a request path (`/files/{id}`, `/files/{id}/status`), if any.
fn id_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/files/")?;
    let id = rest.split('/').next().unwrap_or("");
    super::uploads::is_valid_id(id).then_some(id)
}

/// Logs every 5xx answer once, with the upload id and the method: 500 at error level with the
/// internal detail (which the answer never carries), the others (503, 507) at warn.
pub async fn log_server_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path_id = id_in_path(req.uri().path()).map(str::to_string);
    let mut response = next.run(req).await;
    let status = response.status();
    if !status.is_server_error() {
        return response;
    }
    let detail = response.extensions_mut().remove::<Detail>().map(|d| d.0);
    let detail = detail.unwrap_or_else(|| status.canonical_reason().unwrap_or("server error").to_string());
    let id = match response.extensions_mut().remove::<UploadId>() {
        Some(UploadId(id)) => Some(id),
        None => path_id,
    };
    let id = id.as_deref().unwrap_or("-");
    let code = status.as_u16();
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%id, %method, status = code, "request failed: {detail}");
    } else {
        tracing::warn!(%id, %method, status = code, "request failed: {detail}");
    }
    response
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = status.is_server_error().then(|| Detail(self.detail()));
        let mut response = (status, format!("{self}\n")).into_response();
        if let Some(detail) = detail {
            response.extensions_mut().insert(detail);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            ServeError::VersionUnsupported => {
                headers.insert(
                    protocol::header::TUS_VERSION,
                    HeaderValue::from_static(protocol::TUS_VERSION),
                );
            }
            ServeError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ServeError::ShuttingDown(_) | ServeError::Locked(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ServeError::RequestTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ServeError::RangeNotSatisfiable { length } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_are_not_leaked() {
        let e = ServeError::from(StoreError::Io(std::io::Error::other("/secret/path broke")));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.to_string().contains("secret"));
        assert_eq!(ServeError::from(StoreError::DiskFull).status().as_u16(), 507);
        let mismatch = StoreError::ChecksumMismatch {
            algorithm: "md5",
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(ServeError::from(mismatch).status().as_u16(), 460);
    }

    #[test]
    fn a_5xx_carries_its_detail_to_the_log_not_to_the_client() {
        let e = ServeError::from(StoreError::Io(std::io::Error::other("/secret/path broke")));
        assert_eq!(e.detail(), "storage I/O: /secret/path broke");
        let r = e.into_response();
        assert_eq!(
            r.extensions().get::<Detail>().map(|d| d.0.as_str()),
            Some("storage I/O: /secret/path broke")
        );
        assert!(
            ServeError::NotFound
                .into_response()
                .extensions()
                .get::<Detail>()
                .is_none()
        );
        let r = ServeError::DiskFull.into_response_for("abc");
        assert_eq!(r.extensions().get::<UploadId>().map(|i| i.0.as_str()), Some("abc"));
        assert!(r.extensions().get::<Detail>().is_some());
    }

    #[test]
    fn ids_in_paths() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(id_in_path(&format!("/files/{id}")), Some(id));
        assert_eq!(id_in_path(&format!("/files/{id}/status")), Some(id));
        assert_eq!(id_in_path("/files/not-an-id"), None);
        assert_eq!(id_in_path("/files/"), None);
        assert_eq!(id_in_path("/files"), None);
        assert_eq!(id_in_path("/other/abc"), None);
    }
}
