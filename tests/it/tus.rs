//! tus 1.0.0 conformance of `robusto serve`: status codes, headers and bytes on disk, over a real
//! socket (fs store) and with `oneshot` (memory store); plus the SIGKILL restart test.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use reqwest::Method;
use robusto::protocol::{self, header};
use robusto::serve::store::memory::MemoryStore;
use robusto::serve::{AppState, Config, router};
use tower::ServiceExt as _;

use crate::serve_env::{BinServer, Server, Tus, b64, bytes, hv, id_of, md5_header, metadata};

fn memory_app(tune: impl FnOnce(&mut Config)) -> (axum::Router, AppState) {
    let mut config = Config::new("/nonexistent".into());
    tune(&mut config);
    let state = AppState::with_store(config, Arc::new(MemoryStore::new()));
    (router(state.clone()), state)
}

async fn oneshot(
    app: &axum::Router,
    req: axum::http::Request<Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn options_announces_version_extensions_algorithms_and_max_size() {
    let (app, _) = memory_app(|c| c.max_size = Some(1 << 30));
    let req = axum::http::Request::options("/files/").body(Body::empty()).unwrap();
    let (status, h, _) = oneshot(&app, req).await;
    assert_eq!(status, 204);
    assert_eq!(h[header::TUS_VERSION], "1.0.0");
    assert_eq!(
        h[header::TUS_EXTENSION],
        "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation,concatenation-unfinished,robusto-chunk-prefix,robusto-repr-digest"
    );
    assert_eq!(h[header::TUS_CHECKSUM_ALGORITHM], "md5,sha1,sha256");
    assert_eq!(h[header::TUS_MAX_SIZE], "1073741824");
    assert_eq!(h[header::TUS_RESUMABLE], "1.0.0");
}

#[tokio::test]
async fn missing_or_unsupported_tus_resumable_is_412_with_tus_version_and_nothing_happens() {
    let (app, state) = memory_app(|_| {});
    for version in [None, Some("0.2.2")] {
        let mut req = axum::http::Request::post("/files/").header(header::UPLOAD_LENGTH, "5");
        if let Some(v) = version {
            req = req.header(header::TUS_RESUMABLE, v);
        }
        let (status, h, _) = oneshot(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!(status, 412);
        assert_eq!(h[header::TUS_VERSION], "1.0.0");
    }
    assert!(
        state.store.list().await.unwrap().is_empty(),
        "the request was not processed"
    );
}

#[tokio::test]
async fn a_patch_body_larger_than_2_mib_streams_through_the_router() {
    let (app, state) = memory_app(|_| {});
    let data = bytes(3 << 20, 1);
    let req = axum::http::Request::post("/files/")
        .header(header::TUS_RESUMABLE, "1.0.0")
        .header(header::UPLOAD_LENGTH, data.len().to_string())
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = oneshot(&app, req).await;
    assert_eq!(status, 201);
    let loc = h["location"].to_str().unwrap().to_string();
    let req = axum::http::Request::patch(&loc)
        .header(header::TUS_RESUMABLE, "1.0.0")
        .header(header::UPLOAD_OFFSET, "0")
        .header(header::UPLOAD_CHECKSUM, md5_header(&data))
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .body(Body::from(data.clone()))
        .unwrap();
    let (status, h, body) = oneshot(&app, req).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h[header::UPLOAD_OFFSET], data.len().to_string().as_str());
    let info = state.store.info(&id_of(&loc)).await.unwrap();
    assert_eq!(info.offset, data.len() as u64);
}

#[tokio::test]
async fn create_head_patch_publish_read_status() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let data = b"hello world";
    let meta = metadata(&[
        ("filename", "greeting.txt"),
        ("checksum", &md5_header(data)),
        ("chunk-size", "5"),
    ]);
    let r = c.post(11, &meta).await;
    assert_eq!(r.status(), 201);
    assert!(!hv(&r, header::UPLOAD_EXPIRES).is_empty(), "Upload-Expires at creation");
    let loc = hv(&r, "location");
    assert!(loc.starts_with("/files/") && id_of(&loc).len() == 32, "{loc}");
    assert_eq!(c.status(&loc).await, serde_json::json!({"status": "new", "value": ""}));

    let r = c.head(&loc).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "0");
    assert_eq!(hv(&r, header::UPLOAD_LENGTH), "11");
    assert_eq!(hv(&r, header::UPLOAD_METADATA), meta);
    assert_eq!(hv(&r, "cache-control"), "no-store");
    assert_eq!(hv(&r, header::TUS_RESUMABLE), "1.0.0");
    assert!(!hv(&r, header::UPLOAD_EXPIRES).is_empty());

    let r = c.patch(&loc, 0, b"hello", Some(&md5_header(b"hello"))).await;
    assert_eq!(r.status(), 204);
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "5");
    assert!(!hv(&r, header::UPLOAD_EXPIRES).is_empty());
    assert_eq!(c.status(&loc).await["value"], "0");
    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), 409, "an unfinished upload cannot be read");
    let r = c.patch(&loc, 5, b" world", Some(&md5_header(b" world"))).await;
    assert_eq!(r.status(), 204);
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "11");
    assert_eq!(hv(&r, header::UPLOAD_EXPIRES), "", "no expiry once complete");

    let r = c.head(&loc).await;
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "11");
    assert_eq!(std::fs::read(s.data().join("files/greeting.txt")).unwrap(), data);
    assert_eq!(std::fs::read(s.data().join("uploads").join(id_of(&loc))).unwrap(), data);
    let st = c.status(&loc).await;
    assert_eq!(st["status"], "complete");
    assert!(st["value"].as_str().unwrap().ends_with(&loc));

    let r = c.req(Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hv(&r, "content-length"), "11");
    assert_eq!(
        hv(&r, "etag"),
        format!("\"{}\"", robusto::fingerprint::Md5::of(data).hex())
    );
    assert_eq!(hv(&r, "content-md5"), robusto::fingerprint::Md5::of(data).base64());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
    let r = c
        .req(Method::GET, &loc)
        .header("range", "bytes=6-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(hv(&r, "content-range"), "bytes 6-10/11");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"world");
    let r = c
        .req(Method::GET, &loc)
        .header("range", "bytes=11-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
}

#[tokio::test]
async fn patch_errors_leave_the_upload_untouched() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let loc = c.create(10, "").await;
    let on_disk = || std::fs::read(s.data().join("uploads").join(id_of(&loc))).unwrap();

    let r = c
        .req(Method::PATCH, &loc)
        .header(header::UPLOAD_OFFSET, "0")
        .header("content-type", "application/octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = c
        .req(Method::PATCH, &loc)
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "Upload-Offset missing");
    assert_eq!(c.patch(&loc, 0, b"abc", Some("crc32 AAAAAA==")).await.status(), 400);
    assert_eq!(c.patch(&loc, 0, b"abc", Some("md5 notbase64!")).await.status(), 400);
    assert_eq!(c.patch(&loc, 3, b"abc", None).await.status(), 409);
    let r = c.patch(&loc, 0, b"abc", Some(&md5_header(b"abd"))).await;
    assert_eq!(r.status(), 460);
    assert!(r.text().await.unwrap().contains("checksum mismatch"));
    assert_eq!(c.offset(&loc).await, 0);
    assert!(on_disk().is_empty(), "a refused chunk leaves no byte");
    assert_eq!(
        c.patch(&loc, 0, b"01234567890", None).await.status(),
        413,
        "longer than the upload"
    );
    assert_eq!(c.offset(&loc).await, 0);

    let sha1 = robusto::protocol::Checksum {
        algorithm: robusto::protocol::ChecksumAlgorithm::Sha1,
        digest: {
            let mut h = robusto::protocol::ChecksumAlgorithm::Sha1.hasher();
            h.update(b"abc");
            h.finish()
        },
    };
    assert_eq!(c.patch(&loc, 0, b"abc", Some(&sha1.to_header())).await.status(), 204);
    let mut h = robusto::protocol::ChecksumAlgorithm::Sha256.hasher();
    h.update(b"def");
    let sha256 = format!("sha256 {}", b64(&h.finish()));
    assert_eq!(c.patch(&loc, 3, b"def", Some(&sha256)).await.status(), 204);
    assert_eq!(on_disk(), b"abcdef");

    let huge = metadata(&[("filename", &"x".repeat(20_000))]);
    assert_eq!(c.post(1, &huge).await.status(), 400, "metadata size limit");
    assert_eq!(c.post(1, "filename !!!").await.status(), 400, "metadata not base64");
    assert_eq!(c.post(1, &metadata(&[("checksum", "md5 short")])).await.status(), 400);

    let unknown = "/files/0123456789abcdef0123456789abcdef";
    assert_eq!(c.head(unknown).await.status(), 404);
    assert_eq!(c.patch(unknown, 0, b"x", None).await.status(), 404);
    assert_eq!(c.head("/files/..%2F..%2Fetc").await.status(), 404);
}

