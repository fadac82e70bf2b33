//! What an operator sees of `robusto serve`: the Prometheus metrics on their own listener
//! (exact counts after uploads with refused chunks, a failed whole-file check, a parallel
//! upload, a body in flight; the binary's `--metrics`), and every 5xx logged once with the
//! upload id.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::ops::Range;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt as _;
use reqwest::Method;
use robusto::protocol::{self, header};
use robusto::serve::store::memory::MemoryStore;
use robusto::serve::store::{Append, Appended, BodyStream, ByteStream, Store, StoreError, StoreResult, UploadInfo};
use robusto::serve::{AppState, Config, router};
use tower::ServiceExt as _;

use crate::serve_env::{Server, bytes, hv, md5_header, metadata};

/// Serves `state`'s metrics on 127.0.0.1:0; returns the scrape URL.
async fn metrics_of(state: &AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(robusto::serve::run_metrics(listener, state.clone()));
    url
}

/// One scrape: every sample by its name with labels (`name{labels}`).
async fn scrape(url: &str) -> HashMap<String, f64> {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hv(&r, "content-type"), "text/plain; version=0.0.4; charset=utf-8");
    parse(&r.text().await.unwrap())
}

fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn get(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:?}"))
}

/// Asserts exact values of the named samples.
fn assert_samples(samples: &HashMap<String, f64>, want: &[(&str, f64)]) {
    for (name, value) in want {
        assert_eq!(get(samples, name), *value, "{name}");
    }
}

#[tokio::test]
async fn an_upload_with_one_refused_chunk_is_counted_exactly() {
    let s = Server::start(|_| {}).await;
    let url = metrics_of(&s.state).await;
    let c = s.client();
    const CHUNK: usize = 1000;
    let data = bytes(3 * CHUNK + 17, 7);
    let meta = metadata(&[("filename", "m.bin"), ("checksum", &md5_header(&data))]);
    let loc = c.create(data.len() as u64, &meta).await;
    let before = scrape(&url).await;
    assert_samples(
        &before,
        &[
            ("robusto_uploads_created_total{kind=\"single\"}", 1.0),
            ("robusto_received_bytes_total", 0.0),
            ("robusto_append_commit_seconds_count", 0.0),
        ],
    );
    let mut chunks = 0;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let offset = (i * CHUNK) as u64;
        if i == 1 {
            // A bit flipped on the way: refused, the offset stays put.
            let mut bad = chunk.to_vec();
            bad[10] ^= 1;
            let r = c.patch(&loc, offset, &bad, Some(&md5_header(chunk))).await;
            assert_eq!(r.status().as_u16(), protocol::STATUS_CHECKSUM_MISMATCH);
        }
        let r = c.patch(&loc, offset, chunk, Some(&md5_header(chunk))).await;
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        chunks += 1;
    }
    assert_eq!(std::fs::read(s.data().join("files/m.bin")).unwrap(), data);
    let m = scrape(&url).await;
    let total = data.len() as f64;
    assert_samples(
        &m,
        &[
            ("robusto_uploads_in_flight", 0.0),
            ("robusto_received_bytes_total", total + CHUNK as f64),
            ("robusto_committed_bytes_total", total),
            ("robusto_chunks_refused_total", 1.0),
            ("robusto_uploads_created_total{kind=\"single\"}", 1.0),
            ("robusto_uploads_completed_total{kind=\"single\"}", 1.0),
            ("robusto_uploads_failed_total{kind=\"single\"}", 0.0),
            ("robusto_uploads_created_total{kind=\"partial\"}", 0.0),
            ("robusto_uploads_expired_total", 0.0),
        ],
    );
    let count = get(&m, "robusto_append_commit_seconds_count");
    assert!(count >= chunks as f64, "{count} commits timed for {chunks} chunks");
    assert_eq!(get(&m, "robusto_append_commit_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(get(&m, "robusto_append_commit_seconds_bucket{le=\"0.001\"}") <= count);
    assert!(get(&m, "robusto_append_commit_seconds_sum") > 0.0);
}

