//! The test environment: temp trees with the awkward cases, the real `robusto` binary, the
//! system's own archive tools, and tree snapshots to compare byte for byte.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_robusto"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `robusto ARGS…`.
pub fn robusto<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run robusto")
        .into()
}

/// Runs a shell command and insists it succeeds.
pub fn sh(cmd: &str) -> Run {
    let out: Run = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh").into();
    assert_eq!(out.code, 0, "`{cmd}` failed: {}", out.stderr);
    out
}

/// Checks that a system tool is installed (CI installs them: `bash .ci/run`).
pub fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "`{tool}` is not installed; run `bash .ci/run` to install the test peers"
    );
}

/// A fixed mtime for fixture trees (2021-09-13T12:26:40Z), far from "now".
pub const MTIME: i64 = 1_631_536_000;

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds the awkward tree under `dir/tree`: the committed `fixtures/tree` (unicode and
/// names over 100 bytes, deep nesting, an empty file, symlinks) plus an empty folder, modes other than
/// 0644, a 2 MiB incompressible file and a 9 MiB compressible one; every mtime set to [`MTIME`].
pub fn awkward_tree(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    sh(&format!(
        "cp -a '{}' '{}'",
        repo().join("fixtures/tree").display(),
        root.display()
    ));
    fs::create_dir_all(root.join("empty folder/and inside")).unwrap();
    fs::write(root.join("noise.bin"), noise(2 << 20, 7)).unwrap();
    let text: Vec<u8> = (0..(9u32 << 20) / 16)
        .flat_map(|i| format!("line {i:010}\n").into_bytes())
        .collect();
    fs::write(root.join("nested/big-text.log"), &text).unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("private.txt"), b"secret-ish\n").unwrap();
    fs::set_permissions(root.join("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("docs"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtimes(&root, MTIME);
    root
}

/// Sets every mtime under `root` (links themselves included) to `secs`.
pub fn set_mtimes(root: &Path, secs: i64) {
    sh(&format!(
        "find '{}' -depth -exec touch -h -d @{secs} {{}} +",
        root.display()
    ));
}

/// One node of a tree snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        md5: String,
        len: u64,
    },
    Link {
        target: PathBuf,
    },
}

/// Snapshot of a tree: relative path → node (modes, mtimes to the second, content digests,
/// link targets). Symlink mtimes are not compared: extractors do not restore them.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let node = if m.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(e.path()).unwrap(),
            }
        } else if m.is_dir() {
            Node::Dir {
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
            }
        } else {
            let bytes = fs::read(e.path()).unwrap();
            Node::File {
                mode: m.mode() & 0o7777,
                mtime: m.mtime(),
                md5: robusto::fingerprint::Md5::of(&bytes).hex(),
                len: bytes.len() as u64,
            }
        };
        out.insert(rel, node);
    }
    out
}

/// Asserts that two trees are the same, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (snapshot(expected), snapshot(actual));
    for (k, v) in &a {
        assert_eq!(
            Some(v),
            b.get(k),
            "{k} differs (expected from {}, actual from {})",
            expected.display(),
            actual.display()
        );
    }
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "unexpected entries in {}: {extra:?}",
        actual.display()
    );
}
