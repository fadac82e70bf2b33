//! Incremental nightly backups through the real binary: `push --incremental` sends a full
//! archive, then only what changed; `restore NAME` of any point gives the tree as it was then
//! (content, modes, mtimes, links, deletions); GNU tar restores the same chain with `-G`; a kill
//! during an incremental push resumes and the next night is still right; a chain missing a link
//! is refused before anything is written; prune keeps chains whole.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use super::serve_env::{Server, bytes};
use super::support::{Node, TestEnv, chmod, require_tool, sh, signal, snapshot};

/// `robusto push tree --incremental` as night `n` (its name carries a date, as the default
/// name does, so prune groups the nights).
fn night(env: &TestEnv, endpoint: &str, n: u32, extra: &[&str]) -> super::support::TestCommand {
    env.push("tree", endpoint)
        .args([
            "--incremental",
            "--format",
            "tar",
            "--compress",
            "zstd",
            "--chunk-size",
            "256KiB",
        ])
        .arg("--name")
        .arg(format!("web-2026-12-{n:02}T020000"))
        .args(extra)
}

fn name(n: u32) -> String {
    format!("web-2026-12-{n:02}T020000.tar.zst")
}

/// The server's listing.
fn list(env: &TestEnv, endpoint: &str) -> Vec<serde_json::Value> {
    let run = env.robusto("list").args(["--json", "--from", endpoint]).ok();
    serde_json::from_str::<Vec<serde_json::Value>>(&run.stdout).unwrap()
}

fn listed<'a>(uploads: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    uploads
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {uploads:?}"))
}

/// Restores night `n` by name into a fresh folder and compares it with `expected`.
fn assert_restores(env: &TestEnv, endpoint: &str, n: u32, expected: &BTreeMap<String, Node>) {
    let into = env.join(format!("restored-{n}"));
    env.restore(name(n), &into).args(["--from", endpoint]).ok();
    let got = snapshot(&into.join("tree"));
    for (k, v) in expected {
        assert_eq!(Some(v), got.get(k), "night {n}: {k:?} differs");
    }
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "night {n}: restored entries that were deleted: {extra:?}"
    );
}

