//! `robusto push` sending while it packs (robusto-repr-digest): the upload is created with a
//! deferred length, follows the packer, and gets its length and whole-file MD5 with the last
//! chunk; the server checks the whole file before publishing. A push killed while packing and
//! sending packs again, checks the regenerated chunks against those it began to send, and
//! resumes the same upload; a tree that changed in between becomes a fresh upload.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::peers::{md5_file, random_file};
use super::serve_env::Server;
use super::support::TestEnv;

/// The upload records (`*.info`) in the server's data folder.
fn infos(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(data.join("uploads")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "info") {
            out.push(fs::read_to_string(p).unwrap());
        }
    }
    out
}

/// Pushed slowly: zstd level 19 on one thread, so that a kill finds it still packing.
const SLOW: [&str; 10] = [
    "--chunk-size",
    "256K",
    "--format",
    "tar",
    "--compress",
    "zstd",
    "--level",
    "19",
    "--threads",
    "1",
];

/// The archive `robusto pack` makes of `tree` with the pack flags of `push_args`.
fn packed_alike(env: &TestEnv, tree: &Path, push_args: &[&str]) -> std::path::PathBuf {
    let reference = env.join("ref.tar.zst");
    env.pack(tree, &reference).args(push_args).ok();
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sends_while_packing_and_the_server_checks_the_late_digest() {
    let server = Server::start(|_| {}).await;
    let env = TestEnv::new();
    let tree = env.mkdir("tree");
    random_file(&tree.join("big.bin"), 5 << 20, 3);
    fs::write(tree.join("small.txt"), "hello\n").unwrap();
    let args = [
        "--chunk-size",
        "512K",
        "--format",
        "tar",
        "--compress",
        "zstd",
        "--threads",
        "2",
    ];
    let out = env.push(&tree, &server.endpoint()).args(args).run_async().await.ok();
    let url = out.stdout.trim();
    let published = server.published(url).await;
    let reference = packed_alike(&env, &tree, &args);
    assert_eq!(md5_file(&published), md5_file(&reference), "the archive pack makes");
    let infos = infos(server.data());
    assert_eq!(infos.len(), 1, "{infos:?}");
    assert!(
        infos[0].contains("\"digest_wanted\": \"md5\"") || infos[0].contains("\"digest_wanted\":\"md5\""),
        "created with a deferred length and Want-Repr-Digest: {}",
        infos[0]
    );
    assert!(infos[0].contains("repr_digest"), "the digest came late: {}", infos[0]);
    assert!(infos[0].contains(&md5_file(&reference)), "checked whole: {}", infos[0]);
}

/// Starts a slow push (zstd level 19 on one thread, a throttled link) and kills it while it
/// still packs and sends; returns the upload URL the server had by then.
async fn kill_while_packing(env: &TestEnv, tree: &Path, server: &Server, args: &[&str]) {
    let mut child = env
        .push(tree, &server.endpoint())
        .args(args)
        .args(["--bwlimit", "2M"])
        .spawn();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first run was to be killed while packing"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let committed = super::support::sh(&format!(
        "find '{}' -name 'archive.*' ! -name '*.partial' ! -name '*.json'",
        env.state().join("staging").display()
    ));
    assert!(
        committed.stdout.trim().is_empty(),
        "killed before packing finished: {}",
        committed.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_killed_while_packing_and_sending_resumes_the_same_upload() {
    let server = Server::start(|_| {}).await;
    let env = TestEnv::new();
    let tree = env.mkdir("tree");
    random_file(&tree.join("a.bin"), 12 << 20, 5);
    random_file(&tree.join("b.bin"), 12 << 20, 6);
    let args = SLOW;
    kill_while_packing(&env, &tree, &server, &args).await;
    let before = infos(server.data());
    assert_eq!(before.len(), 1, "one upload begun: {before:?}");

    let out = env.push(&tree, &server.endpoint()).args(args).run_async().await.ok();
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    let after = infos(server.data());
    assert_eq!(after.len(), 1, "the same upload, resumed: {after:?}");
    let reference = packed_alike(&env, &tree, &args);
    let published = server.published(out.stdout.trim()).await;
    assert_eq!(md5_file(&published), md5_file(&reference));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_changed_between_runs_becomes_a_fresh_upload() {
    let server = Server::start(|_| {}).await;
    let env = TestEnv::new();
    let tree = env.mkdir("tree");
    random_file(&tree.join("a.bin"), 12 << 20, 7);
    random_file(&tree.join("b.bin"), 12 << 20, 8);
    let args = SLOW;
    kill_while_packing(&env, &tree, &server, &args).await;
    // the first file changes (same size, other bytes): the chunks the server holds are stale
    random_file(&tree.join("a.bin"), 12 << 20, 9);

    let out = env.push(&tree, &server.endpoint()).args(args).run_async().await.ok();
    assert!(out.stderr.contains("differs"), "{}", out.stderr);
    let reference = packed_alike(&env, &tree, &args);
    let published = server.published(out.stdout.trim()).await;
    assert_eq!(md5_file(&published), md5_file(&reference), "the new tree, not a mix");
}