/// Sends a PATCH's headers and the first `send` bytes of a `len`-byte body, leaving the
/// connection open; the caller drops or keeps the stream.
fn start_patch(
    base: &str,
    loc: &str,
    offset: u64,
    len: usize,
    send: &[u8],
    checksum: Option<&str>,
) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {len}\r\n"
    );
    if let Some(c) = checksum {
        head.push_str(&format!("Upload-Checksum: {c}\r\n"));
    }
    head.push_str("\r\n");
    t.write_all(head.as_bytes()).unwrap();
    t.write_all(send).unwrap();
    t.flush().unwrap();
    t
}

/// Cuts the request body off (the client's write side closes) and returns the server's answer,
/// which it gives once it has dealt with the cut.
fn finish_cut(mut t: std::net::TcpStream) -> String {
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = t.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_body_keeps_nothing_with_a_checksum_and_what_arrived_without() {
    // With the chunk-prefix extension off, a checked chunk is all or nothing (plain tus).
    let s = Server::start(|c| c.keep_prefixes = false).await;
    let c = s.client();
    let data = bytes(100, 7);
    let options = c.req(Method::OPTIONS, "/files/").send().await.unwrap();
    assert!(!hv(&options, header::TUS_EXTENSION).contains("robusto-chunk-prefix"));

    let loc = c.create(100, "").await;
    let t = start_patch(&s.base, &loc, 0, 100, &data[..40], Some(&md5_header(&data)));
    let answer = finish_cut(t);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let head = c.head(&loc).await;
    assert_eq!(
        hv(&head, header::UPLOAD_OFFSET),
        "0",
        "a checksummed chunk cut off stores nothing"
    );
    assert_eq!(hv(&head, header::CHUNK_PREFIX), "");
    let file = s.data().join("uploads").join(id_of(&loc));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    assert_eq!(c.patch(&loc, 0, &data, Some(&md5_header(&data))).await.status(), 204);
    assert_eq!(std::fs::read(&file).unwrap(), data);

    let loc = c.create(100, "").await;
    let t = start_patch(&s.base, &loc, 0, 100, &data[..40], None);
    finish_cut(t);
    let offset = c.offset(&loc).await;
    assert_eq!(offset, 40, "without a checksum the bytes received are kept");
    assert_eq!(c.patch(&loc, 40, &data[40..], None).await.status(), 204);
    assert_eq!(std::fs::read(s.data().join("uploads").join(id_of(&loc))).unwrap(), data);
}

/// PATCH the rest of a chunk whose first `held` bytes the server holds.
async fn patch_rest(c: &Tus, loc: &str, offset: u64, held: u64, rest: &[u8], checksum: &str) -> reqwest::Response {
    c.req(Method::PATCH, loc)
        .header("content-type", "application/offset+octet-stream")
        .header(header::UPLOAD_OFFSET, offset.to_string())
        .header(header::CHUNK_PREFIX, held.to_string())
        .header(header::UPLOAD_CHECKSUM, checksum)
        .body(rest.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_checked_chunk_is_held_and_completed_with_only_its_rest() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let options = c.req(Method::OPTIONS, "/files/").send().await.unwrap();
    assert!(hv(&options, header::TUS_EXTENSION).ends_with(",robusto-chunk-prefix,robusto-repr-digest"));
    let data = bytes(300, 8);
    let meta = metadata(&[
        ("filename", "held.bin"),
        ("checksum", &md5_header(&data)),
        ("chunk-size", "100"),
    ]);
    let loc = c.create(300, &meta).await;
    assert_eq!(
        c.patch(&loc, 0, &data[..100], Some(&md5_header(&data[..100])))
            .await
            .status(),
        204
    );
    let chunk = &data[100..200];
    let sum = md5_header(chunk);

    let answer = finish_cut(start_patch(&s.base, &loc, 100, 100, &chunk[..30], Some(&sum)));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("holds 30 bytes"), "{answer}");
    let head = c.head(&loc).await;
    assert_eq!(hv(&head, header::UPLOAD_OFFSET), "100", "held bytes are never counted");
    assert_eq!(hv(&head, header::CHUNK_PREFIX), "30");
    assert_eq!(hv(&head, header::CHUNK_CHECKSUM), sum);
    assert_eq!(
        c.status(&loc).await["value"],
        "0",
        "status counts only whole checked chunks"
    );

    // What does not continue those bytes is refused and loses nothing.
    let r = patch_rest(&c, &loc, 100, 20, &chunk[20..], &sum).await;
    assert_eq!(r.status(), 409, "another length");
    let r = patch_rest(&c, &loc, 100, 30, &chunk[30..], &md5_header(b"another chunk")).await;
    assert_eq!(r.status(), 409, "another chunk");
    assert!(r.text().await.unwrap().contains("holds 30 bytes"));
    let r = c
        .req(Method::PATCH, &loc)
        .header("content-type", "application/offset+octet-stream")
        .header(header::UPLOAD_OFFSET, "100")
        .header(header::CHUNK_PREFIX, "30")
        .body(chunk[30..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a continuation needs the chunk's checksum");
    let r = patch_rest(&c, &loc, 100, 30, &[&data[130..], b"!"].concat(), &sum).await;
    assert_eq!(r.status(), 413, "longer than the upload's rest after the held bytes");
    assert_eq!(hv(&c.head(&loc).await, header::CHUNK_PREFIX), "30");

    // Cut again while continuing: the held bytes grow; then the rest completes the chunk.
    let answer = finish_cut({
        let addr = s.base.trim_start_matches("http://");
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 100\r\nRobusto-Chunk-Prefix: 30\r\nUpload-Checksum: {sum}\r\nContent-Length: 70\r\n\r\n"
        );
        t.write_all(head.as_bytes()).unwrap();
        t.write_all(&chunk[30..55]).unwrap();
        t
    });
    assert!(answer.contains("holds 55 bytes"), "{answer}");
    assert_eq!(hv(&c.head(&loc).await, header::CHUNK_PREFIX), "55");
    let r = patch_rest(&c, &loc, 100, 55, &chunk[55..], &sum).await;
    assert_eq!(r.status(), 204);
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "200");
    let head = c.head(&loc).await;
    assert_eq!(hv(&head, header::CHUNK_PREFIX), "", "nothing held once the chunk is in");

    // A chunk sent anew replaces held bytes.
    let last = &data[200..];
    finish_cut(start_patch(
        &s.base,
        &loc,
        200,
        100,
        &last[..10],
        Some(&md5_header(last)),
    ));
    assert_eq!(hv(&c.head(&loc).await, header::CHUNK_PREFIX), "10");
    let r = c.patch(&loc, 200, last, Some(&md5_header(last))).await;
    assert_eq!(r.status(), 204);
    assert_eq!(std::fs::read(s.data().join("files/held.bin")).unwrap(), data);
    assert_eq!(c.status(&loc).await["status"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_held_prefix_is_caught_when_the_chunk_completes() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let data = bytes(100, 11);
    let sum = md5_header(&data);
    let loc = c.create(100, "").await;
    let mut damaged = data[..40].to_vec();
    damaged[17] ^= 0x10; // one bit flipped on the way, before the cut
    finish_cut(start_patch(&s.base, &loc, 0, 100, &damaged, Some(&sum)));
    assert_eq!(hv(&c.head(&loc).await, header::CHUNK_PREFIX), "40");
    let r = patch_rest(&c, &loc, 0, 40, &data[40..], &sum).await;
    assert_eq!(r.status(), 460);
    let head = c.head(&loc).await;
    assert_eq!(hv(&head, header::UPLOAD_OFFSET), "0");
    assert_eq!(
        hv(&head, header::CHUNK_PREFIX),
        "",
        "a prefix that fails its check is dropped"
    );
    assert_eq!(c.patch(&loc, 0, &data, Some(&sum)).await.status(), 204);
    assert_eq!(std::fs::read(s.data().join("files").join(id_of(&loc))).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_survive_a_restart() {
    let s = Server::start(|_| {}).await;
    let data = bytes(1000, 12);
    let sum = md5_header(&data);
    let meta = metadata(&[("filename", "r.bin"), ("checksum", &sum)]);
    let loc = s.client().create(1000, &meta).await;
    finish_cut(start_patch(&s.base, &loc, 0, 1000, &data[..600], Some(&sum)));
    let s = s.restart().await;
    let c = s.client();
    let head = c.head(&loc).await;
    assert_eq!(
        (hv(&head, header::UPLOAD_OFFSET), hv(&head, header::CHUNK_PREFIX)),
        ("0".into(), "600".into())
    );
    let r = patch_rest(&c, &loc, 0, 600, &data[600..], &sum).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read(s.data().join("files/r.bin")).unwrap(), data);
    assert_eq!(c.status(&loc).await["status"], "complete");
}

/// Waits until the server holds the upload's lock (the stalled PATCH arrived).
async fn wait_busy(s: &Server, loc: &str) {
    for _ in 0..1000 {
        if s.state.uploads.is_busy(&id_of(loc)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the PATCH never reached the server");
}

/// Sends a PATCH of `body` in pieces of `piece` bytes, `every` apart, on a thread; returns its
/// answer's status line.
fn trickle_patch(
    base: &str,
    loc: &str,
    body: Vec<u8>,
    checksum: Option<String>,
    piece: usize,
    every: Duration,
) -> std::thread::JoinHandle<String> {
    let (base, loc) = (base.to_string(), loc.to_string());
    std::thread::spawn(move || {
        let addr = base.trim_start_matches("http://");
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        let mut head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(c) = &checksum {
            head.push_str(&format!("Upload-Checksum: {c}\r\n"));
        }
        head.push_str("\r\n");
        t.write_all(head.as_bytes()).unwrap();
        for p in body.chunks(piece) {
            std::thread::sleep(every);
            if t.write_all(p).is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        let _ = t.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_never_ends_a_patch_in_flight() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let data = bytes(1000, 3);
    let loc = c.create(1000, "").await;
    let patch = trickle_patch(
        &s.base,
        &loc,
        data.clone(),
        Some(md5_header(&data)),
        50,
        Duration::from_millis(250),
    );
    wait_busy(&s, &loc).await;
    let mut heads = 0;
    while !patch.is_finished() {
        let r = c.head(&loc).await;
        let offset = hv(&r, header::UPLOAD_OFFSET);
        assert_eq!(r.status(), 200);
        assert!(offset == "0" || offset == "1000", "{offset}");
        heads += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
        if heads > 200 {
            break;
        }
    }
    let answer = patch.join().unwrap();
    assert!(
        answer.contains("204"),
        "the PATCH completes despite {heads} HEADs: {answer}"
    );
    assert!(heads >= 3, "{heads}");
    assert_eq!(c.offset(&loc).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patch_waits_for_a_live_one_and_takes_over_only_a_stalled_one() {
    // The read timeout is an hour: only a takeover can free the lock.
    let s = Server::start(|c| c.read_timeout = Duration::from_secs(3600)).await;
    let c = s.client();
    // A PATCH still receiving bytes (one every 200 ms for 7 s) is not taken over: 423.
    let slow = bytes(35, 9);
    let loc = c.create(35, "").await;
    let live = trickle_patch(&s.base, &loc, slow.clone(), None, 1, Duration::from_millis(200));
    wait_busy(&s, &loc).await;
    let started = std::time::Instant::now();
    let r = c.patch(&loc, 0, &slow, None).await;
    assert_eq!(r.status(), 423, "{}", r.text().await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited first: {:?}",
        started.elapsed()
    );
    assert!(live.join().unwrap().contains("204"));
    assert_eq!(std::fs::read(s.data().join("files").join(id_of(&loc))).unwrap(), slow);

    // A PATCH that stopped sending is taken over once it has been silent for a while; it is
    // answered 409 (its client, if still there, asks for the offset).
    let data = bytes(1000, 3);
    let loc = c.create(1000, "").await;
    let mut stalled = start_patch(&s.base, &loc, 0, 1000, &data[..300], Some(&md5_header(&data)));
    wait_busy(&s, &loc).await;
    let started = std::time::Instant::now();
    let r = c.patch(&loc, 0, &data, Some(&md5_header(&data))).await;
    assert_eq!(r.status(), 204, "a new PATCH takes over: {}", r.text().await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert_eq!(c.offset(&loc).await, 1000);
}

#[tokio::test]
async fn whole_file_mismatch_is_460_error_status_and_not_published() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let meta = metadata(&[("filename", "bad.bin"), ("checksum", &md5_header(b"something else"))]);
    let loc = c.create(6, &meta).await;
    assert_eq!(c.patch(&loc, 0, b"abc", None).await.status(), 204);
    let r = c.patch(&loc, 3, b"def", Some(&md5_header(b"def"))).await;
    assert_eq!(r.status(), 460);
    assert!(r.text().await.unwrap().contains("whole-file checksum mismatch"));
    let st = c.status(&loc).await;
    assert_eq!(st["status"], "error");
    assert!(st["value"].as_str().unwrap().contains("mismatch"));
    assert_eq!(
        std::fs::read_dir(s.data().join("files")).unwrap().count(),
        0,
        "not published"
    );
    assert_eq!(c.head(&loc).await.status(), 410);
    assert_eq!(c.req(Method::GET, &loc).send().await.unwrap().status(), 409);
}

#[tokio::test]
async fn refused_chunks_do_not_spoil_the_whole_file_check() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let data = bytes(3 << 20, 4);
    let meta = metadata(&[("filename", "rb.bin"), ("checksum", &md5_header(&data))]);
    let loc = c.create(data.len() as u64, &meta).await;
    let (one, two, three) = (&data[..1 << 20], &data[1 << 20..2 << 20], &data[2 << 20..]);
    assert_eq!(c.patch(&loc, 0, one, Some(&md5_header(one))).await.status(), 204);
    // A damaged chunk (its bytes reach the digest before the mismatch is known) is refused…
    let mut bad = two.to_vec();
    bad[1000] ^= 1;
    assert_eq!(c.patch(&loc, 1 << 20, &bad, Some(&md5_header(two))).await.status(), 460);
    // … and so is a body longer than the upload.
    let mut long = two.to_vec();
    long.extend_from_slice(&data[..(2 << 20) + 1]);
    assert_eq!(c.patch(&loc, 1 << 20, &long, None).await.status(), 413);
    assert_eq!(c.offset(&loc).await, 1 << 20);
    assert_eq!(c.patch(&loc, 1 << 20, two, Some(&md5_header(two))).await.status(), 204);
    let r = c.patch(&loc, 2 << 20, three, Some(&md5_header(three))).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    assert_eq!(std::fs::read(s.data().join("files/rb.bin")).unwrap(), data);
    assert_eq!(c.status(&loc).await["status"], "complete");
}

#[tokio::test]
async fn whole_file_check_after_a_restart_rereads_the_file() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let data = bytes(5000, 9);
    let meta = metadata(&[("filename", "r.bin"), ("checksum", &md5_header(&data))]);
    let loc = c.create(5000, &meta).await;
    assert_eq!(c.patch(&loc, 0, &data[..2000], None).await.status(), 204);
    s.state.uploads.forget(&id_of(&loc)); // what a restart does to the running digest
    assert_eq!(c.patch(&loc, 2000, &data[2000..], None).await.status(), 204);
    assert_eq!(std::fs::read(s.data().join("files/r.bin")).unwrap(), data);
}

#[tokio::test]
async fn deferred_length_empty_uploads_and_max_size() {
    let s = Server::start(|c| c.max_size = Some(10)).await;
    let c = s.client();
    assert_eq!(c.post(11, "").await.status(), 413);
    let r = c.req(Method::POST, "/files/").send().await.unwrap();
    assert_eq!(r.status(), 400, "neither length nor deferral");
    let r = c
        .req(Method::POST, "/files/")
        .header(header::UPLOAD_DEFER_LENGTH, "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = c
        .req(Method::POST, "/files/")
        .header(header::UPLOAD_DEFER_LENGTH, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = hv(&r, "location");
    let r = c.head(&loc).await;
    assert_eq!(hv(&r, header::UPLOAD_DEFER_LENGTH), "1");
    assert_eq!(hv(&r, header::UPLOAD_LENGTH), "");
    assert_eq!(c.patch(&loc, 0, b"abc", None).await.status(), 204);
    let too_big = c
        .req(Method::PATCH, &loc)
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .header(header::UPLOAD_OFFSET, "3")
        .header(header::UPLOAD_LENGTH, "11")
        .body("d")
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let r = c
        .req(Method::PATCH, &loc)
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .header(header::UPLOAD_OFFSET, "3")
        .header(header::UPLOAD_LENGTH, "5")
        .body("de")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c.head(&loc).await;
    assert_eq!(hv(&r, header::UPLOAD_LENGTH), "5");
    assert_eq!(c.status(&loc).await["status"], "complete");

    let loc = c.create(0, &metadata(&[("filename", "empty")])).await;
    assert_eq!(c.status(&loc).await["status"], "complete");
    assert_eq!(std::fs::read(s.data().join("files/empty")).unwrap(), b"");
}

#[tokio::test]
async fn creation_with_upload_and_method_override() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let r = c
        .req(Method::POST, "/files/")
        .header(header::UPLOAD_LENGTH, "10")
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "5");
    let loc = hv(&r, "location");
    let r = c
        .req(Method::POST, &loc)
        .header(header::METHOD_OVERRIDE, "PATCH")
        .header("content-type", protocol::OFFSET_OCTET_STREAM)
        .header(header::UPLOAD_OFFSET, "5")
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        std::fs::read(s.data().join("files").join(id_of(&loc))).unwrap(),
        b"helloworld"
    );
    let r = c
        .req(Method::POST, &loc)
        .header(header::METHOD_OVERRIDE, "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn termination_frees_the_upload() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let loc = c.create(4, &metadata(&[("filename", "t.txt")])).await;
    assert_eq!(c.patch(&loc, 0, b"abcd", None).await.status(), 204);
    assert!(s.data().join("files/t.txt").exists());
    assert_eq!(c.req(Method::DELETE, &loc).send().await.unwrap().status(), 204);
    assert_eq!(c.head(&loc).await.status(), 404);
    assert_eq!(c.patch(&loc, 4, b"", None).await.status(), 404);
    assert!(!s.data().join("files/t.txt").exists());
    assert!(!s.data().join("uploads").join(id_of(&loc)).exists());
}

#[tokio::test]
async fn expired_uploads_answer_410_and_the_sweeper_frees_them() {
    let s = Server::start(|c| c.expire_after = Duration::ZERO).await;
    let c = s.client();
    let r = c.post(10, "").await;
    assert!(!hv(&r, header::UPLOAD_EXPIRES).is_empty());
    let loc = hv(&r, "location");
    assert_eq!(c.head(&loc).await.status(), 410);
    assert_eq!(c.patch(&loc, 0, b"x", None).await.status(), 410);

    let loc2 = c.create(10, "").await;
    robusto::serve::expiry::sweep(&s.state).await;
    for l in [&loc, &loc2] {
        assert!(!s.data().join("uploads").join(id_of(l)).exists(), "bytes freed");
    }
    assert_eq!(c.head(&loc2).await.status(), 410);
    assert_eq!(c.status(&loc2).await["status"], "error");
}

#[tokio::test]
async fn concatenation_of_partial_uploads() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let partial = |len: u64| {
        c.req(Method::POST, "/files/")
            .header(header::UPLOAD_LENGTH, len.to_string())
            .header(header::UPLOAD_CONCAT, "partial")
            .send()
    };
    let a = hv(&partial(5).await.unwrap(), "location");
    let b = hv(&partial(6).await.unwrap(), "location");
    assert_eq!(c.patch(&a, 0, b"hello", None).await.status(), 204);
    let final_of = |parts: String, meta: String| {
        c.req(Method::POST, "/files/")
            .header(header::UPLOAD_CONCAT, format!("final;{parts}"))
            .header(header::UPLOAD_METADATA, meta)
            .send()
    };
    let meta = metadata(&[("filename", "hw.txt"), ("checksum", &md5_header(b"hello world"))]);
    // b is not complete: the final upload waits for it (concatenation-unfinished).
    let early = metadata(&[("filename", "early.txt"), ("checksum", &md5_header(b"hello world"))]);
    let r = final_of(format!("{a} {b}"), early).await.unwrap();
    assert_eq!(r.status(), 201);
    let e = hv(&r, "location");
    let r = c.head(&e).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get(header::UPLOAD_OFFSET).is_none(),
        "no offset before it is finished"
    );
    assert_eq!(c.patch(&e, 0, b"", None).await.status(), 403);
    assert_eq!(c.patch(&b, 0, b" world", None).await.status(), 204);
    // The last part finishes the final upload (in the background: a HEAD waits for it).
    let r = c.head(&e).await;
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "11");
    assert_eq!(
        std::fs::read_dir(s.data().join("files")).unwrap().count(),
        1,
        "partials are not published, the final upload waiting for them is"
    );
    assert_eq!(std::fs::read(s.data().join("files/early.txt")).unwrap(), b"hello world");
    assert_eq!(c.status(&e).await["status"], "complete");
    let r = c.head(&a).await;
    assert_eq!(hv(&r, header::UPLOAD_CONCAT), "partial");
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "5");

    let concat = format!("{}{a} {b}", s.base); // an absolute and a relative URL
    let r = final_of(concat.clone(), meta).await.unwrap();
    assert_eq!(r.status(), 201);
    let f = hv(&r, "location");
    let r = c.head(&f).await;
    assert_eq!(hv(&r, header::UPLOAD_LENGTH), "11");
    assert_eq!(hv(&r, header::UPLOAD_OFFSET), "11");
    assert_eq!(hv(&r, header::UPLOAD_CONCAT), format!("final;{concat}"));
    assert_eq!(c.patch(&f, 11, b"", None).await.status(), 403);
    assert_eq!(std::fs::read(s.data().join("files/hw.txt")).unwrap(), b"hello world");
    let r = final_of(format!("{a} {b}"), metadata(&[("checksum", &md5_header(b"nope"))]))
        .await
        .unwrap();
    assert_eq!(r.status(), 460);
    let r = c
        .req(Method::POST, "/files/")
        .header(header::UPLOAD_CONCAT, format!("final;{a}"))
        .header(header::UPLOAD_LENGTH, "5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a final upload has no Upload-Length");
}

/// POST a partial upload of `len` bytes; its Location.
async fn partial(c: &Tus, len: usize) -> String {
    let r = c
        .req(Method::POST, "/files/")
        .header(header::UPLOAD_LENGTH, len.to_string())
        .header(header::UPLOAD_CONCAT, "partial")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    hv(&r, "location")
}

/// POST a final upload of `parts` with `meta`; the response.
async fn final_upload(c: &Tus, parts: &[&str], meta: &str) -> reqwest::Response {
    c.req(Method::POST, "/files/")
        .header(header::UPLOAD_CONCAT, format!("final;{}", parts.join(" ")))
        .header(header::UPLOAD_METADATA, meta)
        .send()
        .await
        .unwrap()
}

/// PATCHes `data` in chunks of `chunk` bytes from `from`, each with its MD5.
async fn patch_all(c: &Tus, loc: &str, data: &[u8], from: usize, chunk: usize) {
    let mut at = from;
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        let body = &data[at..end];
        let r = c.patch(loc, at as u64, body, Some(&md5_header(body))).await;
        assert_eq!(r.status(), 204, "PATCH {loc} at {at}");
        at = end;
    }
}

#[tokio::test]
async fn unfinished_concatenation_writes_parts_in_place_and_finishes_with_the_last() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let (a, b, d) = (bytes(3 << 20, 1), bytes((2 << 20) + 7, 2), bytes(1 << 20, 3));
    let whole = [a.clone(), b.clone(), d.clone()].concat();
    let (pa, pb, pd) = (
        partial(&c, a.len()).await,
        partial(&c, b.len()).await,
        partial(&c, d.len()).await,
    );
    // d has bytes before the final exists: it cannot be placed and is copied at the end.
    patch_all(&c, &pd, &d[..100_000], 0, 100_000).await;
    let meta = metadata(&[
        ("filename", "big.bin"),
        ("checksum", &md5_header(&whole)),
        ("chunk-size", "1048576"),
    ]);
    let r = final_upload(&c, &[&pa, &pb, &pd], &meta).await;
    assert_eq!(r.status(), 201);
    let f = hv(&r, "location");
    let uploads = s.data().join("uploads");
    assert!(!uploads.join(id_of(&pa)).exists(), "a writes into the final's file");
    assert!(uploads.join(id_of(&pd)).exists(), "d keeps its own file");
    let r = c.head(&f).await;
    assert_eq!(hv(&r, header::UPLOAD_LENGTH), whole.len().to_string());
    assert!(r.headers().get(header::UPLOAD_OFFSET).is_none());

    // Out of order, with a refused chunk in the middle of a placed part.
    patch_all(&c, &pb, &b, 0, 1 << 20).await;
    // Its status tells the chunks its parts hold (b holds 3 MiB..5 MiB + 7 of the file).
    let status = c.status(&f).await;
    assert_eq!(
        (status["status"].as_str(), status["value"].as_str()),
        (Some("partial"), Some("3,4"))
    );
    let r = c.patch(&pa, 0, &a[..1 << 20], Some(&md5_header(b"not this"))).await;
    assert_eq!(r.status(), 460);
    patch_all(&c, &pa, &a, 0, 1 << 20).await;
    assert_eq!(c.offset(&pa).await, a.len() as u64);
    assert_eq!(c.status(&pa).await["status"], "complete");
    assert_eq!(c.status(&f).await["value"], "0,1,2,3,4");
    assert!(
        c.head(&f).await.headers().get(header::UPLOAD_OFFSET).is_none(),
        "d is not complete"
    );
    assert!(!s.data().join("files/big.bin").exists());
    patch_all(&c, &pd, &d, 100_000, 300_000).await;
    assert_eq!(c.offset(&f).await, whole.len() as u64);
    assert_eq!(std::fs::read(s.data().join("files/big.bin")).unwrap(), whole);
    assert_eq!(c.status(&f).await["status"], "complete");
    let r = c.req(Method::GET, &f).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), whole.as_slice());

    // A final whose bytes do not match its checksum fails; its part's PATCH is still answered.
    let q = partial(&c, 1000).await;
    let r = final_upload(
        &c,
        &[&q],
        &metadata(&[("filename", "bad.bin"), ("checksum", &md5_header(b"x"))]),
    )
    .await;
    assert_eq!(r.status(), 201);
    let bad = hv(&r, "location");
    patch_all(&c, &q, &bytes(1000, 4), 0, 1000).await;
    assert_eq!(c.head(&bad).await.status(), 410);
    assert_eq!(c.status(&bad).await["status"], "error");
    assert!(!s.data().join("files/bad.bin").exists());

    // Parts named twice, or without a length, cannot join an unfinished concatenation.
    let r = final_upload(&c, &[&q, &q], "").await;
    assert_eq!(r.status(), 201, "complete parts may repeat");
    let r1 = partial(&c, 10).await;
    assert_eq!(final_upload(&c, &[&r1, &r1], "").await.status(), 400);
}

#[tokio::test]
async fn unfinished_concatenation_is_idempotent_and_never_loses_acknowledged_bytes() {
    let s = Server::start(|c| c.expire_after = Duration::from_secs(2)).await;
    let c = s.client();
    // The same final twice (a retry after a lost answer): one final upload, one published file.
    let (a, big) = (bytes(1000, 7), bytes((17 << 20) + 3, 8));
    let whole = [a.clone(), big.clone()].concat();
    let (pa, pb) = (partial(&c, a.len()).await, partial(&c, big.len()).await);
    let meta = metadata(&[("filename", "once.bin"), ("checksum", &md5_header(&whole))]);
    let f1 = hv(&final_upload(&c, &[&pa, &pb], &meta).await, "location");
    let f2 = hv(&final_upload(&c, &[&pa, &pb], &meta).await, "location");
    assert_eq!(f1, f2);
    patch_all(&c, &pa, &a, 0, 1000).await;
    // One PATCH larger than what the server keeps in memory for the digest: read back instead.
    patch_all(&c, &pb, &big, 0, big.len()).await;
    assert_eq!(c.offset(&f1).await, whole.len() as u64);
    assert_eq!(std::fs::read_dir(s.data().join("files")).unwrap().count(), 1);
    assert_eq!(std::fs::read(s.data().join("files/once.bin")).unwrap(), whole);

    // A second, different final of the same part: the part's appends wake the first one's
    // follower only; the second's follower finds the bytes by polling and finishes too.
    let t = partial(&c, 3000).await;
    let tb = bytes(3000, 9);
    let m1 = metadata(&[("filename", "t1.bin"), ("checksum", &md5_header(&tb))]);
    let m2 = metadata(&[("filename", "t2.bin"), ("checksum", &md5_header(&tb))]);
    let t1 = hv(&final_upload(&c, &[&t], &m1).await, "location");
    let t2 = hv(&final_upload(&c, &[&t], &m2).await, "location");
    assert_ne!(t1, t2);
    patch_all(&c, &t, &tb, 0, 1000).await;
    assert_eq!(c.offset(&t1).await, 3000);
    assert_eq!(c.offset(&t2).await, 3000);
    assert_eq!(std::fs::read(s.data().join("files/t2.bin")).unwrap(), tb);

    // Deleting an unfinished final takes its placed parts with it: they answer 410, never an
    // offset for bytes that are gone.
    let (q1, q2) = (partial(&c, 10).await, partial(&c, 10).await);
    let f = hv(&final_upload(&c, &[&q1, &q2], "").await, "location");
    assert_eq!(c.patch(&q1, 0, b"0123456789", None).await.status(), 204);
    assert_eq!(c.req(Method::DELETE, &f).send().await.unwrap().status(), 204);
    assert_eq!(c.head(&q1).await.status(), 410);
    assert_eq!(c.head(&q2).await.status(), 410);

    // A part that expires strands its final: the sweeper expires the final and the parts
    // placed into it, and the final's HEAD says 410 at once.
    let (r1, r2) = (partial(&c, 10).await, partial(&c, 10).await);
    let f = hv(&final_upload(&c, &[&r1, &r2], "").await, "location");
    assert_eq!(c.patch(&r1, 0, b"abcdefghij", None).await.status(), 204);
    assert_eq!(c.status(&r1).await["status"], "complete");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(c.head(&f).await.status(), 410, "r2 expired");
    robusto::serve::expiry::sweep(&s.state).await;
    assert_eq!(c.head(&r1).await.status(), 410);
    assert_eq!(c.head(&f).await.status(), 410);

    // The same sweep removed the records of the parts written into the finals completed more
    // than the expiry period ago; the finals themselves are untouched.
    assert_eq!(c.head(&pa).await.status(), 404);
    assert_eq!(c.head(&t).await.status(), 404);
    assert_eq!(c.offset(&f1).await, whole.len() as u64);
    let r = c.req(Method::GET, &f1).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), whole.as_slice());
    assert_eq!(std::fs::read(s.data().join("files/once.bin")).unwrap(), whole);
}

