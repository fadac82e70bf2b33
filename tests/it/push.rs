//! `robusto push`: pack + send in one job. The uploaded archive is the one `robusto pack` makes
//! of the same tree; the staging file goes after completion (or stays with `--keep-staging`);
//! a kill during sending is resumed from the finished staging file without packing again;
//! skipped files give exit 3.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::peers::{TusNode, md5_file};
use super::support::{Run, awkward_tree, bin, robusto, sh};

fn push_cmd(paths: &[&Path], to: &str, state: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("push")
        .args(paths)
        .arg("--to")
        .arg(to)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("ROBUSTO_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

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
    let dir = tempfile::tempdir().unwrap();
    let tree = awkward_tree(dir.path());
    let state = dir.path().join("state");
    let packed = dir.path().join("ref.zip");
    let r = robusto(["pack", tree.to_str().unwrap(), "-o", packed.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let out: Run = push_cmd(&[&tree], &server.endpoint(), &state, &["--name", "nightly-{label}"])
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
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

    let out: Run = push_cmd(
        &[&tree],
        &server.endpoint(),
        &state,
        &["--keep-staging", "--format", "tar"],
    )
    .output()
    .await
    .unwrap()
    .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
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
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    super::peers::random_file(&tree.join("big.bin"), 3 << 20, 71);
    let state = dir.path().join("state");
    let args = ["--chunk-size", "256K", "--compress", "none", "--bwlimit", "1M"];
    let mut child = push_cmd(&[&tree], &server.endpoint(), &state, &args).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first run was to be killed while sending"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(staging_files(&state).len(), 1, "the staging archive survives the kill");

    let out: Run = push_cmd(&[&tree], &server.endpoint(), &state, &args[..4])
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("reusing the archive"), "{}", out.stderr);
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    assert!(
        !out.stderr.lines().any(|l| l.trim_start().starts_with("INFO packed")),
        "no second packing: {}",
        out.stderr
    );
    let packed = dir.path().join("ref.zip");
    let r = robusto([
        "pack",
        tree.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
        "--chunk-size",
        "256K",
        "--compress",
        "none",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&packed));
    assert!(staging_files(&state).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_a_skipped_file_completes_with_exit_3() {
    let server = TusNode::start();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("ok.txt"), b"fine\n").unwrap();
    fs::write(tree.join("locked.txt"), b"no\n").unwrap();
    sh(&format!("chmod -R a+rwX '{}'", tree.display()));
    fs::set_permissions(
        tree.join("locked.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // root reads anything: run as nobody so that the file is really unreadable
    let as_nobody = if sh("id -u").stdout.trim() == "0" {
        "setpriv --reuid=65534 --regid=65534 --clear-groups"
    } else {
        ""
    };
    let cmd = format!(
        "{as_nobody} '{}' push '{}' --to '{}' --state-dir '{}'",
        bin().display(),
        tree.display(),
        server.endpoint(),
        state.display()
    );
    let out: Run = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("locked.txt"),
        "the skipped file is named: {}",
        out.stderr
    );
    assert!(server.stored(out.stdout.trim()).exists(), "{}", out.stdout);
}
