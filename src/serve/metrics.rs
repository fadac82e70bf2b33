//! What the server counts, for Prometheus: `robusto serve --metrics ADDR` answers `GET /metrics`
//! on a listener of its own (the tus port never shows them) in the Prometheus text format.
//!
//! Every metric is updated where its event happens, in [`super::uploads`]:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `robusto_uploads_in_flight` | gauge | request bodies (PATCH, POST with data) being received now |
//! | `robusto_received_bytes_total` | counter | body bytes read, whether kept or refused |
//! | `robusto_committed_bytes_total` | counter | bytes committed (the offsets' advance) |
//! | `robusto_chunks_refused_total` | counter | chunks refused with 460 (`Upload-Checksum` mismatch) |
//! | `robusto_uploads_created_total{kind}` | counter | uploads created |
//! | `robusto_uploads_completed_total{kind}` | counter | uploads complete (and, but for parts, published) |
//! | `robusto_uploads_failed_total{kind}` | counter | uploads whose whole-file checksum did not match |
//! | `robusto_uploads_expired_total` | counter | unfinished uploads expired by the sweeper |
//! | `robusto_append_commit_seconds` | histogram | from a body's last byte to its commit: check, fsync, offset recorded |
//!
//! `kind` is `single`, `partial` or `final` (concatenation): one file sent in parallel creates
//! its parts and one final upload.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt as _};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::store::{BodyError, BodyStream, UploadInfo};

/// The label set of the per-kind upload counters: `[("kind", …)]`.
type KindLabel = [(&'static str, &'static str); 1];

/// Upper bounds of the commit latency buckets, in seconds: 1 ms to 10 s.
const COMMIT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The server's metrics (one set per [`super::AppState`]) and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    in_flight: Gauge,
    received_bytes: Counter,
    committed_bytes: Counter,
    chunks_refused: Counter,
    created: Family<KindLabel, Counter>,
    completed: Family<KindLabel, Counter>,
    failed: Family<KindLabel, Counter>,
    expired: Counter,
    commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The values of the `kind` label.
const KINDS: [&str; 3] = ["single", "partial", "final"];

/// `single`, `partial` or `final`: the `kind` label of an upload.
fn kind(info: &UploadInfo) -> KindLabel {
    let kind = if info.is_partial() {
        "partial"
    } else if info.is_final() {
        "final"
    } else {
        "single"
    };
    [("kind", kind)]
}

