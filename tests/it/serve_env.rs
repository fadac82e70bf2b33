//! A test environment for the server: a real `robusto serve` on 127.0.0.1:0 (in-process, or the
//! binary itself), and a small tus client on reqwest that speaks raw headers.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use robusto::protocol::{Metadata, header};
use robusto::serve::in_process::InProcess;
use robusto::serve::{AppState, Config};

/// An in-process server over the fs store in a temporary `--data`.
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// `--data`
    pub dir: tempfile::TempDir,
    /// The server's state (for direct calls such as the sweeper).
    pub state: AppState,
    server: Option<InProcess>,
}

impl Server {
    /// Starts a server; `tune` adjusts its config.
    pub async fn start(tune: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().to_path_buf());
        tune(&mut config);
        Self::serve(dir, config).await
    }

    /// Stops this server and starts a new one (fresh memory, a new port) over the same `--data`:
    /// a restart. The old server answers what it is finishing (a PATCH cut off by the shutdown
    /// records what it keeps) before the new one opens the same data.
    pub async fn restart(mut self) -> Server {
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), server.stop()).await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config = self.state.config.as_ref().clone();
        Self::serve(dir, config).await
    }

    async fn serve(dir: tempfile::TempDir, config: Config) -> Server {
        let server = InProcess::start(config).await.unwrap();
        Server {
            base: format!("http://{}", server.addr),
            addr: server.addr,
            dir,
            state: server.state.clone(),
            server: Some(server),
        }
    }

    /// The published file of the completed upload at `url`.
    pub async fn published(&self, url: &str) -> PathBuf {
        let server = self.server.as_ref().expect("running");
        match server.published(url).await {
            Some(path) => path,
            None => panic!(
                "{url} was not published: {:?}",
                self.state.store.info(&id_of(url)).await
            ),
        }
    }

    /// The creation URL, `http://127.0.0.1:PORT/files/`.
    pub fn endpoint(&self) -> String {
        format!("{}/files/", self.base)
    }

    /// A tus client for this server.
    pub fn client(&self) -> Tus {
        Tus::new(&self.base)
    }

    /// `--data`
    pub fn data(&self) -> &Path {
        self.dir.path()
    }
}

/// The real binary serving `data`; killed on drop.
pub struct BinServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    child: Child,
}

impl BinServer {
    /// Starts `robusto serve --listen 127.0.0.1:PORT --data DATA` (PORT 0 picks one) and waits
    /// for the URL it logs.
    pub fn start(data: &Path, port: u16) -> BinServer {
        Self::start_on(data, &format!("127.0.0.1:{port}")).0
    }

    /// Starts `robusto serve --listen ADDR --data DATA`; also returns what it logged up to and
    /// including the line with its URL.
    pub fn start_on(data: &Path, addr: &str) -> (BinServer, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
            .args(["serve", "--listen", addr, "--data"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (base, log) = read_url(&mut child);
        (BinServer { base, child }, log)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a `robusto serve` child's stderr up to the line with its URL; returns the base URL
/// (`http://127.0.0.1:PORT`) and what it logged so far. The rest of its stderr is drained.
pub fn read_url(child: &mut Child) -> (String, String) {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    let base = loop {
        let line = lines
            .next()
            .expect("robusto serve exited before logging its URL")
            .unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split("/files/").next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (base, log)
}

/// The `127.0.0.1:PORT` a `robusto serve` child listens on (see [`read_url`]).
pub fn wait_for_url(child: &mut Child) -> String {
    read_url(child).0.trim_start_matches("http://").to_string()
}

/// A tus client that shows every header.
pub struct Tus {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The reqwest client.
    pub http: reqwest::Client,
    /// A bearer token to send.
    pub token: Option<String>,
}

/// `md5 <base64>` of `bytes`, as Upload-Checksum carries it.
pub fn md5_header(bytes: &[u8]) -> String {
    format!("md5 {}", robusto::fingerprint::Md5::of(bytes).base64())
}

/// Upload-Metadata from text pairs.
pub fn metadata(pairs: &[(&str, &str)]) -> String {
    let mut m = Metadata::default();
    for (k, v) in pairs {
        m.insert(k, v);
    }
    m.to_header()
}

/// A response header as text ("" when absent).
pub fn hv(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Tus {
    /// A client for `base`.
    pub fn new(base: &str) -> Tus {
        Tus {
            base: base.to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// A request to `path` (a Location or a path), with Tus-Resumable and the token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut r = self.http.request(method, url).header(header::TUS_RESUMABLE, "1.0.0");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// POST /files/ with Upload-Length and metadata; returns the response.
    pub async fn post(&self, length: u64, meta: &str) -> reqwest::Response {
        let mut r = self
            .req(reqwest::Method::POST, "/files/")
            .header(header::UPLOAD_LENGTH, length.to_string());
        if !meta.is_empty() {
            r = r.header(header::UPLOAD_METADATA, meta);
        }
        r.send().await.unwrap()
    }

    /// Creates an upload and returns its Location.
    pub async fn create(&self, length: u64, meta: &str) -> String {
        let r = self.post(length, meta).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        hv(&r, "location")
    }

    /// PATCH a chunk at `offset`, with an optional Upload-Checksum.
    pub async fn patch(&self, loc: &str, offset: u64, body: &[u8], checksum: Option<&str>) -> reqwest::Response {
        let mut r = self
            .req(reqwest::Method::PATCH, loc)
            .header("content-type", "application/offset+octet-stream")
            .header(header::UPLOAD_OFFSET, offset.to_string())
            .body(body.to_vec());
        if let Some(c) = checksum {
            r = r.header(header::UPLOAD_CHECKSUM, c);
        }
        r.send().await.unwrap()
    }

    /// HEAD
    pub async fn head(&self, loc: &str) -> reqwest::Response {
        self.req(reqwest::Method::HEAD, loc).send().await.unwrap()
    }

    /// The upload's offset by HEAD.
    pub async fn offset(&self, loc: &str) -> u64 {
        let r = self.head(loc).await;
        assert_eq!(r.status(), 200);
        hv(&r, header::UPLOAD_OFFSET).parse().unwrap()
    }

    /// GET {loc}/status as JSON.
    pub async fn status(&self, loc: &str) -> serde_json::Value {
        let r = self
            .req(reqwest::Method::GET, &format!("{loc}/status"))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }
}

/// The upload id in a Location.
pub fn id_of(loc: &str) -> String {
    loc.rsplit('/').next().unwrap().to_string()
}

/// The base64 of bytes (for metadata checksums).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Repository root (where interop/, node_modules/ and .venv/ live).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
