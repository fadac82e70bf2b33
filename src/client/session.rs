//! tus 1.0.0 on reqwest: discovery (OPTIONS), creation (optionally with the first bytes),
//! PATCH with `Upload-Checksum`, HEAD to learn the server's offset, concatenation and
//! termination. Every request is guarded by a stall watchdog: no progress for the stall timeout
//! (nothing sent, nothing answered) fails the request as a retryable fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};

use super::throttle::Throttle;
use crate::protocol::{self, Checksum, ChecksumAlgorithm, Extension, Metadata, StatusReport, header};

/// Bytes handed to the connection at a time when throttled (the throttle's grain).
const SLICE: usize = 64 << 10;
/// Bytes handed to the connection at a time when not throttled.
const BIG_SLICE: usize = 512 << 10;

/// What went wrong with one request, grouped by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A network fault, a stall, or a server that is busy or failing (5xx, 423, 429): try again
    /// after a backoff, then ask the server (HEAD) where it stands.
    #[error(transparent)]
    Transient(Fault),
    /// The connection broke (or stalled) while the request body was being sent, after `sent`
    /// bytes were handed to it: ask the server (HEAD) at once how much it kept.
    #[error("the connection broke after {sent} bytes of the body: {reason}")]
    Cut {
        /// Body bytes handed to the connection before it broke.
        sent: u64,
        /// What broke.
        reason: String,
    },
    /// The server's checksum of the body did not match `Upload-Checksum` (460).
    #[error("the server's checksum of the chunk did not match (460)")]
    ChecksumMismatch,
    /// The offset we sent is not the server's (409): ask again with HEAD.
    #[error("the server's offset differs from ours (409)")]
    OffsetConflict,
    /// The upload is unknown or expired on the server (404, 410): start a fresh one.
    #[error("the server no longer has this upload ({0})")]
    Gone(StatusCode),
    /// The server wants a token, or refused the one sent (401, 403): retrying will not change
    /// that.
    #[error(
        "{}",
        if *.sent_token {
            format!("the server refused the token ({status}): check the one in --token-file FILE or $ROBUSTO_TOKEN")
        } else {
            format!("the server wants a token ({status}): pass it with --token-file FILE or $ROBUSTO_TOKEN")
        }
    )]
    Unauthorized {
        /// 401 or 403.
        status: StatusCode,
        /// Whether the request carried a token.
        sent_token: bool,
    },
    /// What the URL names answered a creation or a listing with 404 or 405: it is not the
    /// endpoint (a wrong path, most often).
    #[error("not a {what}: {method} answered {status}; check the URL's path (robusto serve's endpoint is /files/)")]
    NotAnEndpoint {
        /// What was expected there: a tus upload endpoint, a robusto listing.
        what: &'static str,
        /// The request's method.
        method: Method,
        /// The status code.
        status: StatusCode,
    },
    /// The server refused the request for a reason that retrying will not change.
    #[error("the server refused the request: {status} {message}")]
    Rejected {
        /// The status code.
        status: StatusCode,
        /// The response body, shortened.
        message: String,
    },
    /// The server's answer does not follow the protocol.
    #[error("the server's answer does not follow tus 1.0.0: {0}")]
    Protocol(String),
    /// TLS failed for a reason that retrying will not change: most often a certificate this
    /// client does not trust (unknown authority, expired, for another name).
    #[error("TLS with the server failed: {reason}; {hint}")]
    Tls {
        /// What rustls said.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
}

/// A failure worth trying again, with what caused it when that was an HTTP client error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Fault {
    what: String,
    #[source]
    source: Option<reqwest::Error>,
}

impl SessionError {
    fn transient(what: impl Into<String>) -> Self {
        SessionError::Transient(Fault {
            what: what.into(),
            source: None,
        })
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_builder() {
            SessionError::Protocol(format!("cannot build the request: {e}"))
        } else if let Some(tls) = tls_failure(&e) {
            SessionError::Tls {
                reason: tls.to_string(),
                hint: tls_hint(tls),
            }
        } else if let Some(what) = connect_failure(&e) {
            // worth retrying (a server restarting), said so that a person knows what is down
            SessionError::transient(what)
        } else {
            SessionError::Transient(Fault {
                what: e.to_string(),
                source: Some(e),
            })
        }
    }

