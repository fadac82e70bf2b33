//! Interop: tus clients written by others (tus-js-client on node, tuspy) upload to
//! `robusto serve`; the stored file's MD5 must equal the source's. The peers are installed by
//! `bash .ci/run`; a missing peer fails the test, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use robusto::fingerprint::Md5;

use crate::serve_env::{Server, bytes, repo};

const MIB: usize = 1 << 20;

fn peer_missing(what: &str) -> ! {
    panic!("{what} is not installed: run `bash .ci/run` (it installs the interop peers) and try again")
}

fn node() -> Command {
    if !repo().join("node_modules/tus-js-client/package.json").exists() {
        peer_missing("tus-js-client (node_modules)");
    }
    let mut c = Command::new("node");
    c.current_dir(repo()).arg(repo().join("interop/tus-js-upload.mjs"));
    c
}

fn python() -> Command {
    let py = repo().join(".venv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import tusclient"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        peer_missing("tuspy (.venv)");
    }
    let mut c = Command::new(py);
    c.current_dir(repo()).arg(repo().join("interop/tuspy_upload.py"));
    c
}

/// Runs a peer to completion off the runtime's threads; returns its JSON answer.
pub(crate) async fn run(mut cmd: Command) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peer failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("peer printed '{stdout}': {e}"))
}

/// A source file of `len` bytes; returns its path and MD5.
fn source(dir: &Path, name: &str, len: usize) -> (PathBuf, Md5) {
    let data = bytes(len, len as u64 + 1);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, Md5::of(&data))
}

fn stored_md5(server: &Server, name: &str) -> Md5 {
    let path = server.data().join("files").join(name);
    Md5::of(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `--meta` arguments for a file name and its whole-file checksum.
fn meta_args(name: &str, md5: Md5) -> Vec<String> {
    vec![
        "--meta".into(),
        format!("filename={name}"),
        "--meta".into(),
        format!("checksum=md5 {}", md5.base64()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_uploads_every_size_and_chunk_size() {
    let server = Server::start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let cases: &[(usize, &str)] = &[
        (0, "Infinity"),
        (1, "Infinity"),
        (5 * MIB + 1, "1048576"),
        (5 * MIB + 1, "5242880"),
        (5 * MIB + 1, "Infinity"),
        (64 * MIB, "8388608"),
        (64 * MIB, "Infinity"),
    ];
    for (i, &(len, chunk)) in cases.iter().enumerate() {
        let name = format!("js-{i}-{len}.bin");
        let (path, md5) = source(src.path(), &name, len);
        let mut cmd = node();
        cmd.arg(server.endpoint())
            .arg(&path)
            .arg(chunk)
            .args(meta_args(&name, md5));
        let answer = run(cmd).await;
        assert!(answer["url"].as_str().unwrap().contains("/files/"), "{answer}");
        assert_eq!(stored_md5(&server, &name), md5, "{len} bytes in chunks of {chunk}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_over_a_link_cut_every_2_mb_is_unaffected_by_held_chunks() {
    // robusto serve announces robusto-chunk-prefix; tus-js-client sends no checksum, so what
    // arrives before each cut is kept and counted (tus), and it never sees a held chunk.
    let server = Server::start(|_| {}).await;
    let proxy = crate::proxy::Proxy::start(
        server.addr,
        crate::proxy::Faults {
            cut_every: Some(2_000_000),
            ..Default::default()
        },
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let (path, md5) = source(src.path(), "cut.bin", 16 * MIB + 3);
    let mut cmd = node();
    cmd.arg(proxy.endpoint())
        .arg(&path)
        .arg("8388608")
        .args(meta_args("cut.bin", md5));
    run(cmd).await;
    assert_eq!(stored_md5(&server, "cut.bin"), md5);
    let cuts = proxy.log.faults.load(std::sync::atomic::Ordering::Relaxed);
    assert!(cuts >= 8, "{cuts} cuts");
    let wire = proxy.log.body_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(wire, (16 * MIB + 3) as u64, "every cut cost only the bytes in flight");
    assert!(
        proxy
            .log
            .patches()
            .iter()
            .all(|p| p.prefix.is_none() && p.checksum.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_an_aborted_upload() {
    let server = Server::start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let (path, md5) = source(src.path(), "resumed.bin", 5 * MIB + 1);
    let mut cmd = node();
    cmd.arg(server.endpoint())
        .arg(&path)
        .arg("1048576")
        .args(["--abort-at", "2097152"])
        .args(meta_args("resumed.bin", md5));
    let answer = run(cmd).await;
    assert_eq!(answer["resumed"], true);
    assert_eq!(stored_md5(&server, "resumed.bin"), md5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_parallel_upload_and_creation_with_data() {
    let server = Server::start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let (path, md5) = source(src.path(), "parallel.bin", 5 * MIB + 1);
    let mut cmd = node();
    cmd.arg(server.endpoint())
        .arg(&path)
        .arg("1048576")
        .args(["--parallel", "3"])
        .args(meta_args("parallel.bin", md5));
    run(cmd).await;
    assert_eq!(
        stored_md5(&server, "parallel.bin"),
        md5,
        "concatenated from 3 partial uploads"
    );

    let (path, md5) = source(src.path(), "with-data.bin", MIB + 7);
    let mut cmd = node();
    cmd.arg(server.endpoint())
        .arg(&path)
        .arg("524288")
        .arg("--creation-data")
        .args(meta_args("with-data.bin", md5));
    run(cmd).await;
    assert_eq!(stored_md5(&server, "with-data.bin"), md5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_uploads_every_size_with_and_without_upload_checksum() {
    let server = Server::start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let cases: &[(usize, usize, bool)] = &[
        (0, MIB, false),
        (1, MIB, true),
        (5 * MIB + 1, MIB, true),
        (5 * MIB + 1, 2 * MIB, false),
        (64 * MIB, 8 * MIB, true),
    ];
    for (i, &(len, chunk, checksum)) in cases.iter().enumerate() {
        let name = format!("py-{i}-{len}.bin");
        let (path, md5) = source(src.path(), &name, len);
        let mut cmd = python();
        cmd.arg(server.endpoint())
            .arg(&path)
            .arg(chunk.to_string())
            .args(meta_args(&name, md5));
        if checksum {
            cmd.arg("--checksum");
        }
        run(cmd).await;
        assert_eq!(stored_md5(&server, &name), md5, "{len} bytes in chunks of {chunk}");
        std::fs::remove_file(&path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_resumes_an_interrupted_upload() {
    let server = Server::start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let (path, md5) = source(src.path(), "py-resumed.bin", 5 * MIB + 1);
    let mut cmd = python();
    cmd.arg(server.endpoint())
        .arg(&path)
        .arg(MIB.to_string())
        .args(["--stop-after", "2", "--checksum"])
        .args(meta_args("py-resumed.bin", md5));
    let answer = run(cmd).await;
    assert_eq!(answer["resumed"], true);
    assert_eq!(stored_md5(&server, "py-resumed.bin"), md5);
}
