//! The sender against a server written by others (@tus/server 2.4.5 with its file store): files
//! of awkward sizes arrive byte for byte; a server that lost an upload gets a fresh one;
//! `status` and `get` read a completed upload back.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use robusto::client::retry::RetryPolicy;
use robusto::client::{SendOptions, SendOutcome, Url, send};
use robusto::progress::Silent;

use super::peers::{TusNode, md5_file, random_file};

/// Send options for tests: fast backoff, short stall timeout, a private state directory.
pub fn options(file: &Path, endpoint: &str, state: &Path) -> SendOptions {
    SendOptions {
        file: file.to_path_buf(),
        target: Url::parse(endpoint).expect("endpoint URL"),
        chunk_size: 1 << 20,
        parallel: 1,
        bwlimit: None,
        retry: RetryPolicy {
            retries: 10,
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        stall_timeout: Duration::from_secs(5),
        max_duration: None,
        token: None,
        roots: Default::default(),
        state_dir: state.to_path_buf(),
        name: None,
        job_key: None,
        following: None,
    }
}

/// Sends and insists on completion; returns the upload URL.
pub async fn send_ok(opts: &SendOptions) -> String {
    match send(opts, &Silent).await {
        Ok(SendOutcome::Complete { url }) => url,
        other => panic!("send of {} did not complete: {other:?}", opts.file.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_tus_node_awkward_sizes() {
    let server = TusNode::start();
    let dir = tempfile::tempdir().unwrap();
    for (i, size) in [0u64, 1, 8 << 20, (8 << 20) + 1, 100 << 20].into_iter().enumerate() {
        let file = dir.path().join(format!("f{size}.bin"));
        random_file(&file, size, i as u64 + 1);
        let mut opts = options(&file, &server.endpoint(), &dir.path().join("state"));
        opts.chunk_size = 8 << 20;
        let url = send_ok(&opts).await;
        let stored = server.stored(&url);
        assert_eq!(std::fs::metadata(&stored).unwrap().len(), size, "{size} B: stored size");
        assert_eq!(md5_file(&stored), md5_file(&file), "{size} B: stored bytes differ");
        // Running the same job again finds it complete and sends nothing.
        assert_eq!(send_ok(&opts).await, url, "{size} B: a rerun returns the same upload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_the_upload_gets_a_fresh_one() {
    let server = TusNode::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    random_file(&file, 3 << 20, 7);
    let mut opts = options(&file, &server.endpoint(), &dir.path().join("state"));
    opts.max_duration = Some(Duration::from_millis(300));
    opts.bwlimit = Some(robusto::client::throttle::Timetable::parse("2M").unwrap());
    let paused = send(&opts, &Silent).await.expect("paused");
    let Some(old) = (match paused {
        SendOutcome::Paused { url } => url,
        other => panic!("expected a pause at --max-duration, got {other:?}"),
    }) else {
        panic!("the upload was not created before the pause")
    };
    let out = super::support::robusto(["status", old.as_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(r#""status":"partial""#), "{}", out.stdout);
    // The server forgets the upload (as after an expiry).
    let stored = server.stored(&old);
    std::fs::remove_file(&stored).unwrap();
    std::fs::remove_file(stored.with_extension("json")).unwrap();
    opts.max_duration = None;
    opts.bwlimit = None;
    let url = send_ok(&opts).await;
    assert_ne!(url, old, "a fresh upload");
    assert_eq!(md5_file(&server.stored(&url)), md5_file(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_get_read_a_completed_upload_back() {
    let server = TusNode::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    random_file(&file, (5 << 20) + 123, 11);
    let url = send_ok(&options(&file, &server.endpoint(), &dir.path().join("state"))).await;

    let out = super::support::robusto(["status", url.as_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("status JSON");
    assert_eq!(v["status"], "complete", "{v}");
    assert_eq!(v["offset"], (5u64 << 20) + 123);

    // A stale partial download is resumed (or restarted: @tus/server ignores Range).
    let got = dir.path().join("got.bin");
    std::fs::write(dir.path().join("got.bin.partial"), b"stale bytes").unwrap();
    let out = super::support::robusto(["get", url.as_str(), "-o", got.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(md5_file(&got), md5_file(&file));
    assert!(out.stdout.starts_with(&md5_file(&file)), "{}", out.stdout);
    assert!(!dir.path().join("got.bin.partial").exists());
}
