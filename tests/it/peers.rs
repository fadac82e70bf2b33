//! Servers written by others that the sender must interoperate with: @tus/server 2.4.5 with
//! @tus/file-store (npm, pinned in package-lock.json), started on 127.0.0.1 by the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::support::repo;

/// A running @tus/server; killed on drop.
pub struct TusNode {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where the file store keeps uploads (`<id>` and `<id>.json`).
    pub data: tempfile::TempDir,
}

impl TusNode {
    /// Starts `node interop/tus-server.mjs DATA` and waits for the port it prints.
    pub fn start() -> TusNode {
        let root = repo();
        assert!(
            root.join("node_modules/@tus/server/package.json").exists()
                && root.join("node_modules/@tus/file-store/package.json").exists(),
            "node_modules lacks @tus/server / @tus/file-store: run `bash .ci/run` (it runs `npm ci`)"
        );
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("node")
            .arg(root.join("interop/tus-server.mjs"))
            .arg(data.path())
            .current_dir(&root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): run `bash .ci/run` to install the test peers"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("@tus/server printed {line:?} instead of its port"));
        TusNode { child, port, data }
    }

    /// The creation endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/files/", self.port)
    }

    /// The stored bytes of the upload at `url`.
    pub fn stored(&self, url: &str) -> PathBuf {
        let id = url.trim_end_matches('/').rsplit('/').next().expect("an id");
        self.data.path().join(id)
    }
}

impl Drop for TusNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MD5 of a file, in hex.
pub fn md5_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    robusto::fingerprint::Md5::of(&bytes).hex()
}

/// Writes `len` pseudo-random (incompressible) bytes to `path`, in pieces.
pub fn random_file(path: &Path, len: u64, seed: u64) {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for b in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x.to_le_bytes();
            b.copy_from_slice(&v[..b.len()]);
        }
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.flush().expect("flush");
}