#[tokio::test]
async fn unfinished_concatenation_survives_a_restart() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let (a, b) = (bytes(1 << 20, 5), bytes(1 << 20, 6));
    let whole = [a.clone(), b.clone()].concat();
    let (pa, pb) = (partial(&c, a.len()).await, partial(&c, b.len()).await);
    let meta = metadata(&[("filename", "r.bin"), ("checksum", &md5_header(&whole))]);
    let r = final_upload(&c, &[&pa, &pb], &meta).await;
    assert_eq!(r.status(), 201);
    let f = hv(&r, "location");
    patch_all(&c, &pa, &a, 0, 256 << 10).await;
    patch_all(&c, &pb, &b[..512 << 10], 0, 256 << 10).await;
    // The restart loses the digest follower: the last part still finishes the final, whose
    // check then reads the file.
    let s = s.restart().await;
    let c = s.client();
    patch_all(&c, &pb, &b, 512 << 10, 256 << 10).await;
    assert_eq!(c.offset(&f).await, whole.len() as u64);
    assert_eq!(std::fs::read(s.data().join("files/r.bin")).unwrap(), whole);
}

#[tokio::test]
async fn tokens_gate_every_request_and_hide_other_tokens_uploads() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("alice\nbob\n")).await;
    let mut alice = s.client();
    assert_eq!(alice.post(3, "").await.status(), 401);
    alice.token = Some("mallory".into());
    assert_eq!(alice.post(3, "").await.status(), 401);
    alice.token = Some("alice".into());
    let loc = alice.create(3, "").await;
    let mut bob = s.client();
    bob.token = Some("bob".into());
    assert_eq!(bob.head(&loc).await.status(), 404);
    assert_eq!(bob.patch(&loc, 0, b"abc", None).await.status(), 404);
    assert_eq!(bob.req(Method::DELETE, &loc).send().await.unwrap().status(), 404);
    assert_eq!(alice.patch(&loc, 0, b"abc", None).await.status(), 204);
    let options = reqwest::Client::new()
        .request(Method::OPTIONS, s.endpoint())
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204, "OPTIONS needs no token");
}

