//! The one error type of the server and its one mapping to HTTP answers: a status code and a
//! short plain-text reason, never an internal detail (those go to the log).

use axum::http::{HeaderValue, StatusCode, header};
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
            StoreError::OffsetMismatch { .. } | StoreError::PrefixMismatch { .. } => {
                ServeError::Conflict(e.to_string())
            }
            StoreError::ChecksumMismatch { .. } => ServeError::ChecksumMismatch(e.to_string()),
            StoreError::Body(BodyError::TooLong) => ServeError::TooLarge(e.to_string()),
            StoreError::Body(BodyError::Interrupted(_)) => {
                ServeError::BadRequest(format!("{e}; nothing of it was kept"))
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
            ServeError::Gone(_) => StatusCode::GONE,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::VersionUnsupported => StatusCode::PRECONDITION_FAILED,
            ServeError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ServeError::ChecksumMismatch(_) => {
                StatusCode::from_u16(protocol::STATUS_CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ServeError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ServeError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        if let ServeError::Internal(source) = &self {
            tracing::error!("request failed: {source}");
        }
        let status = self.status();
        let mut response = (status, format!("{self}\n")).into_response();
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
            ServeError::ShuttingDown(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
}
