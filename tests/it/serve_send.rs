//! The sender against `robusto serve` (in-process, fs store, 127.0.0.1:0): every chunk carries
//! its MD5 from the manifest; a flipped bit is caught by 460 and the chunk re-sent; a file damaged
//! on disk stops after three 460s pointing at `robusto verify`; `--parallel` uses concatenation;
//! `--to DIR`; `status` and a resumed Range `get`.

use std::path::{Path, PathBuf};

use robusto::client::{SendError, send};
use robusto::progress::Silent;

use super::peers::{md5_file, random_file};
use super::proxy::{Faults, Proxy};
use super::send::{options, send_ok};
use super::serve_env::Server;
use super::support::robusto;

/// A file of `size` random bytes with its manifest in `chunk`-byte chunks, as `pack` leaves it.
pub(crate) fn packed_like(dir: &Path, size: u64, chunk: u64, seed: u64) -> PathBuf {
    let file = dir.join("a.bin");
    random_file(&file, size, seed);
    let fp = robusto::fingerprint::fingerprint_file(&file, chunk).unwrap();
    robusto::manifest::Manifest::new(&file, "raw", "none", None, fp, Default::default())
        .write(&robusto::manifest::path_for(&file))
        .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_carries_the_manifest_md5_and_a_flipped_bit_is_resent() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(
        server.addr,
        Faults {
            flip_patches: [2, 5].into(),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), (8 << 20) + 3, 1 << 20, 91);
    let m = robusto::manifest::Manifest::read_for(&file).unwrap();
    let opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches();
    for p in &patches {
        let chunk = m
            .chunks
            .iter()
            .find(|c| c.offset == p.offset)
            .expect("PATCHes start on chunk boundaries");
        assert_eq!(
            p.checksum.as_deref(),
            Some(format!("md5 {}", chunk.md5.base64()).as_str())
        );
    }
    let refused: Vec<_> = patches.iter().filter(|p| p.status == Some(460)).collect();
    assert_eq!(refused.len(), 2, "both flipped chunks were refused: {patches:?}");
    for r in refused {
        assert!(
            patches.iter().any(|p| p.offset == r.offset && p.status == Some(204)),
            "chunk at {} re-sent",
            r.offset
        );
    }
    proxy.log.assert_no_acked_resend();
    let wire = proxy.log.body_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(wire <= m.archive.size + 2 * (1 << 20), "{wire} bytes on the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_damaged_on_disk_stops_after_three_460s() {
    let server = Server::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), 3 << 20, 1 << 20, 92);
    // Damage chunk 1 after the manifest was written.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[(1 << 20) + 10] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let opts = options(&file, &server.endpoint(), &dir.path().join("state"));
    match send(&opts, &Silent).await {
        Err(e @ SendError::Damaged { index: 1, .. }) => {
            assert!(!e.is_resumable());
            assert!(e.to_string().contains("robusto verify"), "{e}");
        }
        other => panic!("expected Damaged for chunk 1, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_concatenate() {
    let server = Server::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), (10 << 20) + 5, 1 << 20, 93);
    let mut opts = options(&file, &server.endpoint(), &dir.path().join("state"));
    opts.parallel = 4;
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let out = robusto(["status", url.as_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(r#""status":"complete""#), "{}", out.stdout);
    // Running the job again finds it complete.
    assert_eq!(send_ok(&opts).await, url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_follow_what_the_server_offers() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(server.addr, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), (10 << 20) + 5, 1 << 20, 95); // 11 chunks
    let distinct = |patches: &[super::proxy::PatchRecord]| {
        let mut paths: Vec<&str> = patches.iter().map(|p| p.path.as_str()).collect();
        paths.sort();
        paths.dedup();
        paths.len()
    };
    // robusto serve takes the final upload first: one part per chunk, handed out in order.
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.parallel = 4;
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches();
    assert_eq!((patches.len(), distinct(&patches)), (11, 11), "{patches:?}");
    assert!(patches.iter().all(|p| p.checksum.is_some()));

    // A server without concatenation-unfinished: four contiguous parts, the final after them.
    proxy.set(|f| f.announce = Some("creation,termination,concatenation".into()));
    opts.state_dir = dir.path().join("state2");
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches()[11..].to_vec();
    assert_eq!((patches.len(), distinct(&patches)), (11, 4), "{patches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_upload_lost_in_the_middle_is_made_again() {
    let server = Server::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), 12 << 20, 1 << 20, 91);
    let state = dir.path().join("state");
    let args: Vec<String> = [
        "send",
        file.to_str().unwrap(),
        "--to",
        &server.endpoint(),
        "--state-dir",
        state.to_str().unwrap(),
        "--parallel",
        "2",
        "--bwlimit",
        "3M",
        "-q",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let job = tokio::task::spawn_blocking(move || robusto(args));
    // Once the final upload exists and a few parts are in, the server loses it (DELETE): the
    // parts placed in it go too.
    let journal = state.join("jobs");
    let final_url = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Ok(entries) = std::fs::read_dir(&journal) else {
            continue;
        };
        let found = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .find_map(|j| j["final_url"].as_str().map(str::to_string));
        if let Some(url) = found {
            break url;
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = reqwest::Client::new()
        .delete(&final_url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let out = job.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let url = out.stdout.trim().to_string();
    assert_ne!(url, final_url);
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_resumes_a_partial_download_with_range() {
    let server = Server::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), (3 << 20) + 7, 1 << 20, 94);
    let url = send_ok(&options(&file, &server.endpoint(), &dir.path().join("state"))).await;
    let got = dir.path().join("got.bin");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(dir.path().join("got.bin.partial"), &bytes[..(1 << 20) + 100]).unwrap();
    let out = robusto(["get", url.as_str(), "-o", got.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("verified"), "{}", out.stderr);
    assert_eq!(md5_file(&got), md5_file(&file));

    // A damaged partial download is caught by the check (its bytes are hashed, not trusted),
    // nothing is put in place, and the next run starts clean and succeeds.
    let again = dir.path().join("again.bin");
    let mut damaged = bytes[..(2 << 20) + 5].to_vec();
    damaged[12345] ^= 0x20;
    std::fs::write(dir.path().join("again.bin.partial"), &damaged).unwrap();
    let out = robusto(["get", url.as_str(), "-o", again.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("md5"), "{}", out.stderr);
    assert!(!again.exists());
    assert!(!dir.path().join("again.bin.partial").exists());
    let out = robusto(["get", url.as_str(), "-o", again.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(md5_file(&again), md5_file(&file));
}

#[test]
fn send_and_push_to_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.bin");
    random_file(&file, (2 << 20) + 9, 95);
    let received = dir.path().join("received");
    let state = dir.path().join("state");
    let out = robusto([
        "send",
        file.to_str().unwrap(),
        "--to",
        received.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--chunk-size",
        "1M",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let published = PathBuf::from(out.stdout.trim());
    assert!(published.starts_with(&received), "{}", out.stdout);
    assert_eq!(md5_file(&published), md5_file(&file));

    let tree = super::support::awkward_tree(dir.path());
    let out = robusto([
        "push",
        tree.to_str().unwrap(),
        "--to",
        received.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--name",
        "tree",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let published = PathBuf::from(out.stdout.trim());
    assert!(published.ends_with("tree.zip"), "{}", out.stdout);
    let list = super::support::sh(&format!("unzip -l '{}'", published.display()));
    assert!(list.stdout.contains("deep.txt"), "{}", list.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_with_parallel_uploads() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(server.addr, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), 40 << 20, 1 << 20, 96);
    let state = dir.path().join("state");
    let (kills, url) = super::cli_send::kill_loop(
        &file,
        &proxy.endpoint(),
        &state,
        &["--parallel", "3", "--bwlimit", "2M"],
    )
    .await;
    assert!(kills >= 20, "only {kills} kills landed before the upload finished");
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    proxy.log.assert_no_acked_resend();
    let patches = proxy.log.patches();
    let acked = patches.iter().filter(|p| p.status == Some(204)).count();
    assert_eq!(
        acked, 40,
        "each of the 40 chunks acknowledged exactly once: {patches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_stalls_and_503s_against_robusto_serve() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(
        server.addr,
        Faults {
            cut_every: Some((3 << 20) + 300_000),
            stall_patches: [6].into(),
            stall_for: std::time::Duration::from_secs(3),
            fail_patches: [1, 7].into(),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let size = (16 << 20) + 11;
    let file = packed_like(dir.path(), size, 1 << 20, 97);
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.stall_timeout = std::time::Duration::from_secs(1);
    let t = std::time::Instant::now();
    let url = send_ok(&opts).await;
    assert!(t.elapsed() >= opts.stall_timeout, "the stalled PATCH was waited out");
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    proxy.log.assert_no_acked_resend();
    let faults = proxy.log.faults.load(std::sync::atomic::Ordering::Relaxed);
    let wire = proxy.log.body_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(faults >= 6, "cuts, a stall and two 503s: {faults}");
    assert!(
        wire <= size + faults * (1 << 20),
        "{wire} bytes on the wire for {size} bytes and {faults} faults"
    );
    // A cut PATCH that carried a checksum stored nothing: every acknowledged offset is a chunk
    // boundary.
    for p in proxy.log.patches() {
        assert_eq!(p.offset % (1 << 20), 0, "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_a_file_or_the_environment() {
    let server = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("s3cret\n")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), 100_000, 1 << 20, 98);
    let state = dir.path().join("state");
    let base = [
        "send",
        file.to_str().unwrap(),
        "--to",
        &server.endpoint(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let out = robusto(base);
    assert_eq!(out.code, 1, "no token: refused, not retried: {}", out.stderr);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "\ns3cret\n").unwrap();
    crate::support::chmod(&tokens, 0o600);
    let mut with_file = base.to_vec();
    with_file.extend(["--token-file", tokens.to_str().unwrap()]);
    let out = robusto(with_file);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let url = out.stdout.trim().to_string();
    let out: super::support::Run = std::process::Command::new(super::support::bin())
        .args(["status", url.as_str()])
        .env("ROBUSTO_TOKEN", "s3cret")
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(r#""status":"complete""#), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_announcing_only_creation_gets_plain_patches() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(
        server.addr,
        Faults {
            announce: Some("creation".into()),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), (3 << 20) + 1, 1 << 20, 99);
    let mut opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    opts.parallel = 4;
    let url = send_ok(&opts).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches();
    assert_eq!(patches.len(), 4, "one upload, one PATCH per chunk: {patches:?}");
    assert!(
        patches.iter().all(|p| p.checksum.is_none()),
        "no checksum header: {patches:?}"
    );
    assert!(patches.iter().all(|p| p.path == patches[0].path), "no concatenation");

    // A one-chunk file goes in the creation request when creation-with-upload is offered.
    proxy.set(|f| f.announce = Some("creation,creation-with-upload,checksum".into()));
    let small = dir.path().join("small.bin");
    random_file(&small, 1000, 5);
    let before = proxy.log.patches().len();
    let url = send_ok(&options(&small, &proxy.endpoint(), &dir.path().join("state"))).await;
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&small));
    assert_eq!(
        proxy.log.patches().len(),
        before,
        "no PATCH: the bytes rode on the POST"
    );
}

/// A HEAD poller hammering every upload while `robusto send` runs costs the sender nothing:
/// every PATCH is answered 204, none is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_poller_costs_the_sender_nothing() {
    let server = Server::start(|_| {}).await;
    let proxy = Proxy::start(
        server.addr,
        Faults {
            delay_per_64k: Some(std::time::Duration::from_millis(2)),
            ..Faults::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = packed_like(dir.path(), 12 << 20, 1 << 20, 93);
    let opts = options(&file, &proxy.endpoint(), &dir.path().join("state"));
    let (store, http, base) = (server.state.store.clone(), reqwest::Client::new(), server.base.clone());
    let poller = tokio::spawn(async move {
        let mut heads = 0u64;
        loop {
            for id in store.list().await.unwrap_or_default() {
                let r = http
                    .head(format!("{base}/files/{id}"))
                    .header("Tus-Resumable", "1.0.0")
                    .send()
                    .await;
                if r.is_ok() {
                    heads += 1;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if heads > 100_000 {
                return heads;
            }
        }
    });
    let url = send_ok(&opts).await;
    poller.abort();
    assert_eq!(md5_file(&server.published(&url).await), md5_file(&file));
    let patches = proxy.log.patches();
    assert!(patches.iter().all(|p| p.status == Some(204)), "{patches:?}");
    assert_eq!(patches.len(), 12, "{patches:?}");
}
