//! The nightly backup job (issue 5) through the real binary: a `robusto.toml` profile drives
//! push; the server lists what arrived; prune keeps what the policy says; restore brings the
//! newest back by name, byte for byte; hooks see the outcome; two runs at once do not collide.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::serve_env::Server;
use super::support::{Run, assert_same_tree, awkward_tree, bin};

/// Runs the binary with `args` (blocking; call from spawn_blocking in async tests).
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin());
    c.args(args)
        .env("NO_COLOR", "1")
        .env_remove("ROBUSTO_URL")
        .env_remove("ROBUSTO_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run robusto").into()
}

async fn run_async(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]))
        .await
        .unwrap()
}

/// `robusto --config CFG --profile nightly push`, to the end.
async fn push_profile(cfg: &str) -> Run {
    run_async(vec![
        "--config".into(),
        cfg.into(),
        "--profile".into(),
        "nightly".into(),
        "push".into(),
    ])
    .await
}

/// Starts `push --profile nightly` in the background (output captured).
fn spawn_push(cfg: &str) -> std::process::Child {
    Command::new(bin())
        .args(["--config", cfg, "--profile", "nightly", "push"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `push --profile nightly` in the background and returns once it is sending (its upload
/// exists on the server).
async fn spawn_push_until_sending(cfg: &str, s: &Server) -> std::process::Child {
    let job = spawn_push(cfg);
    let uploads = s.data().join("uploads");
    for _ in 0..100 {
        if fs::read_dir(&uploads).map(|r| r.count() > 0).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    job
}

fn write_profile(dir: &Path, tree: &Path, endpoint: &str, extra: &str) -> std::path::PathBuf {
    fs::write(dir.join("token"), "nightly-secret\n").unwrap();
    let config = dir.join("robusto.toml");
    fs::write(
        &config,
        format!(
            "[profile.nightly]\npaths = [\"{}\"]\nto = \"{endpoint}\"\ntoken-file = \"{}\"\nstate-dir = \"{}\"\n\
             format = \"tar\"\ncompress = \"zstd\"\nname = \"web-{{date}}T{{time}}\"\n{extra}",
            tree.display(),
            dir.join("token").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_push_list_prune_restore_cycle() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let log = d.path().join("hooks.log");
    let config = write_profile(
        d.path(),
        &tree,
        &s.endpoint(),
        &format!(
            "run-after = \"echo $ROBUSTO_RESULT $ROBUSTO_EXIT $ROBUSTO_BYTES $ROBUSTO_URL >> {}\"\n",
            log.display()
        ),
    );
    let cfg = config.display().to_string();
    let token = d.path().join("token").display().to_string();
    // three nights, the tree changing each time (an unchanged tree is the same archive: no new upload)
    let mut urls = Vec::new();
    for night in 0..3 {
        if night > 0 {
            // completion times are kept to the second: nights must be told apart
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        fs::write(tree.join("changes.log"), format!("night {night}\n")).unwrap();
        let r = push_profile(&cfg).await;
        assert_eq!(r.code, 0, "night {night}: {}", r.stderr);
        urls.push(r.stdout.trim().to_string());
    }
    assert!(urls.iter().all(|u| u.starts_with(&s.endpoint())), "{urls:?}");
    let hook_lines = fs::read_to_string(&log).unwrap();
    assert_eq!(hook_lines.lines().count(), 3, "{hook_lines}");
    assert!(hook_lines.lines().all(|l| l.starts_with("ok 0 ")), "{hook_lines}");
    assert!(hook_lines.lines().last().unwrap().ends_with(&urls[2]), "{hook_lines}");

    let list = run_async(vec![
        "--json".into(),
        "list".into(),
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        token.clone(),
    ])
    .await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let listed: Vec<robusto::protocol::Listed> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|l| l.name.starts_with("web-") && l.name.ends_with(".tar.zst")),
        "{listed:?}"
    );

    let dry = run_async(vec![
        "prune".into(),
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        token.clone(),
        "--keep-last".into(),
        "2".into(),
        "--dry-run".into(),
    ])
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.stdout.matches("would remove").count(), 1, "{}", dry.stdout);
    let prune = run_async(vec![
        "prune".into(),
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        token.clone(),
        "--keep-last".into(),
        "2".into(),
    ])
    .await;
    assert_eq!(prune.code, 0, "{}", prune.stderr);
    assert_eq!(prune.stdout.matches("removed").count(), 1, "{}", prune.stdout);
    let after: Vec<robusto::protocol::Listed> = serde_json::from_str(
        &run_async(vec![
            "--json".into(),
            "list".into(),
            "--from".into(),
            s.endpoint(),
            "--token-file".into(),
            token.clone(),
        ])
        .await
        .stdout,
    )
    .unwrap();
    assert_eq!(after.len(), 2);
    assert!(!after.iter().any(|l| urls[0].ends_with(&l.url)), "the oldest went");
    let none = run_async(vec![
        "prune".into(),
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        token.clone(),
    ])
    .await;
    assert_eq!(none.code, 2, "no policy is a usage error: {}", none.stderr);

    // restore the newest by name, and the oldest-remaining by URL
    let newest = &after.last().unwrap().name;
    let into = d.path().join("restored");
    let r = run_async(vec![
        "restore".into(),
        newest.clone(),
        "--from".into(),
        s.endpoint(),
        "--token-file".into(),
        token.clone(),
        "--into".into(),
        into.display().to_string(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tree(&tree, &into.join("tree"));
    assert_eq!(fs::read_to_string(into.join("tree/changes.log")).unwrap(), "night 2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_a_failing_before_aborts_and_failed_runs_on_75() {
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let log = d.path().join("hooks.log");
    let l = log.display();
    // nothing listens on port 1: the link is down, past a budget of one retry → 75
    let config = write_profile(
        d.path(),
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "retries = 1\nrun-after = \"echo after >> {l}\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\nrun-finally = \"echo finally >> {l}\"\n"
        ),
    );
    let cfg = config.display().to_string();
    let r = push_profile(&cfg).await;
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed unfinished 75\nfinally\n");

    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("run-before = \"exit 3\"\n");
    fs::write(&config, text).unwrap();
    fs::remove_file(&log).unwrap();
    let r = push_profile(&cfg).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("run-before hook failed"), "{}", r.stderr);
    // the job did not start, but the failure hooks still ran
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed failed 1\nfinally\n");
}

/// Sends `signal` to the child, as `systemctl stop` (SIGTERM) or Ctrl-C (SIGINT) would.
fn signal(child: &std::process::Child, signal: libc::c_int) {
    // SAFETY: kill only reads its integer arguments; the pid is our own live child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_job_resumably_and_runs_the_hooks() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let log = d.path().join("hooks.log");
    let l = log.display();
    let config = write_profile(
        d.path(),
        &tree,
        &s.endpoint(),
        &format!(
            "bwlimit = \"64K\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\nrun-finally = \"echo finally >> {l}\"\n"
        ),
    );
    let cfg = config.display().to_string();
    let job = spawn_push_until_sending(&cfg, &s).await;
    signal(&job, libc::SIGTERM);
    let out = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}: {stderr}")),
        "failed interrupted 130\nfinally\n"
    );

    // the next run continues the same upload and completes
    let mut text = fs::read_to_string(&config).unwrap();
    text = text.replace("bwlimit = \"64K\"\n", "");
    fs::write(&config, text).unwrap();
    fs::remove_file(&log).unwrap();
    let again = push_profile(&cfg).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), "finally\n");
    let into = d.path().join("back");
    let r = run_async(vec![
        "restore".into(),
        again.stdout.trim().to_string(),
        "--into".into(),
        into.display().to_string(),
        "--token-file".into(),
        d.path().join("token").display().to_string(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tree(&tree, &into.join(tree.file_name().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_packing_leaves_no_archive_and_runs_the_hooks() {
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let log = d.path().join("hooks.log");
    let l = log.display();
    // run-before stops the job itself (as `systemctl stop` would) just before it packs
    let config = write_profile(
        d.path(),
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "run-before = \"kill -TERM $PPID; sleep 0.5\"\nrun-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {l}\"\n"
        ),
    );
    let r = push_profile(&config.display().to_string()).await;
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert!(r.stderr.contains("interrupted while packing"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed interrupted 130\n");
    // nothing half-packed is left to be mistaken for an archive
    let staged: Vec<_> = walkdir::WalkDir::new(d.path().join("state"))
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
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("big");
    fs::create_dir_all(&tree).unwrap();
    // 8 GiB of zeros (sparse): far longer to pack than the test waits
    fs::File::create(tree.join("disk.img"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    let log = d.path().join("hooks.log");
    let config = write_profile(
        d.path(),
        &tree,
        "http://127.0.0.1:1/files/",
        &format!(
            "run-failed = \"echo failed $ROBUSTO_RESULT $ROBUSTO_EXIT >> {}\"\n",
            log.display()
        ),
    );
    let cfg = config.display().to_string();
    let job = spawn_push(&cfg);
    // wait until the archive is being written, then stop the job
    let state = d.path().join("state");
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
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(packing(), "the job started packing");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    signal(&job, libc::SIGTERM);
    let out = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted while packing"), "{stderr}");
    assert_eq!(fs::read_to_string(&log).unwrap(), "failed interrupted 130\n");
    assert!(!packing(), "the half-written archive is gone");
}

#[test]
fn config_errors_name_the_key_and_the_file_and_check_shows_sources() {
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let config = write_profile(d.path(), &tree, "http://127.0.0.1:9/files/", "levle = 3\n");
    let cfg = config.display().to_string();
    let r = run(&["--config", &cfg, "--profile", "nightly", "push"], &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("unknown key 'levle'") && r.stderr.contains("robusto.toml"),
        "{}",
        r.stderr
    );

    let config = write_profile(d.path(), &tree, "http://127.0.0.1:9/files/", "level = 99\n");
    let r = run(
        &[
            "--config",
            &config.display().to_string(),
            "--profile",
            "nightly",
            "push",
        ],
        &[],
    );
    assert_eq!(r.code, 2, "a bad value is a usage error: {}", r.stderr);
    assert!(r.stderr.contains("level 99 is out of range"), "{}", r.stderr);

    let config = write_profile(d.path(), &tree, "http://127.0.0.1:9/files/", "level = 9\n");
    let check = run(
        &[
            "--config",
            &config.display().to_string(),
            "--profile",
            "nightly",
            "config",
            "check",
        ],
        &[("ROBUSTO_TOKEN", "hunter2"), ("ROBUSTO_FORMAT", "zip")],
    );
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("level = \"9\"  # profile"), "{}", check.stdout);
    assert!(
        check.stdout.contains("format = \"zip\"  # environment"),
        "env beats the profile: {}",
        check.stdout
    );
    assert!(check.stdout.contains("token = \"<redacted>\""), "{}", check.stdout);
    assert!(!check.stdout.contains("hunter2"));

    // switches have their variables too
    let check = run(
        &[
            "--config",
            &config.display().to_string(),
            "--profile",
            "nightly",
            "config",
            "check",
        ],
        &[("ROBUSTO_KEEP_STAGING", "1"), ("ROBUSTO_ONE_FILE_SYSTEM", "false")],
    );
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check.stdout.contains("keep-staging = \"1\"  # environment"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("one-file-system = \"false\"  # environment"),
        "{}",
        check.stdout
    );

    // a value only push itself would refuse (a rate, a duration) is caught by the check, with
    // or without --profile, naming the profile and the file
    let config = write_profile(d.path(), &tree, "http://127.0.0.1:9/files/", "bwlimit = \"fast\"\n");
    for with_profile in [true, false] {
        let cfg = config.display().to_string();
        let mut args = vec!["--config", cfg.as_str()];
        if with_profile {
            args.extend(["--profile", "nightly"]);
        }
        args.extend(["config", "check"]);
        let check = run(&args, &[]);
        assert_eq!(check.code, 2, "{}{}", check.stdout, check.stderr);
        assert!(
            check.stderr.contains("[profile.nightly]") && check.stderr.contains("fast"),
            "{}",
            check.stderr
        );
    }
    let config = write_profile(d.path(), &tree, "http://127.0.0.1:9/files/", "");
    let check = run(&["--config", &config.display().to_string(), "config", "check"], &[]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("[profile.nightly]: valid"), "{}", check.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nightly_runs_at_once_the_second_names_the_holder() {
    let s = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("nightly-secret\n")).await;
    let d = tempfile::tempdir().unwrap();
    let tree = awkward_tree(d.path());
    let config = write_profile(d.path(), &tree, &s.endpoint(), "bwlimit = \"256K\"\n");
    let cfg = config.display().to_string();
    let mut first = spawn_push_until_sending(&cfg, &s).await;
    let second = push_profile(&cfg).await;
    assert_eq!(second.code, 1, "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("{}", first.id())),
        "names the holder's pid: {}",
        second.stderr
    );
    let _ = first.kill();
    let _ = first.wait();
    // the killed run's job resumes and completes: nothing was corrupted by the refused one
    let mut text = fs::read_to_string(&config).unwrap();
    text = text.replace("bwlimit = \"256K\"\n", "");
    fs::write(&config, text).unwrap();
    let again = push_profile(&cfg).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let into = d.path().join("back");
    let r = run_async(vec![
        "restore".into(),
        again.stdout.trim().to_string(),
        "--token-file".into(),
        d.path().join("token").display().to_string(),
        "--into".into(),
        into.display().to_string(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tree(&tree, &into.join("tree"));
}
