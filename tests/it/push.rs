//! `robusto push`: pack + send in one job. The uploaded archive is the one `robusto pack` makes
//! of the same tree; the staging file goes after completion (or stays with `--keep-staging`);
//! a kill during sending is resumed from the finished staging file without packing again;
//! skipped files give exit 3.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::peers::{TusNode, md5_file, random_file};
use super::support::{TestEnv, chmod, sh};

fn staging_files(state: &Path) -> Vec<String> {
    let out = sh(&format!(
        "find '{}' -type f -name 'archive.*' ! -name '*.json'",
        state.join("staging").display()
    ));
    out.stdout.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_uploads_what_pack_makes_and_cleans_up() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let state = env.state();
    let packed = env.join("ref.zip");
    env.pack(&tree, &packed).ok();

    let out = env
        .push(&tree, &server.endpoint())
        .args(["--name", "nightly-{label}"])
        .run_async()
        .await
        .ok();
    let url = out.stdout.trim();
    assert_eq!(
        md5_file(&server.stored(url)),
        md5_file(&packed),
        "push sends the archive pack makes"
    );
    assert!(
        staging_files(&state).is_empty(),
        "staging removed: {:?}",
        staging_files(&state)
    );
    let info = fs::read_to_string(server.stored(url).with_extension("json")).unwrap();
    assert!(
        info.contains("nightly-tree.zip"),
        "the upload is named by the template: {info}"
    );

    let out = env
        .push(&tree, &server.endpoint())
        .args(["--keep-staging", "--format", "tar"])
        .run_async()
        .await
        .ok();
    let kept = staging_files(&state);
    assert_eq!(kept.len(), 1, "--keep-staging keeps the archive: {kept:?}");
    assert!(Path::new(&format!("{}.manifest.json", kept[0])).exists());
    assert_eq!(
        md5_file(&server.stored(out.stdout.trim())),
        md5_file(Path::new(&kept[0]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_killed_while_sending_resumes_without_packing_again() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let tree = env.mkdir("tree");
    random_file(&tree.join("big.bin"), 3 << 20, 71);
    let state = env.state();
    let args = ["--chunk-size", "256K", "--compress", "none", "--bwlimit", "1M"];
    let mut child = env.push(&tree, &server.endpoint()).args(args).spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first run was to be killed while sending"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(staging_files(&state).len(), 1, "the staging archive survives the kill");

    let out = env
        .push(&tree, &server.endpoint())
        .args(&args[..4])
        .run_async()
        .await
        .ok();
    assert!(out.stderr.contains("reusing the archive"), "{}", out.stderr);
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    assert!(
        !out.stderr.lines().any(|l| l.trim_start().starts_with("INFO packed")),
        "no second packing: {}",
        out.stderr
    );
    let packed = env.join("ref.zip");
    env.pack(&tree, &packed)
        .args(["--chunk-size", "256K", "--compress", "none"])
        .ok();
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&packed));
    assert!(staging_files(&state).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_a_skipped_file_completes_with_exit_3() {
    let server = TusNode::start();
    let env = TestEnv::new();
    chmod(env.path(), 0o777);
    let tree = env.mkdir("tree");
    env.write("tree/ok.txt", b"fine\n");
    let locked = env.write("tree/locked.txt", b"no\n");
    sh(&format!("chmod -R a+rwX '{}'", tree.display()));
    chmod(&locked, 0o000);
    chmod(env.mkdir("state"), 0o777);
    // root reads anything: run as nobody so that the file is really unreadable
    let out = env
        .push(&tree, &server.endpoint())
        .unprivileged()
        .run_async()
        .await
        .code(3);
    assert!(
        out.stderr.contains("locked.txt"),
        "the skipped file is named: {}",
        out.stderr
    );
    assert!(server.stored(out.stdout.trim()).exists(), "{}", out.stdout);

    // -q (the README's cron line) still names it, at warning level; so do --json's summary and
    // the hooks' environment
    env.write("tree/more.txt", b"changed\n");
    sh(&format!("chmod a+r '{}'", env.join("tree/more.txt").display()));
    let quiet = env
        .push(&tree, &server.endpoint())
        .arg("-q")
        .unprivileged()
        .run_async()
        .await
        .code(3);
    assert!(
        quiet.stderr.contains("WARN") && quiet.stderr.contains("locked.txt"),
        "{}",
        quiet.stderr
    );
    env.write("tree/more.txt", b"changed again\n");
    let json = env
        .push(&tree, &server.endpoint())
        .arg("--json")
        .unprivileged()
        .run_async()
        .await
        .code(3);
    for line in json.stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("--json: a stderr line is not JSON ({e}): {line}"));
        assert!(v.get("event").is_some() || v.get("level").is_some(), "{line}");
    }
    assert!(
        json.stderr.contains(r#""level":"WARN""#) && json.stderr.contains("locked.txt"),
        "the skipped file's warning is a JSON record: {}",
        json.stderr
    );
    let summary = json
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {}", json.stderr));
    let skipped = summary["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{summary}");
    assert!(skipped[0].as_str().unwrap().contains("locked.txt"), "{summary}");
}