    /// Whether trying again may succeed: a fault of the network or of a busy server.
    pub fn is_transient(&self) -> bool {
        matches!(self, SessionError::Transient(_) | SessionError::Cut { .. })
    }

    /// The error with its causes, for a log line or a retry's reason.
    pub fn reason(&self) -> String {
        crate::error_chain(self)
    }
}

/// The rustls error behind a request's failure, if TLS is what failed. (An `io::Error` does not
/// list the error it wraps among its sources, so each one is opened.)
fn tls_failure(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// What a failure to connect says, with the address: "connection refused by 127.0.0.1:1080
/// (…)", "cannot connect to backup.example.org:443: …"; `None` if the request got past
/// connecting.
fn connect_failure(e: &reqwest::Error) -> Option<String> {
    if !e.is_connect() {
        return None;
    }
    let addr = e.url().map_or_else(
        || "the server".to_string(),
        |u| match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => u.to_string(),
        },
    );
    // the innermost cause says it best ("Connection refused (os error 111)", a DNS failure …)
    let mut refused = false;
    let mut innermost = e.to_string();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        innermost = err.to_string();
        next = err.source();
    }
    Some(if refused {
        format!("connection refused by {addr} (is the server running, and listening there?)")
    } else {
        format!("cannot connect to {addr}: {innermost}")
    })
}

/// What a user can do about a TLS failure.
fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "if the server's certificate comes from a private CA, add --ca-cert FILE with that CA's certificate"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "renew the server's certificate (and check this machine's clock)"
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet: check this machine's clock"
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the certificate is for another name: use the host name it was issued for in the URL"
        }
        _ => "check the server's certificate (robusto -v shows more)",
    }
}

/// What the server announced in its OPTIONS answer.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// `Tus-Extension`, lowercase.
    pub extensions: Vec<String>,
    /// The checksum algorithm to use: md5 when offered, else sha1, else sha256, else none.
    pub checksum: Option<ChecksumAlgorithm>,
    /// `Tus-Max-Size`.
    pub max_size: Option<u64>,
}

impl Capabilities {
    /// Whether the server announced `extension`.
    pub fn has(&self, extension: Extension) -> bool {
        self.extensions.iter().any(|e| e == extension.name())
    }

    /// Parses the OPTIONS answer's headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let list = |name: &str| -> Vec<String> {
            header_str(headers, name)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let extensions = list(header::TUS_EXTENSION);
        let algorithms: Vec<ChecksumAlgorithm> = list(header::TUS_CHECKSUM_ALGORITHM)
            .iter()
            .filter_map(|a| ChecksumAlgorithm::parse(a).ok())
            .collect();
        let checksum = if extensions.iter().any(|e| e == Extension::Checksum.name()) {
            [
                ChecksumAlgorithm::Md5,
                ChecksumAlgorithm::Sha1,
                ChecksumAlgorithm::Sha256,
            ]
            .into_iter()
            .find(|a| algorithms.contains(a))
        } else {
            None
        };
        Capabilities {
            extensions,
            checksum,
            max_size: header_u64(headers, header::TUS_MAX_SIZE),
        }
    }
}

/// An upload's state as HEAD reports it.
#[derive(Clone, Debug, Default)]
pub struct UploadState {
    /// `Upload-Offset` (absent for an unfinished final upload).
    pub offset: Option<u64>,
    /// `Upload-Length` (absent while deferred).
    pub length: Option<u64>,
    /// `Upload-Metadata`, if the server returns it.
    pub metadata: Option<Metadata>,
    /// `Upload-Concat`, if any.
    pub concat: Option<String>,
    /// The bytes of the chunk in progress the server holds past the offset, and that chunk's
    /// checksum (`robusto-chunk-prefix`).
    pub held: Option<(u64, Checksum)>,
}

/// A creation request.
#[derive(Clone, Debug, Default)]
pub struct Creation {
    /// `Upload-Length`; `None` for a final concatenation (the server sums the partials).
    pub length: Option<u64>,
    /// `Upload-Metadata`.
    pub metadata: Metadata,
    /// `Upload-Concat` (`partial` or `final;URL URL…`).
    pub concat: Option<String>,
    /// The first bytes (creation-with-upload) and their checksum.
    pub body: Option<(Bytes, Option<Checksum>)>,
    /// `Upload-Defer-Length: 1` with `Want-Repr-Digest` in this algorithm: the length and the
    /// whole-file checksum come with a later PATCH (`robusto-repr-digest`).
    pub deferred: Option<ChecksumAlgorithm>,
}