impl Metrics {
    /// Every metric at zero, registered under the `robusto_` prefix.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("robusto"),
            in_flight: Gauge::default(),
            received_bytes: Counter::default(),
            committed_bytes: Counter::default(),
            chunks_refused: Counter::default(),
            created: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            expired: Counter::default(),
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
        };
        // Every series from the start, at zero: a rate over one that appears later misses its
        // first count.
        for family in [&m.created, &m.completed, &m.failed] {
            for k in KINDS {
                drop(family.get_or_create(&[("kind", k)]));
            }
        }
        let r = &mut m.registry;
        r.register(
            "uploads_in_flight",
            "Request bodies (PATCH, or POST with data) being received now",
            m.in_flight.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes of request bodies read, whether committed or refused",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        r.register_with_unit(
            "committed",
            "Bytes committed to uploads (the advance of their offsets)",
            Unit::Bytes,
            m.committed_bytes.clone(),
        );
        r.register(
            "chunks_refused",
            "Chunks refused with 460 because they did not match their Upload-Checksum",
            m.chunks_refused.clone(),
        );
        r.register(
            "uploads_created",
            "Uploads created, by kind (single, partial, final)",
            m.created.clone(),
        );
        r.register(
            "uploads_completed",
            "Uploads complete (published, but for partial uploads), by kind",
            m.completed.clone(),
        );
        r.register(
            "uploads_failed",
            "Uploads whose whole-file checksum did not match (status error), by kind",
            m.failed.clone(),
        );
        r.register(
            "uploads_expired",
            "Unfinished uploads expired by the sweeper",
            m.expired.clone(),
        );
        r.register_with_unit(
            "append_commit",
            "Time from a request body's last byte to its commit (checksum check, fsync, offset recorded)",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        m
    }

    /// All metrics in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Counts a request body as being received until the returned guard is dropped.
    pub(crate) fn receiving(&self) -> Receiving {
        self.in_flight.inc();
        Receiving(self.in_flight.clone())
    }

    /// Counts the bytes of `body` as they are read and notes when it ends (its last byte, or
    /// its cut), for [`Metrics::committed`].
    pub(crate) fn meter(&self, body: BodyStream) -> (BodyStream, BodyEnd) {
        let end = BodyEnd::default();
        let metered = Metered {
            inner: body,
            received: self.received_bytes.clone(),
            end: end.clone(),
        };
        (metered.boxed(), end)
    }

    /// An append committed `bytes` (or held a cut chunk's first bytes, with `bytes` 0): the
    /// time since its body ended is the commit latency.
    pub(crate) fn committed(&self, bytes: u64, end: &BodyEnd) {
        self.committed_bytes.inc_by(bytes);
        if let Some(at) = end.0.get() {
            self.commit_seconds.observe(at.elapsed().as_secs_f64());
        }
    }

    /// A chunk was refused with 460.
    pub(crate) fn chunk_refused(&self) {
        self.chunks_refused.inc();
    }

    /// An upload was created.
    pub(crate) fn created(&self, info: &UploadInfo) {
        self.created.get_or_create(&kind(info)).inc();
    }

    /// An upload completed.
    pub(crate) fn completed(&self, info: &UploadInfo) {
        self.completed.get_or_create(&kind(info)).inc();
    }

    /// An upload failed its whole-file check.
    pub(crate) fn failed(&self, info: &UploadInfo) {
        self.failed.get_or_create(&kind(info)).inc();
    }

    /// An unfinished upload expired.
    pub(crate) fn expired(&self) {
        self.expired.inc();
    }
}

/// Keeps one request body counted in `robusto_uploads_in_flight` while alive.
pub(crate) struct Receiving(Gauge);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// When a metered body ended, once it has.
#[derive(Clone, Default)]
pub(crate) struct BodyEnd(Arc<OnceLock<Instant>>);

/// A request body that counts its bytes into `robusto_received_bytes_total`.
struct Metered {
    inner: BodyStream,
    received: Counter,
    end: BodyEnd,
}

impl Stream for Metered {
    type Item = Result<bytes::Bytes, BodyError>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) => {
                self.received.inc_by(bytes.len() as u64);
            }
            Poll::Ready(Some(Err(_)) | None) => {
                let _ = self.end.0.set(Instant::now());
            }
            Poll::Pending => {}
        }
        next
    }
}

/// The metrics listener's application: `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => {
            let mut r = text.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            r
        }
        Err(e) => {
            tracing::error!("the metrics could not be encoded: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds_as_documented() {
        let m = Metrics::new();
        let mut info = UploadInfo::new("a".repeat(32), Some(3), 0);
        m.created(&info);
        info.concat = Some(crate::protocol::Concat::Partial);
        m.created(&info);
        m.chunk_refused();
        m.committed(3, &BodyEnd::default());
        let text = m.encode().unwrap();
        for line in [
            "robusto_uploads_in_flight 0",
            "robusto_received_bytes_total 0",
            "robusto_committed_bytes_total 3",
            "robusto_chunks_refused_total 1",
            "robusto_uploads_created_total{kind=\"single\"} 1",
            "robusto_uploads_created_total{kind=\"partial\"} 1",
            "robusto_uploads_created_total{kind=\"final\"} 0",
            "robusto_uploads_completed_total{kind=\"single\"} 0",
            "robusto_uploads_failed_total{kind=\"final\"} 0",
            "robusto_uploads_expired_total 0",
            "robusto_append_commit_seconds_bucket{le=\"0.001\"} 0",
            "robusto_append_commit_seconds_bucket{le=\"10\"} 0",
            "robusto_append_commit_seconds_count 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }
}
