//! The sender on a link that breaks more often than it carries a chunk, against `robusto serve`
//! through the fault proxy. With `robusto-chunk-prefix` a cut costs only the bytes in flight:
//! the server holds what arrived and the client sends the rest. Against a server that checks
//! chunks but cannot hold a cut one, the rest of the chunk goes in smaller checked pieces. In
//! every case the file arrives byte for byte and no byte is ever counted (by HEAD, by a PATCH
//! answer) before the chunk or piece that carried it passed its MD5.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use robusto::client::{SendOutcome, send};
use robusto::progress::Silent;

use super::peers::md5_file;
use super::proxy::{Faults, PatchRecord, Proxy};
use super::send::{options, send_ok};
use super::serve_env::Server;
use super::serve_send::packed_like;
use super::support::robusto;

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;

/// The bytes the server holds of a cut chunk, as soon as any upload records some (`None` when
/// none did within `patience`).
async fn first_held(server: &Server, patience: Duration) -> Option<u64> {
    let store = server.state.store.clone();
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        for id in store.list().await.unwrap() {
            if let Some(h) = store.info(&id).await.unwrap().held {
                return Some(h.len);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Reads every few milliseconds the offset the server records for each of its uploads (what
/// its HEAD answers, read straight from the store), and keeps them.
struct OffsetWatch {
    seen: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OffsetWatch {
    fn start(server: &Server) -> OffsetWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (store, into) = (server.state.store.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                for id in store.list().await.unwrap_or_default() {
                    if let Ok(info) = store.info(&id).await {
                        into.lock().unwrap().push(info.offset);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        OffsetWatch { seen, task }
    }

    /// The offsets seen; stops watching.
    fn stop(self) -> Vec<u64> {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

/// Every offset the server acknowledged, by HEAD or in a PATCH answer, ends a whole chunk.
fn only_whole_chunks_counted(heads: &[u64], patches: &[PatchRecord], chunk: u64, size: u64) {
    assert!(!heads.is_empty(), "the watch saw no offset");
    for &o in heads {
        assert!(
            o % chunk == 0 || o == size,
            "the server recorded offset {o}: not a chunk boundary"
        );
    }
    for p in patches.iter().filter(|p| matches!(p.status, Some(200..=299))) {
        let o = p.new_offset.unwrap();
        assert!(o % chunk == 0 || o == size, "a PATCH was answered offset {o}: {p:?}");
    }
}

fn wire(proxy: &Proxy) -> u64 {
    proxy.log.body_bytes.load(Ordering::Relaxed)
}

/// Sends a `size`-byte file in `chunk`-byte chunks through a proxy that cuts the link every
/// `cut` bytes; checks the bytes, what was acknowledged, and that a cut cost only what was in
/// flight. Returns the number of cuts.
async fn cut_every(cut: u64, chunk: u64, size: u64) -> u64 {
    let server = Server::start(|_| {}).await;
    let addr = server.addr;
    let proxy = Proxy::start(
        addr,
        Faults {
            cut_every: Some(cut),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), size, chunk, cut ^ chunk);
    let opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    let watch = OffsetWatch::start(&server);
    let url = send_ok(&opts).await;
    let heads = watch.stop();
    let what = format!("cut every {cut} B, {chunk} B chunks");
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file), "{what}");
    let patches = proxy.log.patches();
    only_whole_chunks_counted(&heads, &patches, chunk, size);
    proxy.log.assert_no_acked_resend();
    let cuts = proxy.log.faults.load(Ordering::Relaxed);
    assert!(cuts >= size / cut - 1, "{what}: only {cuts} cuts");
    let wire = wire(&proxy);
    assert!(
        wire <= size + size / 50,
        "{what}: {wire} body bytes on the wire for a {size}-byte file and {cuts} cuts: {patches:#?}"
    );
    if cut < chunk {
        assert!(
            patches.iter().any(|p| p.prefix.is_some_and(|n| n > 0)),
            "{what}: no PATCH continued a held chunk: {patches:?}"
        );
    }
    cuts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_more_often_than_a_chunk_cost_only_the_bytes_in_flight() {
    cut_every(2 * MB, 8 * MIB, 24 * MIB + 5).await;
    cut_every(10 * MB, 8 * MIB, 24 * MIB + 5).await;
    cut_every(11 * MB, 8 * MIB, 24 * MIB + 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_within_64_mib_chunks_cost_only_the_bytes_in_flight() {
    let cuts = cut_every(10 * MB, 64 * MIB, 70 * MIB).await;
    assert!(cuts >= 7, "{cuts}");
    cut_every(2 * MB, 64 * MIB, 66 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_held_chunks_the_rest_goes_in_smaller_checked_pieces() {
    let server = Server::start(|c| c.keep_prefixes = false).await;
    let addr = server.addr;
    let proxy = Proxy::start(
        addr,
        Faults {
            cut_every: Some(2 * MB),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let file = packed_like(dir.path(), size, 8 * MIB, 5);
    let opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    proxy.log.assert_no_acked_resend();
    let patches = proxy.log.patches();
    let acked: Vec<_> = patches.iter().filter(|p| p.status == Some(204)).collect();
    for p in &acked {
        assert!(p.checksum.is_some(), "every piece is checked: {p:?}");
        assert_eq!(p.new_offset, Some(p.offset + p.len), "a piece is counted whole: {p:?}");
        assert_eq!(p.prefix, None, "the extension is off: {p:?}");
    }
    assert!(
        acked.iter().any(|p| p.len < MIB),
        "after a cut the rest goes in smaller pieces: {acked:?}"
    );
    let wire = wire(&proxy);
    assert!(
        wire <= size + size * 15 / 100,
        "{wire} body bytes on the wire for a {size}-byte file: {patches:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_before_a_cut_is_caught_and_the_chunk_sent_again() {
    let server = Server::start(|_| {}).await;
    let addr = server.addr;
    // The first PATCH gets a bit flipped half-way (at 4 MiB) and is cut at 6 MB: the server
    // holds 6 MB with a damaged byte in them.
    let proxy = Proxy::start(
        addr,
        Faults {
            flip_patches: [0].into(),
            cut_every: Some(6 * MB),
            cuts_left: Some(1),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let file = packed_like(dir.path(), size, 8 * MIB, 6);
    let opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    let watch = OffsetWatch::start(&server);
    let url = send_ok(&opts).await;
    let heads = watch.stop();
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches();
    only_whole_chunks_counted(&heads, &patches, 8 * MIB, size);
    assert_eq!(patches[0].status, None, "the first PATCH was cut: {patches:?}");
    assert_eq!(
        (patches[1].prefix, patches[1].status),
        (Some(6 * MB), Some(460)),
        "the rest of the damaged chunk completed it, and the server refused it: {patches:?}"
    );
    assert_eq!(
        (patches[2].offset, patches[2].len, patches[2].prefix, patches[2].status),
        (0, 8 * MIB, None, Some(204)),
        "the chunk went again whole: {patches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_while_it_holds_a_chunk_continues_it() {
    let server = Server::start(|_| {}).await;
    let addr = server.addr;
    // A slow link (8 MiB in about 4 s) that breaks once, 3 MB into the first chunk.
    let proxy = Proxy::start(
        addr,
        Faults {
            cut_every: Some(3 * MB),
            cuts_left: Some(1),
            delay_per_64k: Some(Duration::from_millis(30)),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let file = packed_like(dir.path(), size, 8 * MIB, 7);
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.retry.base = Duration::from_millis(200);
    let sending = {
        let opts = opts.clone();
        tokio::spawn(async move { send(&opts, &Silent).await })
    };
    // Once the server holds the cut chunk's first bytes and the rest is on its way, restart
    // it: the shutdown gives up the PATCH in flight, holding what it carried.
    let held = first_held(&server, Duration::from_secs(10)).await;
    assert_eq!(held, Some(3 * MB), "the cut chunk's first bytes were held");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let server = server.restart().await;
    proxy.set_upstream(server.addr);
    let url = match sending.await.unwrap() {
        Ok(SendOutcome::Complete { url }) => url,
        other => panic!("the send did not complete: {other:?}"),
    };
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    proxy.log.assert_no_acked_resend();
    let patches = proxy.log.patches();
    let continued: Vec<_> = patches.iter().filter_map(|p| p.prefix).collect();
    assert!(
        continued.len() >= 2 && continued[1] > 3 * MB,
        "after the restart the chunk was continued from what the shutdown kept: {patches:?}"
    );
    let wire = wire(&proxy);
    assert!(wire <= size + MIB, "{wire} body bytes on the wire for {size}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_the_server_holds_a_chunk_continues_it() {
    let server = Server::start(|_| {}).await;
    let addr = server.addr;
    let proxy = Proxy::start(
        addr,
        Faults {
            delay_per_64k: Some(Duration::from_millis(10)),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Chunks larger than what the loopback's socket buffers take, so that a kill leaves part
    // of the chunk unsent.
    let chunk = 32 * MIB;
    let size = chunk + 5 * MIB;
    let file = packed_like(dir.path(), size, chunk, 8);
    let state = dir.path().join("state");
    let args = [
        "send".to_string(),
        file.display().to_string(),
        "--to".into(),
        proxy.endpoint(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    let mut child = std::process::Command::new(super::support::bin())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL 4 MiB into the first chunk.
    for _ in 0..4000 {
        if wire(&proxy) >= 4 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The server holds what arrived once the dead connection's bytes are through.
    let held = first_held(&server, Duration::from_secs(20))
        .await
        .expect("the server holds the killed client's chunk");
    assert!((4 * MIB..chunk).contains(&held), "{held}");
    let before = wire(&proxy);
    proxy.set(|f| f.delay_per_64k = None);
    let out = robusto(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let url = out.stdout.trim();
    assert_eq!(md5_file(&server.published(url).await), md5_file(&file));
    let patches = proxy.log.patches();
    let rerun = patches.iter().find(|p| p.prefix.is_some()).expect("a continued PATCH");
    assert_eq!(
        (rerun.offset, rerun.prefix, rerun.len, rerun.status),
        (0, Some(held), chunk - held, Some(204)),
        "the rerun sent only the rest of the held chunk: {patches:?}"
    );
    assert_eq!(
        wire(&proxy) - before,
        size - held,
        "nothing the server held was sent again"
    );
}