/// A created upload.
#[derive(Clone, Debug)]
pub struct Created {
    /// The upload's absolute URL.
    pub url: Url,
    /// The offset after the creation request (bytes it carried that the server kept).
    pub offset: u64,
}

/// Time of the last sign of life of a request, for the stall watchdog, and the body bytes it
/// handed to the connection.
#[derive(Clone)]
struct Stamp {
    origin: Instant,
    millis: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl Stamp {
    fn new() -> Self {
        Stamp {
            origin: Instant::now(),
            millis: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn now_millis(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Marks progress, or a planned pause (throttling) lasting until `now + ahead`.
    fn touch(&self, ahead: Duration) {
        let t = self.now_millis() + ahead.as_millis() as u64;
        self.millis.fetch_max(t, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.now_millis().saturating_sub(self.millis.load(Ordering::Relaxed)))
    }
}

/// Settings of a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// No progress for this long fails a request (`--stall-timeout`).
    pub stall_timeout: Duration,
    /// Bearer token for `Authorization`.
    pub token: Option<String>,
    /// Certificate authorities trusted besides the system's (`--ca-cert`).
    pub roots: super::transport::ExtraRoots,
}

/// A tus client for one server.
#[derive(Clone)]
pub struct Session {
    client: reqwest::Client,
    config: SessionConfig,
    throttle: Option<Arc<Throttle>>,
    /// Body bytes handed to the connection, all requests together.
    wire_bytes: Arc<AtomicU64>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

/// What an answer that is not a success means for the caller; `sent_token`: whether the request
/// carried a token.
fn classify(status: StatusCode, message: String, sent_token: bool) -> SessionError {
    match status.as_u16() {
        401 | 403 => SessionError::Unauthorized { status, sent_token },
        protocol::STATUS_CHECKSUM_MISMATCH => SessionError::ChecksumMismatch,
        409 => SessionError::OffsetConflict,
        404 | 410 => SessionError::Gone(status),
        408 | 423 | 429 => SessionError::transient(format!("server answered {status}")),
        s if s >= 500 => SessionError::transient(format!("server answered {status} {message}")),
        _ => SessionError::Rejected { status, message },
    }
}

impl Session {
    /// A session; `throttle` paces every request body.
    pub fn new(config: SessionConfig, throttle: Option<Arc<Throttle>>) -> Result<Self, SessionError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("robusto/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.stall_timeout.min(Duration::from_secs(15)))
            // Servers commonly drop idle keep-alive connections after 5 s (node's default);
            // reusing one they just closed costs a retry.
            .pool_idle_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .tls_certs_merge(config.roots.certificates().iter().cloned())
            .build()
            .map_err(|e| SessionError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(Session {
            client,
            config,
            throttle,
            wire_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Body bytes handed to the network so far (retries included).
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes.load(Ordering::Relaxed)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, url)
            .header(header::TUS_RESUMABLE, protocol::TUS_VERSION);
        if let Some(token) = &self.config.token {
            rb = rb.bearer_auth(token);
        }
        rb
    }

    /// A streaming body over `data` that paces itself with the throttle and marks progress.
    fn body(&self, data: Bytes, stamp: &Stamp) -> reqwest::Body {
        let throttle = self.throttle.clone();
        let wire = self.wire_bytes.clone();
        let stamp = stamp.clone();
        let slice = if throttle.is_some() { SLICE } else { BIG_SLICE };
        let stream = futures_util::stream::unfold(data, move |mut rest| {
            let throttle = throttle.clone();
            let wire = wire.clone();
            let stamp = stamp.clone();
            async move {
                if rest.is_empty() {
                    return None;
                }
                let piece = rest.split_to(rest.len().min(slice));
                if let Some(t) = &throttle {
                    let wait = t.reserve(piece.len() as u64);
                    if !wait.is_zero() {
                        stamp.touch(wait);
                        tokio::time::sleep(wait).await;
                    }
                }
                stamp.touch(Duration::ZERO);
                stamp.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
                wire.fetch_add(piece.len() as u64, Ordering::Relaxed);
                Some((Ok::<Bytes, std::io::Error>(piece), rest))
            }
        });
        reqwest::Body::wrap_stream(stream)
    }

    /// Sends a request and waits for the answer's head, failing with a stall when neither side
    /// makes progress for the stall timeout.
    async fn send(&self, rb: reqwest::RequestBuilder, stamp: &Stamp) -> Result<reqwest::Response, SessionError> {
        stamp.touch(Duration::ZERO);
        let limit = self.config.stall_timeout;
        let watchdog = async {
            loop {
                let idle = stamp.idle();
                if idle >= limit {
                    return;
                }
                tokio::time::sleep((limit - idle).max(Duration::from_millis(50))).await;
            }
        };
        tokio::select! {
            r = rb.send() => r.map_err(SessionError::from_reqwest),
            _ = watchdog => Err(SessionError::transient(format!("stalled: no progress for {}s", limit.as_secs_f32()))),
        }
    }

    /// Reads a (short) response body, within the stall timeout.
    async fn text(&self, resp: reqwest::Response) -> String {
        match tokio::time::timeout(self.config.stall_timeout, resp.text()).await {
            Ok(Ok(t)) => t.chars().take(300).collect::<String>().trim().to_string(),
            _ => String::new(),
        }
    }

    async fn fail(&self, resp: reqwest::Response) -> SessionError {
        let status = resp.status();
        let message = self.text(resp).await;
        classify(status, message, self.config.token.is_some())
    }

    /// Like [`Self::fail`], for a request to the endpoint itself (`what` it should be): 404 and
    /// 405 say that the URL is not that endpoint.
    async fn fail_at_endpoint(&self, resp: reqwest::Response, method: Method, what: &'static str) -> SessionError {
        match resp.status() {
            status @ (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) => {
                SessionError::NotAnEndpoint { what, method, status }
            }
            _ => self.fail(resp).await,
        }
    }

    /// OPTIONS: what the server supports. A server that does not answer OPTIONS with
    /// `Tus-Version` is assumed to offer creation only.
    pub async fn discover(&self, endpoint: &Url) -> Result<Capabilities, SessionError> {
        let stamp = Stamp::new();
        let resp = self
            .send(self.request(Method::OPTIONS, endpoint.clone()), &stamp)
            .await?;
        let status = resp.status();
        if status.is_server_error() || matches!(status.as_u16(), 408 | 423 | 429) {
            return Err(self.fail(resp).await);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.fail(resp).await);
        }
        if !status.is_success() || resp.headers().get(header::TUS_VERSION).is_none() {
            tracing::debug!("OPTIONS {endpoint} answered {status} without Tus-Version; assuming creation only");
            return Ok(Capabilities {
                extensions: vec!["creation".into()],
                ..Capabilities::default()
            });
        }
        Ok(Capabilities::from_headers(resp.headers()))
    }

    /// POST: creates an upload (partial, final or plain), optionally with its first bytes.
    pub async fn create(&self, endpoint: &Url, creation: Creation) -> Result<Created, SessionError> {
        let stamp = Stamp::new();
        let final_upload = creation.concat.as_deref().is_some_and(|c| c.starts_with("final"));
        let mut rb = self.request(Method::POST, endpoint.clone());
        if let Some(len) = creation.length {
            rb = rb.header(header::UPLOAD_LENGTH, len);
        }
        if let Some(alg) = creation.deferred {
            rb = rb
                .header(header::UPLOAD_DEFER_LENGTH, "1")
                .header(header::WANT_REPR_DIGEST, protocol::want_repr_digest(alg));
        }
        if !creation.metadata.0.is_empty() {
            rb = rb.header(header::UPLOAD_METADATA, creation.metadata.to_header());
        }
        if let Some(concat) = &creation.concat {
            rb = rb.header(header::UPLOAD_CONCAT, concat);
        }
        if let Some((data, checksum)) = creation.body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, protocol::OFFSET_OCTET_STREAM)
                .header(reqwest::header::CONTENT_LENGTH, data.len());
            if let Some(c) = checksum {
                rb = rb.header(header::UPLOAD_CHECKSUM, c.to_header());
            }
            rb = rb.body(self.body(data, &stamp));
        }
        let resp = self.send(rb, &stamp).await?;
        if resp.status() != StatusCode::CREATED {
            // a final upload may be refused for its parts: that is no fault of the endpoint
            if final_upload {
                return Err(self.fail(resp).await);
            }
            return Err(self.fail_at_endpoint(resp, Method::POST, "tus upload endpoint").await);
        }
        let location = header_str(resp.headers(), "location")
            .ok_or_else(|| SessionError::Protocol("201 Created without Location".into()))?;
        let url = endpoint
            .join(location)
            .map_err(|e| SessionError::Protocol(format!("Location '{location}' is not a URL: {e}")))?;
        let offset = header_u64(resp.headers(), header::UPLOAD_OFFSET).unwrap_or(0);
        Ok(Created { url, offset })
    }

    /// HEAD: the server's offset (and length, metadata) of an upload.
    pub async fn head(&self, url: &Url) -> Result<UploadState, SessionError> {
        let stamp = Stamp::new();
        let resp = self.send(self.request(Method::HEAD, url.clone()), &stamp).await?;
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        let h = resp.headers();
        Ok(UploadState {
            offset: header_u64(h, header::UPLOAD_OFFSET),
            length: header_u64(h, header::UPLOAD_LENGTH),
            metadata: header_str(h, header::UPLOAD_METADATA).and_then(|m| Metadata::parse(m).ok()),
            concat: header_str(h, header::UPLOAD_CONCAT).map(str::to_string),
            held: header_u64(h, header::CHUNK_PREFIX)
                .filter(|&n| n > 0)
                .zip(header_str(h, header::CHUNK_CHECKSUM).and_then(|c| Checksum::parse(c).ok())),
        })
    }

    /// PATCH: appends `data` at `offset`; returns the server's new offset. With `prefix` > 0,
    /// `data` is the rest of a chunk whose first `prefix` bytes the server holds, and
    /// `checksum` is the whole chunk's (`robusto-chunk-prefix`). `end` gives a deferred upload
    /// its length and whole-file checksum (`Upload-Length`, `Repr-Digest`).
    pub async fn patch(
        &self,
        url: &Url,
        offset: u64,
        data: Bytes,
        checksum: Option<&Checksum>,
        prefix: u64,
        end: Option<(u64, &Checksum)>,
    ) -> Result<u64, SessionError> {
        let stamp = Stamp::new();
        let mut rb = self
            .request(Method::PATCH, url.clone())
            .header(reqwest::header::CONTENT_TYPE, protocol::OFFSET_OCTET_STREAM)
            .header(reqwest::header::CONTENT_LENGTH, data.len())
            .header(header::UPLOAD_OFFSET, offset);
        if let Some(c) = checksum {
            rb = rb.header(header::UPLOAD_CHECKSUM, c.to_header());
        }
        if prefix > 0 {
            rb = rb.header(header::CHUNK_PREFIX, prefix);
        }
        if let Some((length, whole)) = end {
            rb = rb
                .header(header::UPLOAD_LENGTH, length)
                .header(header::REPR_DIGEST, whole.to_repr_digest());
        }
        let rb = rb.body(self.body(data, &stamp));
        let resp = match self.send(rb, &stamp).await {
            Err(e @ SessionError::Transient(_)) if stamp.sent() > 0 => {
                return Err(SessionError::Cut {
                    sent: stamp.sent(),
                    reason: e.reason(),
                });
            }
            other => other?,
        };
        if !resp.status().is_success() {
            return Err(self.fail(resp).await);
        }
        header_u64(resp.headers(), header::UPLOAD_OFFSET)
            .ok_or_else(|| SessionError::Protocol(format!("PATCH answered {} without Upload-Offset", resp.status())))
    }

    /// DELETE (termination extension).
    pub async fn terminate(&self, url: &Url) -> Result<(), SessionError> {
        let stamp = Stamp::new();
        let resp = self.send(self.request(Method::DELETE, url.clone()), &stamp).await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.fail(resp).await)
        }
    }

    /// `GET {url}/status` of a robusto server; `Ok(None)` when the server has no such endpoint.
    pub async fn status(&self, url: &Url) -> Result<Option<StatusReport>, SessionError> {
        let mut status_url = url.clone();
        let path = format!("{}/status", status_url.path().trim_end_matches('/'));
        status_url.set_path(&path);
        let stamp = Stamp::new();
        let resp = self.send(self.request(Method::GET, status_url), &stamp).await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let body = self.text(resp).await;
        Ok(serde_json::from_str(&body).ok())
    }

    /// GET of a byte range `from..` of a completed upload; the caller streams the body.
    /// Returns the response (200 for the whole file, 206 for the range asked).
    pub async fn get_from(&self, url: &Url, from: u64) -> Result<reqwest::Response, SessionError> {
        let stamp = Stamp::new();
        let mut rb = self.request(Method::GET, url.clone());
        if from > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = self.send(rb, &stamp).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(resp),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(SessionError::Rejected {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                message: format!("bytes from {from} are past the end"),
            }),
            _ => Err(self.fail(resp).await),
        }
    }