#[tokio::test]
async fn cors_for_browser_clients() {
    let (app, _) = memory_app(|c| c.cors_origins = vec!["https://app.example".into()]);
    let req = axum::http::Request::options("/files/")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = oneshot(&app, req).await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("PATCH"));
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Upload-Checksum")
    );
    let req = axum::http::Request::post("/files/")
        .header("origin", "https://app.example")
        .header(header::TUS_RESUMABLE, "1.0.0")
        .header(header::UPLOAD_LENGTH, "1")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = oneshot(&app, req).await;
    assert_eq!(status, 201);
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Location")
    );
    // a preflight for the application's own headers (tus-js-client's `headers` option)
    let req = axum::http::Request::options("/files/")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "upload-offset, X-App-Session, content-type, bad header",
        )
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = oneshot(&app, req).await;
    assert_eq!(status, 204);
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_string();
    assert!(allowed.ends_with(", x-app-session"), "{allowed}");
    assert!(!allowed.contains("bad header"), "{allowed}");
    let req = axum::http::Request::options("/files/")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PATCH")
        .header("access-control-request-headers", "x-app-session")
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = oneshot(&app, req).await;
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(!h.contains_key("access-control-allow-headers"));
}

#[tokio::test]
async fn published_names_are_sanitised_and_never_collide() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    for name in ["a.txt", "a.txt", "../../escape.txt", "/etc/passwd"] {
        let loc = c.create(1, &metadata(&[("filename", name)])).await;
        assert_eq!(c.patch(&loc, 0, b"x", None).await.status(), 204);
    }
    let mut names: Vec<String> = std::fs::read_dir(s.data().join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a-1.txt", "a.txt", "escape.txt", "passwd"]);
    assert!(!s.data().parent().unwrap().join("escape.txt").exists());
}

