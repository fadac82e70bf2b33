//! What an operator sees of `robusto serve`: every 5xx logged once with the upload id.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt as _;
use robusto::protocol::{self, header};
use robusto::serve::store::memory::MemoryStore;
use robusto::serve::store::{Append, Appended, BodyStream, ByteStream, Store, StoreError, StoreResult, UploadInfo};
use robusto::serve::{AppState, Config, router};
use tower::ServiceExt as _;

/// A memory store whose appends fail with the error `fail` makes.
struct Failing {
    inner: MemoryStore,
    fail: fn() -> StoreError,
}

impl Store for Failing {
    fn create(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.create(info)
    }
    fn info<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        self.inner.info(id)
    }
    fn update(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.update(info)
    }
    fn append<'a>(&'a self, _: &'a str, _: Append, _: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        futures_util::future::ready(Err((self.fail)())).boxed()
    }
    fn concatenate<'a>(
        &'a self,
        info: UploadInfo,
        parts: &'a [String],
        running: Option<robusto::serve::digest::DigestFeed>,
    ) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        self.inner.concatenate(info, parts, running)
    }
    fn link<'a>(&'a self, part: &'a str, final_id: &'a str, base: u64) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        self.inner.link(part, final_id, base)
    }
    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        self.inner.read(id, range)
    }
    fn publish<'a>(&'a self, id: &'a str, name: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        self.inner.publish(id, name)
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.inner.delete(id)
    }
    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.inner.expire(id)
    }
    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        self.inner.list()
    }
}

/// What the server logs, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Sends `req` to a router over a store whose appends fail with `fail`; returns the status,
/// the answer's body and the lines logged at warn and above.
async fn failing(
    fail: fn() -> StoreError,
    req: impl FnOnce(&str) -> axum::http::Request<Body>,
) -> (u16, String, Vec<String>) {
    let store = Arc::new(Failing {
        inner: MemoryStore::new(),
        fail,
    });
    let state = AppState::with_store(Config::new("/nonexistent".into()), store);
    let app = router(state.clone());
    let info = UploadInfo::new("0123456789abcdef0123456789abcdef".into(), Some(5), 0);
    state.store.create(info).await.unwrap();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let r = app.oneshot(req("0123456789abcdef0123456789abcdef")).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let lines = logs.text().lines().map(str::to_string).collect();
    (status, String::from_utf8_lossy(&body).into_owned(), lines)
}

fn patch_request(id: &str) -> axum::http::Request<Body> {
    axum::http::Request::patch(format!("/files/{id}"))
        .header(header::TUS_RESUMABLE, "1.0.0")
        .header(header::UPLOAD_OFFSET, "0")
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .body(Body::from("hello"))
        .unwrap()
}

#[tokio::test]
async fn a_500_is_logged_once_with_the_id_and_its_detail_which_the_client_never_sees() {
    let id = "0123456789abcdef0123456789abcdef";
    let io = || StoreError::Io(std::io::Error::other("/secret/disk/path broke"));
    let (status, body, lines) = failing(io, patch_request).await;
    assert_eq!(status, 500);
    assert_eq!(body, "internal server error\n");
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    let line = &lines[0];
    for part in [
        "ERROR",
        &format!("id={id}"),
        "method=PATCH",
        "status=500",
        "/secret/disk/path broke",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
}

#[tokio::test]
async fn a_507_is_logged_once_at_warn_with_the_id_even_when_the_path_names_none() {
    // A PATCH: the id is in the path.
    let (status, _, lines) = failing(|| StoreError::DiskFull, patch_request).await;
    assert_eq!(status, 507);
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    let id = "0123456789abcdef0123456789abcdef";
    for part in [" WARN", &format!("id={id}"), "method=PATCH", "status=507"] {
        assert!(lines[0].contains(part), "{part:?} not in {}", lines[0]);
    }
    // Creation with data: the upload exists when the disk turns out full; its id is logged.
    let create = |_: &str| {
        axum::http::Request::post("/files/")
            .header(header::TUS_RESUMABLE, "1.0.0")
            .header(header::UPLOAD_LENGTH, "5")
            .header("content-type", protocol::OFFSET_OCTET_STREAM)
            .body(Body::from("hello"))
            .unwrap()
    };
    let (status, _, lines) = failing(|| StoreError::DiskFull, create).await;
    assert_eq!(status, 507);
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    let line = &lines[0];
    assert!(line.contains("method=POST") && line.contains("status=507"), "{line}");
    let logged = line
        .split("id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("");
    assert!(robusto::serve::uploads::is_valid_id(logged) && logged != id, "{line}");
}