/// Writes `data` over `path` keeping its size and putting its mtime back: only ctime tells.
fn rewrite_keeping_mtime(path: &Path, data: &[u8]) {
    let old = fs::metadata(path).unwrap();
    assert_eq!(old.len(), data.len() as u64);
    fs::write(path, data).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_night_restores_to_the_tree_it_saw_and_gnu_tar_agrees() {
    let env = TestEnv::new();
    let server = Server::start(|_| {}).await;
    let endpoint = server.endpoint();
    let t = env.mkdir("tree");
    env.write("tree/a/one.txt", "one, the first version\n");
    env.write("tree/a/two.txt", "two\n");
    env.write("tree/d.txt", "renamed later\n");
    env.write("tree/mode.sh", "#!/bin/sh\n");
    env.write("tree/big.bin", bytes(3 << 20, 7));
    env.mkdir("tree/b/inner");
    env.write("tree/b/inner/x", "x");
    env.mkdir("tree/empty");
    env.write("tree/f", "a file that becomes a folder\n");
    symlink("a/one.txt", t.join("link")).unwrap();

    night(&env, &endpoint, 1, &[]).run_async().await.ok();
    let mut points = vec![snapshot(&t)];

    // night 2: added, modified with the same size and mtime, deleted, renamed, chmod-ed, a
    // folder replaced by a file
    env.write("tree/c.txt", "new on night 2\n");
    rewrite_keeping_mtime(&t.join("a/one.txt"), b"ONE, THE FIRST VERSION\n");
    fs::remove_file(t.join("a/two.txt")).unwrap();
    fs::rename(t.join("d.txt"), t.join("e.txt")).unwrap();
    chmod(t.join("mode.sh"), 0o755);
    fs::remove_dir_all(t.join("b")).unwrap();
    env.write("tree/b", "b is a file now\n");
    night(&env, &endpoint, 2, &[]).run_async().await.ok();
    points.push(snapshot(&t));

    // night 3: a file replaced by a folder, the big file changed, a link pointing elsewhere
    fs::remove_file(t.join("f")).unwrap();
    env.write("tree/f/inside.txt", "f is a folder now\n");
    let mut big = bytes(3 << 20, 7);
    big[1 << 20] ^= 0xff;
    fs::write(t.join("big.bin"), &big).unwrap();
    fs::remove_file(t.join("link")).unwrap();
    symlink("e.txt", t.join("link")).unwrap();
    night(&env, &endpoint, 3, &[]).run_async().await.ok();
    points.push(snapshot(&t));

    // night 4: nothing but a deleted folder
    fs::remove_dir_all(t.join("empty")).unwrap();
    night(&env, &endpoint, 4, &[]).run_async().await.ok();
    points.push(snapshot(&t));

    let uploads = list(&env, &endpoint);
    let full = listed(&uploads, &name(1));
    assert_eq!(full["metadata"]["robusto-level"], "0", "{full}");
    assert!(
        full["size"].as_u64().unwrap() > 3 << 20,
        "the full archive holds everything: {full}"
    );
    for n in 2..=4 {
        let u = listed(&uploads, &name(n));
        assert_eq!(u["metadata"]["robusto-level"], (n - 1).to_string(), "{u}");
        assert_eq!(u["metadata"]["robusto-parent"], name(n - 1), "{u}");
        assert_eq!(u["metadata"]["robusto-chain"], name(1), "{u}");
        let parent_md5 = listed(&uploads, &name(n - 1))["md5"].clone();
        assert_eq!(u["metadata"]["robusto-parent-md5"], parent_md5, "{u}");
    }
    // only night 3 changed the big file
    let size = |n| listed(&uploads, &name(n))["size"].as_u64().unwrap();
    assert!(
        size(2) < 64 << 10 && size(4) < 64 << 10,
        "nights 2 and 4 carry no big file: {uploads:?}"
    );
    assert!(size(3) > 3 << 20, "night 3 carries the changed big file");
    let text = env.robusto("list").args(["--from", &endpoint]).ok().stdout;
    assert!(
        text.contains(&format!("(incremental level 2 after {})", name(2))),
        "{text}"
    );
    let full_line = text.lines().find(|l| l.contains(&name(1))).unwrap();
    assert!(full_line.contains(" MiB  "), "human sizes: {full_line}");
    let exact = env.robusto("list").args(["--from", &endpoint, "--bytes"]).ok().stdout;
    let full_size = full["size"].as_u64().unwrap().to_string();
    assert!(
        exact.lines().any(|l| l.contains(&name(1)) && l.contains(&full_size)),
        "{exact}"
    );

    for (i, expected) in points.iter().enumerate() {
        assert_restores(&env, &endpoint, i as u32 + 1, expected);
    }

    // GNU tar restores the same chain link by link with -G (--incremental), deletions included.
    require_tool("tar");
    let gnu = env.mkdir("gnu");
    for n in 1..=4 {
        let id = listed(&uploads, &name(n))["id"].as_str().unwrap().to_string();
        let file = env.join(format!("link-{n}.tar.zst"));
        env.robusto("get")
            .arg(format!("{endpoint}{id}"))
            .arg("-o")
            .arg(&file)
            .ok();
        sh(&format!(
            "cd '{}' && tar --zstd -x -G -f '{}'",
            gnu.display(),
            file.display()
        ));
    }
    let got = snapshot(&gnu.join("tree"));
    let last = &points[3];
    for (k, v) in last {
        match (v, got.get(k)) {
            // GNU tar sets no folder times on -G extraction of later links' children
            (Node::Dir { mode, .. }, Some(Node::Dir { mode: m, .. })) => assert_eq!(mode, m, "{k}"),
            (v, got) => assert_eq!(Some(v), got, "GNU tar: {k:?} differs"),
        }
    }
    let extra: Vec<_> = got.keys().filter(|k| !last.contains_key(*k)).collect();
    assert!(extra.is_empty(), "GNU tar kept deleted entries: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_incremental_push_resumes_and_the_next_night_is_still_right() {
    let env = TestEnv::new();
    let server = Server::start(|_| {}).await;
    let endpoint = server.endpoint();
    let t = env.mkdir("tree");
    env.write("tree/keep.txt", "unchanged all along\n");
    env.write("tree/gone.txt", "deleted on night 2\n");
    night(&env, &endpoint, 1, &[]).run_async().await.ok();

    // night 2 carries 4 MiB at 1 MiB/s: killed while sending, then run again
    fs::remove_file(t.join("gone.txt")).unwrap();
    env.write("tree/new.bin", bytes(4 << 20, 3));
    let cmd = night(&env, &endpoint, 2, &["--bwlimit", "1M"]);
    let job = cmd.spawn();
    let uploads = server.data().join("uploads");
    for _ in 0..100 {
        if fs::read_dir(&uploads).map(|r| r.count() > 1).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&job, libc::SIGKILL);
    let _ = job.wait_with_output().await;
    night(&env, &endpoint, 2, &[]).run_async().await.ok();
    let night2 = snapshot(&t);

    // night 3 is an incremental of night 2 (not of night 1, and not a full)
    env.write("tree/third.txt", "night 3\n");
    night(&env, &endpoint, 3, &[]).run_async().await.ok();
    let night3 = snapshot(&t);
    let uploads = list(&env, &endpoint);
    let third = listed(&uploads, &name(3));
    assert_eq!(third["metadata"]["robusto-parent"], name(2), "{third}");
    assert!(
        third["size"].as_u64().unwrap() < 64 << 10,
        "night 3 does not resend new.bin: {third}"
    );
    assert_restores(&env, &endpoint, 2, &night2);
    assert_restores(&env, &endpoint, 3, &night3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_missing_a_link_is_refused_before_anything_is_written() {
    let env = TestEnv::new();
    let server = Server::start(|_| {}).await;
    let endpoint = server.endpoint();
    env.write("tree/a.txt", "a");
    night(&env, &endpoint, 1, &[]).run_async().await.ok();
    env.write("tree/b.txt", "b");
    night(&env, &endpoint, 2, &[]).run_async().await.ok();
    env.write("tree/c.txt", "c");
    night(&env, &endpoint, 3, &[]).run_async().await.ok();
    let uploads = list(&env, &endpoint);
    let id = listed(&uploads, &name(2))["id"].as_str().unwrap().to_string();
    let tus = server.client();
    let r = tus
        .req(reqwest::Method::DELETE, &format!("/files/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let into = env.join("out");
    let run = env.restore(name(3), &into).args(["--from", &endpoint]).code(1);
    assert!(
        run.stderr.contains(&format!("its parent {}", name(2))) && run.stderr.contains("chain is broken"),
        "{run:?}"
    );
    assert!(
        !into.exists() || fs::read_dir(&into).unwrap().count() == 0,
        "nothing written"
    );
    // the links before the gap still restore
    env.restore(name(1), &into).args(["--from", &endpoint]).ok();
    assert!(into.join("tree/a.txt").exists() && !into.join("tree/b.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_chains_whole_and_full_every_starts_new_ones() {
    let env = TestEnv::new();
    let server = Server::start(|_| {}).await;
    let endpoint = server.endpoint();
    env.write("tree/a.txt", "a");
    // --full-every 3: nights 1-3 are chain A (full, 1, 2), nights 4-5 start chain B
    for n in 1..=5 {
        if n == 4 {
            // completion times are listed to the second: chain B completes after chain A
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        env.write(format!("tree/night-{n}.txt"), format!("{n}"));
        night(&env, &endpoint, n, &["--full-every", "3"]).run_async().await.ok();
    }
    let uploads = list(&env, &endpoint);
    let levels: Vec<String> = (1..=5)
        .map(|n| {
            listed(&uploads, &name(n))["metadata"]["robusto-level"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(levels, ["0", "1", "2", "0", "1"]);
    assert_eq!(listed(&uploads, &name(5))["metadata"]["robusto-chain"], name(4));

    // --at: the newest push completed by then, with its chain
    let at = listed(&uploads, &name(3))["completed"].as_u64().unwrap();
    let then = env.join("then");
    env.restore("web-", &then)
        .args(["--from", &endpoint, "--at", &at.to_string()])
        .ok();
    assert!(then.join("tree/night-3.txt").exists() && !then.join("tree/night-4.txt").exists());
    let run = env
        .restore("web-", env.join("never"))
        .args(["--from", &endpoint, "--at", "2001-01-01"])
        .code(1);
    assert!(run.stderr.contains("no completed upload named 'web-'"), "{run:?}");
    let run = env
        .restore("web-", env.join("never"))
        .args(["--from", &endpoint, "--at", "yesterday"])
        .code(2);
    assert!(run.stderr.contains("not a time"), "{run:?}");

    let dry = env
        .robusto("prune")
        .args(["--from", &endpoint, "--keep-last", "1", "--dry-run"])
        .ok();
    for n in 1..=3 {
        let line = dry.stdout.lines().find(|l| l.contains(&name(n))).unwrap_or_default();
        assert!(line.starts_with("would remove  "), "chain A goes whole: {}", dry.stdout);
    }
    assert!(
        dry.stdout.contains(&format!("{}  (newest, last, chain)", name(4))),
        "{}",
        dry.stdout
    );
    env.robusto("prune")
        .args(["--from", &endpoint, "--keep-last", "1"])
        .ok();
    let left: Vec<String> = list(&env, &endpoint)
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&name(4)) && left.contains(&name(5)),
        "chain B stays whole: {left:?}"
    );
    let into = env.join("out");
    env.restore(name(5), &into).args(["--from", &endpoint]).ok();
    for n in 1..=5 {
        assert!(into.join(format!("tree/night-{n}.txt")).exists(), "night {n}'s file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_needs_tar_and_a_lost_state_means_a_full_archive() {
    let env = TestEnv::new();
    let server = Server::start(|_| {}).await;
    let endpoint = server.endpoint();
    env.write("tree/a.txt", "a");
    let run = env.push("tree", &endpoint).arg("--incremental").code(2);
    assert!(run.stderr.contains("--format tar"), "{run:?}");
    night(&env, &endpoint, 1, &[]).run_async().await.ok();
    fs::remove_dir_all(env.state().join("incremental")).unwrap();
    night(&env, &endpoint, 2, &[]).run_async().await.ok();
    let uploads = list(&env, &endpoint);
    assert_eq!(
        listed(&uploads, &name(2))["metadata"]["robusto-level"],
        "0",
        "a new full archive"
    );
}