#[tokio::test]
async fn a_full_disk_is_507_and_nothing_is_kept() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let loc = c.create(5, "").await;
    // /dev/full answers every write with ENOSPC.
    let data = s.data().join("uploads").join(id_of(&loc));
    std::fs::remove_file(&data).unwrap();
    std::os::unix::fs::symlink("/dev/full", &data).unwrap();
    let r = c.patch(&loc, 0, b"hello", None).await;
    assert_eq!(r.status(), 507);
    assert_eq!(c.offset(&loc).await, 0);
}

#[test]
fn sigkill_mid_upload_then_restart_resumes_from_the_last_acknowledged_byte() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = bytes(3 << 20, 11);
    let chunk = 1 << 20;
    let meta = metadata(&[("filename", "killed.bin"), ("checksum", &md5_header(&data))]);
    let server = BinServer::start(dir.path(), 0);
    let port = server.port();
    let c = Tus::new(&server.base);
    let loc = rt.block_on(async {
        let loc = c.create(data.len() as u64, &meta).await;
        let r = c
            .patch(&loc, 0, &data[..chunk], Some(&md5_header(&data[..chunk])))
            .await;
        assert_eq!(r.status(), 204);
        loc
    });
    // The second chunk is on its way (half sent) when the server dies.
    let half = start_patch(
        &server.base,
        &loc,
        chunk as u64,
        chunk,
        &data[chunk..chunk + chunk / 2],
        Some(&md5_header(&data[chunk..2 * chunk])),
    );
    server.kill();
    drop(half);

    let server = BinServer::start(dir.path(), port);
    let c = Tus::new(&server.base);
    rt.block_on(async {
        let offset = c.offset(&loc).await;
        assert_eq!(offset, chunk as u64, "resumes from the last acknowledged byte");
        let mut at = offset as usize;
        while at < data.len() {
            let end = (at + chunk).min(data.len());
            let r = c
                .patch(&loc, at as u64, &data[at..end], Some(&md5_header(&data[at..end])))
                .await;
            assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
            at = end;
        }
        assert_eq!(c.status(&loc).await["status"], "complete");
    });
    assert_eq!(std::fs::read(dir.path().join("files/killed.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_sending_is_given_up_after_the_read_timeout() {
    let s = Server::start(|c| c.read_timeout = Duration::from_millis(200)).await;
    let c = s.client();
    let data = bytes(1000, 5);
    let loc = c.create(1000, "").await;
    let stalled = start_patch(&s.base, &loc, 0, 1000, &data[..300], None);
    // Nothing else touches the upload: only the read timeout can end that PATCH.
    let id = id_of(&loc);
    let mut offset = 0;
    for _ in 0..1000 {
        offset = s.state.store.info(&id).await.unwrap().offset;
        if offset == 300 && !s.state.uploads.is_busy(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(offset, 300, "the bytes before the stall are kept (no checksum)");
    drop(stalled);
    assert_eq!(c.patch(&loc, 300, &data[300..], None).await.status(), 204);
}

#[test]
fn serve_flags_are_validated_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        &["--max-size", "lots"][..],
        &["--expire-after", "soon"],
        &["--read-timeout", "0s"],
        &["--min-rate", "slow"],
        &["--token-file", "/nonexistent/tokens"],
        &["--listen", "not-an-address"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_robusto"))
            .arg("serve")
            .arg("--data")
            .arg(dir.path())
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_open_server_off_loopback_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, log) = BinServer::start_on(dir.path(), "0.0.0.0:0");
    assert!(log.contains("no --token-file"), "{log}");
    let (_server, log) = BinServer::start_on(dir.path(), "127.0.0.1:0");
    assert!(!log.contains("no --token-file"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_stalled_patch_and_keeps_what_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().to_path_buf());
    config.read_timeout = Duration::from_secs(3600);
    let state = AppState::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(robusto::serve::run(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let c = Tus::new(&base);
    let data = bytes(1000, 13);
    let loc = c.create(1000, "").await;
    let stalled = start_patch(&base, &loc, 0, 1000, &data[..400], None);
    for _ in 0..1000 {
        if state.uploads.is_busy(&id_of(&loc)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    // A hang guard, not a measurement: without the cancellation this waits for an hour.
    tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    drop(stalled);
    let info = state.store.info(&id_of(&loc)).await.unwrap();
    assert!(info.offset <= 400, "{}", info.offset);
    let on_disk = std::fs::read(dir.path().join("uploads").join(id_of(&loc))).unwrap();
    assert_eq!(on_disk, data[..info.offset as usize]);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), 0);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn get_files_lists_the_callers_completed_uploads() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("alice\nbob\n")).await;
    let mut alice = s.client();
    alice.token = Some("alice".into());
    let body = b"nightly archive bytes";
    let meta = metadata(&[("filename", "host-2026-11-21.zip"), ("checksum", &md5_header(body))]);
    let done = alice.create(body.len() as u64, &meta).await;
    assert_eq!(alice.patch(&done, 0, body, Some(&md5_header(body))).await.status(), 204);
    let _unfinished = alice.create(100, &metadata(&[("filename", "partial.zip")])).await;
    let mut bob = s.client();
    bob.token = Some("bob".into());
    let bobs = bob.create(1, &metadata(&[("filename", "bob.zip")])).await;
    assert_eq!(bob.patch(&bobs, 0, b"x", None).await.status(), 204);

    let r = alice.req(Method::GET, "/files/").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Vec<robusto::protocol::Listed> = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(list.len(), 1, "only alice's completed upload: {list:?}");
    let l = &list[0];
    assert_eq!(l.name, "host-2026-11-21.zip");
    assert_eq!(l.size, body.len() as u64);
    assert_eq!(
        l.md5.as_deref(),
        Some(robusto::fingerprint::Md5::of(body).hex().as_str())
    );
    assert!(done.ends_with(&l.url), "{done} vs {}", l.url);
    assert!(l.completed_at.as_deref().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(l.metadata["filename"], "host-2026-11-21.zip");
    let anonymous = reqwest::Client::new()
        .get(s.endpoint())
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// The info keeps the running MD5's state: a restarted server resumes it and hashes only the
/// bytes after it, instead of reading the whole file again at its end. Proof: bytes of the
/// first chunk damaged on disk after the restart go unseen by the whole-file check, which the
/// same damage fails when the state is taken away (the file is then read again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_the_whole_file_digest_from_the_info() {
    for keep_state in [true, false] {
        let s = Server::start(|_| {}).await;
        let chunk = 64 << 10;
        let data = bytes(4 * chunk, 21);
        let meta = metadata(&[("filename", "d.bin"), ("checksum", &md5_header(&data))]);
        let c = s.client();
        let loc = c.create(data.len() as u64, &meta).await;
        for i in 0..3 {
            let part = &data[i * chunk..(i + 1) * chunk];
            let r = c.patch(&loc, (i * chunk) as u64, part, Some(&md5_header(part))).await;
            assert_eq!(r.status(), 204);
        }
        // The digest trails the offset by at most a chunk or two; let it catch up.
        let id = id_of(&loc);
        let mut info = s.state.store.info(&id).await.unwrap();
        for _ in 0..200 {
            if info.whole_md5_at.unwrap_or(0) >= chunk as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            info = s.state.store.info(&id).await.unwrap();
        }
        assert!(
            info.whole_md5.is_some() && info.whole_md5_at.unwrap_or(0) >= chunk as u64,
            "{info:?}"
        );
        let s = s.restart().await;
        let upload = s.data().join("uploads").join(&id);
        let mut on_disk = std::fs::read(&upload).unwrap();
        on_disk[7] ^= 0x40;
        std::fs::write(&upload, &on_disk).unwrap();
        if !keep_state {
            let info_path = s.data().join("uploads").join(format!("{id}.info"));
            let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
            json.as_object_mut().unwrap().remove("whole_md5");
            std::fs::write(&info_path, serde_json::to_vec(&json).unwrap()).unwrap();
        }
        let c = s.client();
        let last = &data[3 * chunk..];
        let r = c.patch(&loc, (3 * chunk) as u64, last, Some(&md5_header(last))).await;
        let expected = if keep_state { 204 } else { 460 };
        assert_eq!(r.status(), expected, "state kept: {keep_state}");
    }
}

/// Sends `request` as is and returns the answer's status code.
fn raw_status(base: &str, request: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut t = std::net::TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(request.replace("{host}", addr).as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = t.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused() {
    let s = Server::start(|_| {}).await;
    let c = s.client();
    let loc = c.create(10, "").await;
    let patch = |extra: &str, body: &str| {
        format!(
            "PATCH {loc} HTTP/1.1\r\nHost: {{host}}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nConnection: close\r\n{extra}\r\n{body}"
        )
    };
    // Two different offsets, lengths or checksums: which one counts would be a guess.
    let two_offsets = patch("Upload-Offset: 0\r\nUpload-Offset: 5\r\nContent-Length: 5\r\n", "hello");
    assert_eq!(raw_status(&s.base, &two_offsets), 400);
    let two_sums = patch(
        &format!(
            "Upload-Offset: 0\r\nUpload-Checksum: {}\r\nUpload-Checksum: {}\r\nContent-Length: 5\r\n",
            md5_header(b"hello"),
            md5_header(b"other")
        ),
        "hello",
    );
    assert_eq!(raw_status(&s.base, &two_sums), 400);
    let two_lengths = "POST /files/ HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\nUpload-Length: 9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&s.base, two_lengths), 400);
    // A coding the server would store as its coded bytes.
    let gzip = patch(
        "Upload-Offset: 0\r\nTransfer-Encoding: gzip, chunked\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(raw_status(&s.base, &gzip), 501);
    // A chunk of 2^72 bytes does not exist: the framing is broken, not the connection.
    let huge = patch(
        "Upload-Offset: 0\r\nTransfer-Encoding: chunked\r\n",
        "1000000000000000000\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(raw_status(&s.base, &huge), 400);
    assert_eq!(c.offset(&loc).await, 0, "nothing of those was kept");
    // The same header twice with the same value is no ambiguity.
    let same = patch("Upload-Offset: 0\r\nUpload-Offset: 0\r\nContent-Length: 5\r\n", "hello");
    assert_eq!(raw_status(&s.base, &same), 204);
    // Upload-Concat entries that are not upload URLs of this server.
    let part = {
        let r = c
            .req(reqwest::Method::POST, "/files/")
            .header("Upload-Length", "1")
            .header("Upload-Concat", "partial")
            .send()
            .await
            .unwrap();
        hv(&r, "location")
    };
    let id = id_of(&part);
    for concat in [
        format!("final;/files/{id};/files/{id}"),
        format!("final;http://evil.example/files/{id}"),
        format!("final;/elsewhere/files/{id}"),
    ] {
        let r = c
            .req(reqwest::Method::POST, "/files/")
            .header("Upload-Concat", concat.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{concat}");
    }
    let own = format!("final;{}/files/{id}", s.base);
    let r = c
        .req(reqwest::Method::POST, "/files/")
        .header("Upload-Concat", own.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "an absolute URL of this server is fine: {own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_under_the_minimum_rate_is_given_up() {
    // Windows of 1 s, at least 1,000 bytes/s: a byte every 100 ms falls short in the first.
    let s = Server::start(|c| {
        c.read_timeout = Duration::from_secs(1);
        c.min_rate = 1000;
    })
    .await;
    let c = s.client();
    let data = bytes(100, 4);
    let loc = c.create(100, "").await;
    let started = std::time::Instant::now();
    let trickle = trickle_patch(&s.base, &loc, data.clone(), None, 1, Duration::from_millis(100));
    let answer = tokio::task::spawn_blocking(move || trickle.join().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "given up early: {:?}",
        started.elapsed()
    );
    // Without a checksum what arrived is kept (tus); the rest goes on at a proper rate.
    let offset = c.offset(&loc).await;
    assert!(offset < 100, "{offset} ({answer})");
    let r = c.patch(&loc, offset, &data[offset as usize..], None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(std::fs::read(s.data().join("files").join(id_of(&loc))).unwrap(), data);
}
