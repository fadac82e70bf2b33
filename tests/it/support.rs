//! The test environment: a [`TestEnv`] owns a temp dir, builds trees in it (the awkward cases)
//! and runs the real `robusto` binary there ([`TestCommand`] → [`Run`]); also the system's own
//! archive tools, and tree snapshots to compare byte for byte.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_robusto"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One test's own folder: the trees, archives, state and configuration it makes live here, and
/// the binary runs here. Removed on drop.
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A new, empty environment.
    pub fn new() -> TestEnv {
        TestEnv {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Its folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` inside it (an absolute `rel` stays as it is).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// `state/`: the `--state-dir` that [`send`](Self::send) and [`push`](Self::push) pass.
    pub fn state(&self) -> PathBuf {
        self.join("state")
    }

    /// The awkward tree at `tree/` (see [`awkward_tree`]).
    pub fn awkward_tree(&self) -> PathBuf {
        awkward_tree(self.path())
    }

    /// Creates the folder `rel` (and those above it); returns its path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.join(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        path
    }

    /// Writes `bytes` to the file `rel` (its folder created); returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).unwrap();
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes a file of tokens, readable by its owner only (robusto refuses any other mode).
    pub fn write_secret(&self, rel: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.write(rel, bytes);
        chmod(&path, 0o600);
        path
    }

    /// `robusto FIRST`, run in this folder.
    pub fn robusto(&self, first: impl AsRef<OsStr>) -> TestCommand {
        TestCommand::bin().current_dir(self.path()).arg(first)
    }

    /// `robusto pack TREE -o ARCHIVE` (relative paths are inside the environment).
    pub fn pack(&self, tree: impl AsRef<Path>, archive: impl AsRef<Path>) -> TestCommand {
        self.robusto("pack")
            .arg(self.join(tree))
            .arg("-o")
            .arg(self.join(archive))
    }

    /// `robusto restore WHAT --into INTO`: WHAT (an archive, an upload's URL or name) as given,
    /// a relative INTO inside the environment.
    pub fn restore(&self, what: impl AsRef<OsStr>, into: impl AsRef<Path>) -> TestCommand {
        self.robusto("restore").arg(what).arg("--into").arg(self.join(into))
    }

    /// `robusto send FILE --to TO --state-dir STATE` with this environment's [`state`](Self::state).
    pub fn send(&self, file: impl AsRef<Path>, to: &str) -> TestCommand {
        send_command(&self.join(file), to, &self.state()).current_dir(self.path())
    }

    /// `robusto push TREE --to TO --state-dir STATE` with this environment's [`state`](Self::state).
    pub fn push(&self, tree: impl AsRef<Path>, to: &str) -> TestCommand {
        self.robusto("push")
            .arg(self.join(tree))
            .arg("--to")
            .arg(to)
            .arg("--state-dir")
            .arg(self.state())
    }
}

/// `robusto send FILE --to TO --state-dir STATE`, for callers without a [`TestEnv`].
pub fn send_command(file: &Path, to: &str, state: &Path) -> TestCommand {
    TestCommand::bin()
        .arg("send")
        .arg(file)
        .arg("--to")
        .arg(to)
        .arg("--state-dir")
        .arg(state)
}

/// A `robusto` command line to run: always with `NO_COLOR=1`, without the caller's `ROBUSTO_*`
/// variables (every flag has one) unless set by [`env`](Self::env), stdin empty, output captured.
#[derive(Clone, Debug)]
pub struct TestCommand {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    unprivileged: bool,
}

impl TestCommand {
    /// `robusto` with no arguments yet.
    pub fn bin() -> TestCommand {
        TestCommand {
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
            unprivileged: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Runs as nobody (uid and gid 65534) when the tests run as root, who reads anything: for
    /// the tests of files the binary cannot read.
    pub fn unprivileged(mut self) -> Self {
        self.unprivileged = true;
        self
    }

    /// Runs to the end (blocking: in async tests, use [`run_async`](Self::run_async)).
    pub fn run(&self) -> Run {
        let out = self
            .command()
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{self}`: {e}"));
        Run::of(out, self)
    }

    /// Runs to the end, stdout kept as bytes (for commands that write binary output there).
    pub fn output(&self) -> Output {
        self.command()
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{self}`: {e}"))
    }

    /// Runs to the end and asserts exit 0.
    #[track_caller]
    pub fn ok(&self) -> Run {
        self.run().ok()
    }

    /// Runs to the end and asserts exit `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> Run {
        self.run().code(code)
    }

    /// Runs to the end without blocking the runtime.
    pub async fn run_async(&self) -> Run {
        let out = tokio::process::Command::from(self.command())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run `{self}`: {e}"));
        Run::of(out, self)
    }

    /// Starts it in the background (output piped; killed when dropped).
    pub fn spawn(&self) -> tokio::process::Child {
        tokio::process::Command::from(self.command())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{self}`: {e}"))
    }

    fn command(&self) -> Command {
        let mut c = if self.unprivileged && is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin());
            c
        } else {
            Command::new(bin())
        };
        c.args(&self.args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROBUSTO_") {
                c.env_remove(key);
            }
        }
        c.env("NO_COLOR", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.dir {
            c.current_dir(dir);
        }
        c
    }
}

/// The command line, for messages: `robusto pack /tmp/…/tree -o '/tmp/…/a b.zip'`.
impl fmt::Display for TestCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.envs {
            write!(f, "{}={} ", k.to_string_lossy(), shell_word(v))?;
        }
        if self.unprivileged && is_root() {
            f.write_str("(as nobody) ")?;
        }
        f.write_str("robusto")?;
        for a in &self.args {
            write!(f, " {}", shell_word(a))?;
        }
        Ok(())
    }
}

fn shell_word(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+{}".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether the tests run as root.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages (empty when not known).
    command: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            command: String::new(),
        }
    }
}

impl Run {
    fn of(o: Output, cmd: &TestCommand) -> Run {
        Run {
            command: cmd.to_string(),
            ..o.into()
        }
    }

    /// The output of a background run (see [`TestCommand::spawn`]), once it ends.
    pub async fn of_child(child: tokio::process::Child) -> Run {
        child.wait_with_output().await.expect("wait for robusto").into()
    }

    /// Asserts exit 0; the message has the command line, stderr and stdout.
    #[track_caller]
    pub fn ok(self) -> Run {
        self.code(0)
    }

    /// Asserts exit `code`; the message has the command line, stderr and stdout.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert!(
            self.code == code,
            "`{}` exited with {}, not {code}\n--- stderr:\n{}\n--- stdout:\n{}",
            self.command,
            self.code,
            self.stderr,
            self.stdout
        );
        self
    }
}

/// Sends `signal` to a background run, as `systemctl stop` (SIGTERM) or Ctrl-C (SIGINT) would.
pub fn signal(child: &tokio::process::Child, signal: libc::c_int) {
    let pid = child.id().expect("the child is still running") as libc::pid_t;
    // SAFETY: kill only reads its integer arguments; the pid is our own live child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Sets the mode of `path`.
pub fn chmod(path: impl AsRef<Path>, mode: u32) {
    let path = path.as_ref();
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Runs `robusto ARGS…` (see [`TestCommand`]).
pub fn robusto<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    TestCommand::bin().args(args).run()
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
    chmod(root.join("run.sh"), 0o755);
    fs::write(root.join("private.txt"), b"secret-ish\n").unwrap();
    chmod(root.join("private.txt"), 0o600);
    chmod(root.join("docs"), 0o750);
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
