//! The nightly backup job (issue 5) through the real binary: a `robusto.toml` profile drives
//! push; the server lists what arrived; prune keeps what the policy says; restore brings the
//! newest back by name, byte for byte; hooks see the outcome; two runs at once do not collide.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::serve_env::Server;
use super::support::{Run, TestCommand, TestEnv, assert_same_tree, signal};

/// `robusto --config CONFIG --profile nightly`, to be followed by the command.
fn nightly(env: &TestEnv, config: &Path) -> TestCommand {
    env.robusto("--config").arg(config).args(["--profile", "nightly"])
}

/// Starts `cmd` in the background and returns once it is sending (its upload exists on the
/// server).
async fn spawn_until_sending(cmd: &TestCommand, s: &Server) -> tokio::process::Child {
    let job = cmd.spawn();
    let uploads = s.data().join("uploads");
    for _ in 0..100 {
        if fs::read_dir(&uploads).map(|r| r.count() > 0).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    job
}

/// Writes `token` and `robusto.toml` with `[profile.nightly]`: TREE to ENDPOINT with that token,
/// the environment's state dir, tar.zst named by date and time, then `extra`.
fn write_profile(env: &TestEnv, tree: &Path, endpoint: &str, extra: &str) -> PathBuf {
    let token = env.write_secret("token", "nightly-secret\n");
    env.write(
        "robusto.toml",
        format!(
            "[profile.nightly]\npaths = [\"{}\"]\nto = \"{endpoint}\"\ntoken-file = \"{}\"\nstate-dir = \"{}\"\n\
             format = \"tar\"\ncompress = \"zstd\"\nname = \"web-{{date}}T{{time}}\"\n{extra}",
            tree.display(),
            token.display(),
            env.state().display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_push_list_prune_restore_cycle() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let log = env.join("hooks.log");
    let config = write_profile(
        &env,
        &tree,
        &s.endpoint(),
        &format!(
            "run-after = \"echo $ROBUSTO_RESULT $ROBUSTO_EXIT $ROBUSTO_BYTES $ROBUSTO_URL >> {}\"\n",
            log.display()
        ),
    );
    let push = nightly(&env, &config).arg("push");
    // three nights, the tree changing each time (an unchanged tree is the same archive: no new upload)
    let mut urls = Vec::new();
    for night in 0..3 {
        if night > 0 {
            // completion times are kept to the second: nights must be told apart
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        fs::write(tree.join("changes.log"), format!("night {night}\n")).unwrap();
        let r = push.run_async().await;
        assert_eq!(r.code, 0, "night {night}: {}", r.stderr);
        urls.push(r.stdout.trim().to_string());
    }
    assert!(urls.iter().all(|u| u.starts_with(&s.endpoint())), "{urls:?}");
    let hook_lines = fs::read_to_string(&log).unwrap();
    assert_eq!(hook_lines.lines().count(), 3, "{hook_lines}");
    assert!(hook_lines.lines().all(|l| l.starts_with("ok 0 ")), "{hook_lines}");
    assert!(hook_lines.lines().last().unwrap().ends_with(&urls[2]), "{hook_lines}");

    let from = [
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        env.join("token").display().to_string(),
    ];
    let list = env.robusto("--json").arg("list").args(&from);
    let listed: Vec<robusto::protocol::Listed> = serde_json::from_str(&list.run_async().await.ok().stdout).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|l| l.name.starts_with("web-") && l.name.ends_with(".tar.zst")),
        "{listed:?}"
    );

    let prune = env.robusto("prune").args(&from);
    let dry = prune
        .clone()
        .args(["--keep-last", "2", "--dry-run"])
        .run_async()
        .await
        .ok();
    assert_eq!(dry.stdout.matches("would remove").count(), 1, "{}", dry.stdout);
    let pruned = prune.clone().args(["--keep-last", "2"]).run_async().await.ok();
    assert_eq!(pruned.stdout.matches("removed").count(), 1, "{}", pruned.stdout);
    let after: Vec<robusto::protocol::Listed> = serde_json::from_str(&list.run_async().await.ok().stdout).unwrap();
    assert_eq!(after.len(), 2);
    assert!(!after.iter().any(|l| urls[0].ends_with(&l.url)), "the oldest went");
    let none = prune.run_async().await;
    assert_eq!(none.code, 2, "no policy is a usage error: {}", none.stderr);

    // restore the newest by name, and the oldest-remaining by URL
    let newest = &after.last().unwrap().name;
    let into = env.join("restored");
    env.restore(newest, &into).args(&from).run_async().await.ok();
    assert_same_tree(&tree, &into.join("tree"));
    assert_eq!(fs::read_to_string(into.join("tree/changes.log")).unwrap(), "night 2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_a_failing_before_aborts_and_failed_runs_on_75() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let log = env.join("hooks.log");
    let l = log.display();
    // nothing listens on port 1: the link is down, past a budget of one retry → 75
    let config = write_profile(
        &env,
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "retries = 1\nrun-after = \"echo after >> {l}\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\nrun-finally = \"echo finally >> {l}\"\n"
        ),
    );
    let push = nightly(&env, &config).arg("push");
    push.run_async().await.code(75);
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed unfinished 75\nfinally\n");

    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("run-before = \"exit 3\"\n");
    fs::write(&config, text).unwrap();
    fs::remove_file(&log).unwrap();
    let r = push.run_async().await.code(1);
    assert!(r.stderr.contains("run-before hook failed"), "{}", r.stderr);
    // the job did not start, but the failure hooks still ran
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed failed 1\nfinally\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_job_resumably_and_runs_the_hooks() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let log = env.join("hooks.log");
    let l = log.display();
    let config = write_profile(
        &env,
        &tree,
        &s.endpoint(),
        &format!(
            "bwlimit = \"64K\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\nrun-finally = \"echo finally >> {l}\"\n"
        ),
    );
    let push = nightly(&env, &config).arg("push");
    let job = spawn_until_sending(&push, &s).await;
    signal(&job, libc::SIGTERM);
    let out = Run::of_child(job).await.code(130);
    assert!(out.stderr.contains("interrupted"), "{}", out.stderr);
    assert_eq!(
        fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}: {}", out.stderr)),
        "failed interrupted 130\nfinally\n"
    );

    // the next run continues the same upload and completes
    let mut text = fs::read_to_string(&config).unwrap();
    text = text.replace("bwlimit = \"64K\"\n", "");
    fs::write(&config, text).unwrap();
    fs::remove_file(&log).unwrap();
    let again = push.run_async().await.ok();
    assert_eq!(fs::read_to_string(&log).unwrap(), "finally\n");
    let into = env.join("back");
    env.restore(again.stdout.trim(), &into)
        .arg("--token-file")
        .arg(env.join("token"))
        .run_async()
        .await
        .ok();
    assert_same_tree(&tree, &into.join(tree.file_name().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_packing_leaves_no_archive_and_runs_the_hooks() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let log = env.join("hooks.log");
    let l = log.display();
    // run-before stops the job itself (as `systemctl stop` would) just before it packs
    let config = write_profile(
        &env,
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "run-before = \"kill -TERM $PPID; sleep 0.5\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\n"
        ),
    );
    let r = nightly(&env, &config).arg("push").run_async().await.code(130);
    assert!(r.stderr.contains("interrupted while packing"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed interrupted 130\n");
    // nothing half-packed is left to be mistaken for an archive
    let staged: Vec<_> = walkdir::WalkDir::new(env.state())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("archive"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_large_file_stops_packing_at_once() {
    let env = TestEnv::new();
    let tree = env.mkdir("big");
    // 8 GiB of zeros (sparse): far longer to pack than the test waits
    fs::File::create(tree.join("disk.img"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let log = env.join("hooks.log");
    let config = write_profile(
        &env,
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "run-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {}\"\n",
            log.display()
        ),
    );
    let job = nightly(&env, &config).arg("push").spawn();
    // wait until the archive is being written, then stop the job
    let state = env.state();
    let packing = || {
        walkdir::WalkDir::new(&state)
            .into_iter()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    };
    for _ in 0..200 {
        if packing() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(packing(), "the job started packing");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&job, libc::SIGTERM);
    let out = Run::of_child(job).await.code(130);
    assert!(out.stderr.contains("interrupted while packing"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed interrupted 130\n");
    assert!(!packing(), "the half-written archive is gone");
}

#[test]
fn config_errors_name_the_key_and_the_file_and_check_shows_sources() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let config = write_profile(&env, &tree, "http://127.0.0.1:9/files/", "levle = 3\n");
    let r = nightly(&env, &config).arg("push").code(2);
    assert!(
        r.stderr.contains("unknown key 'levle'") && r.stderr.contains("robusto.toml"),
        "{}",
        r.stderr
    );

    let config = write_profile(&env, &tree, "http://127.0.0.1:9/files/", "level = 99\n");
    let r = nightly(&env, &config).arg("push").run();
    assert_eq!(r.code, 2, "a bad value is a usage error: {}", r.stderr);
    assert!(r.stderr.contains("level 99 is out of range"), "{}", r.stderr);

    let config = write_profile(&env, &tree, "http://127.0.0.1:9/files/", "level = 9\n");
    let check = nightly(&env, &config).args(["config", "check"]);
    let shown = check
        .clone()
        .env("ROBUSTO_TOKEN", "hunter2")
        .env("ROBUSTO_FORMAT", "zip")
        .ok();
    assert!(shown.stdout.contains("level = \"9\"  # profile"), "{}", shown.stdout);
    assert!(
        shown.stdout.contains("format = \"zip\"  # environment"),
        "env beats the profile: {}",
        shown.stdout
    );
    assert!(shown.stdout.contains("token = \"<redacted>\""), "{}", shown.stdout);
    assert!(!shown.stdout.contains("hunter2"));

    // switches have their variables too
    let shown = check
        .env("ROBUSTO_KEEP_STAGING", "1")
        .env("ROBUSTO_ONE_FILE_SYSTEM", "false")
        .ok();
    assert!(
        shown.stdout.contains("keep-staging = \"1\"  # environment"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("one-file-system = \"false\"  # environment"),
        "{}",
        shown.stdout
    );

    // a value only push itself would refuse (a rate, a duration) is caught by the check, with
    // or without --profile, naming the profile and the file
    let config = write_profile(&env, &tree, "http://127.0.0.1:9/files/", "bwlimit = \"fast\"\n");
    for with_profile in [true, false] {
        let mut check = env.robusto("--config").arg(&config);
        if with_profile {
            check = check.args(["--profile", "nightly"]);
        }
        let check = check.args(["config", "check"]).code(2);
        assert!(
            check.stderr.contains("[profile.nightly]") && check.stderr.contains("fast"),
            "{}",
            check.stderr
        );
    }
    let config = write_profile(&env, &tree, "http://127.0.0.1:9/files/", "");
    let check = env.robusto("--config").arg(&config).args(["config", "check"]).ok();
    assert!(check.stdout.contains("[profile.nightly]: valid"), "{}", check.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nightly_runs_at_once_the_second_names_the_holder() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let config = write_profile(&env, &tree, &s.endpoint(), "bwlimit = \"256K\"\n");
    let push = nightly(&env, &config).arg("push");
    let mut first = spawn_until_sending(&push, &s).await;
    let pid = first.id().expect("the first run is still running");
    let second = push.run_async().await.code(1);
    assert!(
        second.stderr.contains(&format!("{pid}")),
        "names the holder's pid: {}",
        second.stderr
    );
    let _ = first.kill().await;
    // the killed run's job resumes and completes: nothing was corrupted by the refused one
    let mut text = fs::read_to_string(&config).unwrap();
    text = text.replace("bwlimit = \"256K\"\n", "");
    fs::write(&config, text).unwrap();
    let again = push.run_async().await.ok();
    let into = env.join("back");
    env.restore(again.stdout.trim(), &into)
        .arg("--token-file")
        .arg(env.join("token"))
        .run_async()
        .await
        .ok();
    assert_same_tree(&tree, &into.join("tree"));
}