    /// `GET {endpoint}` of a robusto server: the completed uploads this token may see.
    pub async fn list(&self, endpoint: &Url) -> Result<Vec<protocol::Listed>, SessionError> {
        let stamp = Stamp::new();
        let resp = self.send(self.request(Method::GET, endpoint.clone()), &stamp).await?;
        if !resp.status().is_success() {
            return Err(self
                .fail_at_endpoint(resp, Method::GET, "robusto upload endpoint")
                .await);
        }
        let body = tokio::time::timeout(self.config.stall_timeout, resp.bytes())
            .await
            .map_err(|_| SessionError::transient("stalled reading the listing"))?
            .map_err(SessionError::from_reqwest)?;
        serde_json::from_slice(&body).map_err(|e| SessionError::Rejected {
            status: StatusCode::OK,
            message: format!("not a robusto listing (is this a robusto server?): {e}"),
        })
    }

    /// The stall timeout in force.
    pub fn stall_timeout(&self) -> Duration {
        self.config.stall_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn capabilities_pick_md5_then_fall_back() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TUS_EXTENSION,
            HeaderValue::from_static("creation, checksum,concatenation"),
        );
        h.insert(header::TUS_CHECKSUM_ALGORITHM, HeaderValue::from_static("sha1,md5"));
        let c = Capabilities::from_headers(&h);
        use crate::protocol::Extension;
        assert!(c.has(Extension::Concatenation) && c.has(Extension::Checksum) && !c.has(Extension::Termination));
        assert_eq!(c.checksum, Some(ChecksumAlgorithm::Md5));
        h.insert(header::TUS_CHECKSUM_ALGORITHM, HeaderValue::from_static("sha256,crc32"));
        assert_eq!(Capabilities::from_headers(&h).checksum, Some(ChecksumAlgorithm::Sha256));
        h.insert(header::TUS_EXTENSION, HeaderValue::from_static("creation"));
        assert_eq!(
            Capabilities::from_headers(&h).checksum,
            None,
            "no checksum extension, no header"
        );
    }

    #[test]
    fn statuses_map_to_what_the_caller_does() {
        assert!(matches!(
            classify(StatusCode::from_u16(460).unwrap(), String::new(), false),
            SessionError::ChecksumMismatch
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, String::new(), false),
            SessionError::OffsetConflict
        ));
        assert!(matches!(
            classify(StatusCode::GONE, String::new(), false),
            SessionError::Gone(_)
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, String::new(), false),
            SessionError::Transient(_)
        ));
        assert!(matches!(
            classify(StatusCode::LOCKED, String::new(), false),
            SessionError::Transient(_)
        ));
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, String::new(), false),
            SessionError::Rejected { .. }
        ));
        let no_token = classify(StatusCode::UNAUTHORIZED, String::new(), false);
        assert!(!no_token.is_transient());
        assert_eq!(
            no_token.to_string(),
            "the server wants a token (401 Unauthorized): pass it with --token-file FILE or $ROBUSTO_TOKEN"
        );
        assert_eq!(
            classify(StatusCode::FORBIDDEN, String::new(), true).to_string(),
            "the server refused the token (403 Forbidden): check the one in --token-file FILE or $ROBUSTO_TOKEN"
        );
    }
}
