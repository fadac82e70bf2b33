//! The sender on a bad link: the fault proxy between it and @tus/server cuts connections, stalls
//! and answers 503; every upload completes with identical bytes, no acknowledged chunk is sent
//! again, and the bytes on the wire stay within the file size plus one chunk per fault.

use std::net::SocketAddr;
use std::time::Duration;

use robusto::client::{SendError, send};
use robusto::progress::Silent;

use super::peers::{TusNode, md5_file, random_file};
use super::proxy::{Faults, Proxy};
use super::send::{options, send_ok};

const CHUNK: u64 = 1 << 20;

fn upstream(server: &TusNode) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

/// Sends a `size`-byte file through a proxy with `faults`; checks the bytes, the PATCH log and
/// the wire budget; returns the faults injected.
async fn survives(size: u64, faults: Faults, stall_timeout: Duration) -> u64 {
    let server = TusNode::start();
    let proxy = Proxy::start(upstream(&server), faults).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    random_file(&file, size, size);
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.chunk_size = CHUNK;
    opts.stall_timeout = stall_timeout;
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.stored(&url)), md5_file(&file), "stored bytes differ");
    proxy.log.assert_no_acked_resend();
    assert!(
        proxy.log.patches().iter().all(|p| p.checksum.is_none()),
        "@tus/server does not announce checksum: no Upload-Checksum header"
    );
    let faults = proxy.log.faults.load(std::sync::atomic::Ordering::Relaxed);
    let wire = proxy.log.body_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(faults > 0, "no fault was injected");
    assert!(
        wire <= size + faults * CHUNK,
        "{wire} bytes on the wire for a {size}-byte file and {faults} faults"
    );
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_every_n_bytes() {
    let faults = Faults {
        cut_every: Some(3 * CHUNK + 12_345),
        ..Faults::default()
    };
    let n = survives(20 * CHUNK + 77, faults, Duration::from_secs(5)).await;
    assert!(n >= 5, "expected about 6 cuts, saw {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_patch_is_abandoned_and_resumed() {
    let faults = Faults {
        stall_patches: [1, 4].into(),
        stall_for: Duration::from_secs(4),
        ..Faults::default()
    };
    survives(6 * CHUNK, faults, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let faults = Faults {
        fail_patches: [0, 2, 3, 4, 7].into(),
        ..Faults::default()
    };
    let n = survives(8 * CHUNK + 1, faults, Duration::from_secs(5)).await;
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_the_error_is_resumable_and_names_the_upload() {
    let server = TusNode::start();
    let proxy = Proxy::start(
        upstream(&server),
        Faults {
            fail_patches: (2..10_000).collect(),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    random_file(&file, 5 * CHUNK, 3);
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.retry.retries = 3;
    match send(&opts, &Silent).await {
        Err(e @ SendError::RetriesExhausted { .. }) => {
            assert!(e.is_resumable());
            let SendError::RetriesExhausted { url, attempts, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*attempts, 4);
            assert!(url.as_deref().is_some_and(|u| u.contains("/files/")), "{e}");
            assert!(e.to_string().contains("/files/"), "the message names the upload: {e}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    proxy.set(|f| f.fail_patches.clear());
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.stored(&url)), md5_file(&file));
    proxy.log.assert_no_acked_resend();
    let acked_at_2: Vec<_> = proxy
        .log
        .patches()
        .into_iter()
        .filter(|p| p.status == Some(204) && p.offset < 2 * CHUNK)
        .collect();
    assert_eq!(
        acked_at_2.len(),
        2,
        "the first two chunks were sent once: {acked_at_2:?}"
    );
}