#[tokio::test]
async fn a_failed_whole_file_check_and_a_parallel_upload_are_counted_by_kind() {
    let s = Server::start(|_| {}).await;
    let url = metrics_of(&s.state).await;
    let c = s.client();
    // The metadata's checksum is not the file's: 460 at the last byte, status error.
    let meta = metadata(&[("checksum", &md5_header(b"something else"))]);
    let loc = c.create(5, &meta).await;
    let r = c.patch(&loc, 0, b"hello", None).await;
    assert_eq!(r.status().as_u16(), protocol::STATUS_CHECKSUM_MISMATCH);

    // Two parts; a final upload created while the second is still empty (finished in the
    // background by its last byte), and one of the complete parts (finished at once).
    let mut parts = Vec::new();
    for part in [&b"hello"[..], b" world"] {
        let r = c
            .req(Method::POST, "/files/")
            .header(header::UPLOAD_LENGTH, part.len().to_string())
            .header(header::UPLOAD_CONCAT, "partial")
            .send()
            .await
            .unwrap();
        parts.push(hv(&r, "location"));
    }
    let final_of = |name: &str| {
        c.req(Method::POST, "/files/")
            .header(header::UPLOAD_CONCAT, format!("final;{}", parts.join(" ")))
            .header(
                header::UPLOAD_METADATA,
                metadata(&[("filename", name), ("checksum", &md5_header(b"hello world"))]),
            )
            .send()
    };
    assert_eq!(c.patch(&parts[0], 0, b"hello", None).await.status(), 204);
    let r = final_of("early.txt").await.unwrap();
    assert_eq!(r.status(), 201);
    let early = hv(&r, "location");
    assert_eq!(c.patch(&parts[1], 0, b" world", None).await.status(), 204);
    assert_eq!(
        c.offset(&early).await,
        11,
        "the HEAD waits for the final to be finished"
    );
    assert_eq!(final_of("hw.txt").await.unwrap().status(), 201);
    for name in ["early.txt", "hw.txt"] {
        assert_eq!(
            std::fs::read(s.data().join("files").join(name)).unwrap(),
            b"hello world"
        );
    }

    let m = scrape(&url).await;
    assert_samples(
        &m,
        &[
            ("robusto_uploads_created_total{kind=\"single\"}", 1.0),
            ("robusto_uploads_completed_total{kind=\"single\"}", 0.0),
            ("robusto_uploads_failed_total{kind=\"single\"}", 1.0),
            ("robusto_uploads_created_total{kind=\"partial\"}", 2.0),
            ("robusto_uploads_completed_total{kind=\"partial\"}", 2.0),
            ("robusto_uploads_created_total{kind=\"final\"}", 2.0),
            ("robusto_uploads_completed_total{kind=\"final\"}", 2.0),
            ("robusto_uploads_failed_total{kind=\"final\"}", 0.0),
            ("robusto_received_bytes_total", 16.0),
            ("robusto_committed_bytes_total", 16.0),
            // A whole-file mismatch is not a refused chunk.
            ("robusto_chunks_refused_total", 0.0),
        ],
    );
    assert!(get(&m, "robusto_append_commit_seconds_count") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_being_received_is_in_flight_and_its_bytes_count_as_they_arrive() {
    let s = Server::start(|_| {}).await;
    let url = metrics_of(&s.state).await;
    let c = s.client();
    let data = bytes(64 << 10, 3);
    let loc = c.create(2 * data.len() as u64, "").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
    let patch = c
        .req(Method::PATCH, &loc)
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .header(header::UPLOAD_OFFSET, "0")
        .body(body)
        .send();
    let patch = tokio::spawn(patch);
    tx.send(Ok(data.clone())).await.unwrap();
    // The first half is read before the second is sent: the PATCH is in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&url).await;
        if get(&m, "robusto_received_bytes_total") == data.len() as f64 {
            assert_eq!(get(&m, "robusto_uploads_in_flight"), 1.0);
            assert_eq!(get(&m, "robusto_committed_bytes_total"), 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bytes never counted: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(Ok(data.clone())).await.unwrap();
    drop(tx);
    let r = patch.await.unwrap().unwrap();
    assert_eq!(r.status(), 204);
    let m = scrape(&url).await;
    assert_samples(
        &m,
        &[
            ("robusto_uploads_in_flight", 0.0),
            ("robusto_received_bytes_total", 2.0 * data.len() as f64),
            ("robusto_committed_bytes_total", 2.0 * data.len() as f64),
            ("robusto_uploads_completed_total{kind=\"single\"}", 1.0),
            ("robusto_append_commit_seconds_count", 1.0),
        ],
    );
}

/// A stream of what `rx` receives.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[test]
fn the_binary_serves_metrics_on_its_own_listener_and_logs_where() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut base, mut metrics) = (None, None);
    while base.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("robusto serve exited before logging its URLs")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.split("/files/").next().map(str::to_string);
        }
        if let Some(rest) = line.split("metrics on ").nth(1) {
            metrics = Some(rest.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (base, metrics) = (base.unwrap(), metrics.unwrap());
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{metrics}"
    );
    assert_ne!(metrics, format!("{base}/metrics"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = crate::serve_env::Tus::new(&base);
        let loc = c.create(5, "").await;
        assert_eq!(c.patch(&loc, 0, b"hello", None).await.status(), 204);
        let m = scrape(&metrics).await;
        assert_samples(
            &m,
            &[
                ("robusto_uploads_created_total{kind=\"single\"}", 1.0),
                ("robusto_uploads_completed_total{kind=\"single\"}", 1.0),
                ("robusto_received_bytes_total", 5.0),
            ],
        );
        // The tus port does not show them.
        let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status(), 404);
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_metrics_address_in_use_stops_the_server_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_robusto"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", &addr, "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
}

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
