//! Hostile requests against the real binary: malformed numbers, headers, framing, metadata,
//! traversal, concatenation, tokens, slow and stalled clients. Each request gets exactly the
//! status expected, the server answers a plain request after every one, and nothing is ever
//! written outside `--data`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::serve_env::{md5_header, metadata};

/// A `robusto serve` child under a root folder holding `data/` (and the token file, if any).
struct Hostile {
    root: tempfile::TempDir,
    addr: String,
    child: Child,
}

impl Hostile {
    fn start(tokens: Option<&str>, extra: &[&str]) -> Hostile {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_robusto"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(["--max-size", "1GiB", "--header-timeout", "2s", "--read-timeout", "2s"])
            .args(extra);
        if let Some(tokens) = tokens {
            let file = root.path().join("tokens");
            std::fs::write(&file, tokens).unwrap();
            crate::support::chmod(&file, 0o600);
            cmd.arg("--token-file").arg(&file);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let addr = crate::serve_env::wait_for_url(&mut child);
        Hostile { root, addr, child }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Sends `request` (with `{host}` replaced) and returns the status of the answer, or 0 when
    /// the server closed without one.
    fn status(&self, request: &[u8]) -> u16 {
        let (status, _) = self.exchange(request);
        status
    }

    fn exchange(&self, request: &[u8]) -> (u16, String) {
        let mut t = TcpStream::connect(&self.addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let bytes = with_host(request, &self.addr);
        // The server may answer and close before it read everything (a refused body).
        let _ = t.write_all(&bytes);
        let mut answer = Vec::new();
        let _ = t.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// Sends every case, checks each status and that the server answers after each one; fails
    /// listing every case that was answered otherwise.
    fn run_cases(&self, cases: &[(&str, Vec<u8>, u16)]) {
        let mut wrong = Vec::new();
        for (what, request, expected) in cases {
            let got = self.status(request);
            if got != *expected {
                wrong.push(format!("{what}: expected {expected}, got {got}"));
            }
            self.assert_alive(what);
        }
        assert!(
            wrong.is_empty(),
            "{} of {} cases wrong:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
    }

    /// A request that must always work: the server is alive and serving.
    fn assert_alive(&self, after: &str) {
        let status = self.status(b"OPTIONS /files/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(status, 204, "the server stopped answering after: {after}");
        if let Ok(Some(exit)) = self.child_status() {
            panic!("the server exited ({exit}) after: {after}");
        }
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // try_wait needs &mut; a separate wait on the pid would race the drop.
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on our own child only reads its state.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        Ok((r == pid).then(|| std::os::unix::process::ExitStatusExt::from_raw(status)))
    }

    /// Creates an upload through a well-formed request and returns its path (`/files/ID`).
    fn create(&self, token: Option<&str>, headers: &str) -> String {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let (status, text) = self.exchange(
            format!(
                "POST /files/ HTTP/1.1\r\nHost: {{host}}\r\nTus-Resumable: 1.0.0\r\n{auth}{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status, 201, "{text}");
        let location = text
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .unwrap()
            .trim()
            .to_string();
        let path = location
            .trim_start_matches(&format!("http://{}", self.addr))
            .to_string();
        assert!(path.starts_with("/files/"), "{location}");
        path
    }

    /// The upload's offset, by HEAD.
    fn offset(&self, token: Option<&str>, path: &str) -> u64 {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let (status, text) = self.exchange(
            format!(
                "HEAD {path} HTTP/1.1\r\nHost: {{host}}\r\nTus-Resumable: 1.0.0\r\n{auth}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("upload-offset")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap()
    }

    /// Every path under the root is `data/` or inside it (and the token file).
    fn assert_nothing_outside_data(&self) {
        for e in std::fs::read_dir(self.root.path()).unwrap() {
            let name = e.unwrap().file_name();
            assert!(name == "data" || name == "tokens", "written outside --data: {name:?}");
        }
        for e in walkdir::WalkDir::new(self.data()) {
            let e = e.unwrap();
            assert!(!e.path_is_symlink(), "a link under --data: {}", e.path().display());
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request with the headers every tus request carries, `extra` headers and `body`.
fn req(method: &str, path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {{host}}\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n{extra}\r\n{body}"
    )
    .into_bytes()
}

/// A PATCH of `body` at `offset`, with `extra` headers.
fn patch(path: &str, offset: &str, extra: &str, body: &str) -> Vec<u8> {
    req(
        "PATCH",
        path,
        &format!(
            "Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n{extra}",
            body.len()
        ),
        body,
    )
}

/// `request` with every `{host}` replaced by `addr`.
fn with_host(request: &[u8], addr: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(request.len());
    let mut rest = request;
    while let Some(at) = rest.windows(6).position(|w| w == b"{host}") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(addr.as_bytes());
        rest = &rest[at + 6..];
    }
    out.extend_from_slice(rest);
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn hostile_requests_get_their_exact_status_and_the_server_stays_up() {
    let s = Hostile::start(None, &[]);
    // Uploads the requests aim at: a fresh one, a finished partial, and a published one.
    let fresh = s.create(None, "Upload-Length: 10\r\n");
    let spare = s.create(None, "Upload-Length: 10\r\n");
    let partial = s.create(None, "Upload-Length: 1\r\nUpload-Concat: partial\r\n");
    assert_eq!(s.status(&patch(&partial, "0", "", "p")), 204);
    let done = s.create(None, "Upload-Length: 2\r\n");
    assert_eq!(s.status(&patch(&done, "0", "", "ok")), 204);
    let final_ = {
        let (status, text) = s.exchange(&req(
            "POST",
            "/files/",
            &format!("Upload-Concat: final;{partial}\r\n"),
            "",
        ));
        assert_eq!(status, 201, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap()
            .trim()
            .trim_start_matches(&format!("http://{}", s.addr))
            .to_string()
    };
    let id = fresh.trim_start_matches("/files/").to_string();
    let long_name = "n".repeat(1000);
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(600 << 10));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // --- numbers: creation
        ("negative length", req("POST", "/files/", "Upload-Length: -1\r\n", ""), 400),
        ("letters for a length", req("POST", "/files/", "Upload-Length: abc\r\n", ""), 400),
        ("exponent length", req("POST", "/files/", "Upload-Length: 1e3\r\n", ""), 400),
        ("hex length", req("POST", "/files/", "Upload-Length: 0x10\r\n", ""), 400),
        ("plus sign", req("POST", "/files/", "Upload-Length: +5\r\n", ""), 400),
        ("length beyond u64", req("POST", "/files/", "Upload-Length: 18446744073709551616\r\n", ""), 400),
        ("length beyond --max-size", req("POST", "/files/", "Upload-Length: 1073741825\r\n", ""), 413),
        ("length of 2^63", req("POST", "/files/", "Upload-Length: 9223372036854775808\r\n", ""), 413),
        ("a list as a length", req("POST", "/files/", "Upload-Length: 5, 9\r\n", ""), 400),
        ("two different lengths", req("POST", "/files/", "Upload-Length: 5\r\nUpload-Length: 9\r\n", ""), 400),
        ("no length at all", req("POST", "/files/", "", ""), 400),
        ("defer length 2", req("POST", "/files/", "Upload-Defer-Length: 2\r\n", ""), 400),
        ("length and defer", req("POST", "/files/", "Upload-Length: 5\r\nUpload-Defer-Length: 1\r\n", ""), 400),
        ("empty length", req("POST", "/files/", "Upload-Length: \r\n", ""), 400),
        ("decimal point", req("POST", "/files/", "Upload-Length: 5.0\r\n", ""), 400),
        // --- numbers: offsets
        ("no offset", req("PATCH", &fresh, "Content-Type: application/offset+octet-stream\r\nContent-Length: 1\r\n", "x"), 400),
        ("negative offset", patch(&fresh, "-1", "", "x"), 400),
        ("offset ahead", patch(&fresh, "5", "", "x"), 409),
        ("offset beyond u64", patch(&fresh, "99999999999999999999", "", "x"), 400),
        ("offset in letters", patch(&fresh, "zero", "", "x"), 400),
        ("two different offsets", patch(&fresh, "0\r\nUpload-Offset: 1", "", "x"), 400),
        ("a body past the length", patch(&fresh, "0", "", "0123456789abc"), 413),
        ("a new length for a known one", patch(&fresh, "0", "Upload-Length: 11\r\n", "x"), 400),
        ("a patch on a finished upload", patch(&done, "2", "", "x"), 413),
        ("a patch at 0 of a finished upload", patch(&done, "0", "", "x"), 409),
        // --- headers
        ("no Tus-Resumable", b"PATCH /files/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(), 412),
        ("old Tus-Resumable", b"POST /files/ HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 0.2.2\r\nUpload-Length: 1\r\nConnection: close\r\n\r\n".to_vec(), 412),
        ("no content type", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Length: 1\r\n", "x"), 415),
        ("wrong content type", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n", "x"), 415),
        ("wrong checksum", patch(&fresh, "0", &format!("Upload-Checksum: {}\r\n", md5_header(b"y")), "x"), 460),
        ("unknown checksum algorithm", patch(&fresh, "0", "Upload-Checksum: crc32 AAAAAA==\r\n", "x"), 400),
        ("checksum not base64", patch(&fresh, "0", "Upload-Checksum: md5 !!!!\r\n", "x"), 400),
        ("checksum of the wrong length", patch(&fresh, "0", &format!("Upload-Checksum: md5 {}\r\n", b64(&[0; 15])), "x"), 400),
        ("checksum without a value", patch(&fresh, "0", "Upload-Checksum: md5\r\n", "x"), 400),
        ("two different checksums", patch(&fresh, "0", &format!("Upload-Checksum: {}\r\nUpload-Checksum: {}\r\n", md5_header(b"x"), md5_header(b"y")), "x"), 400),
        ("header not ASCII", [b"PATCH /files/".as_slice(), id.as_bytes(), b" HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: \xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"].concat(), 400),
        ("headers of 600 KiB", req("POST", "/files/", &format!("Upload-Length: 1\r\n{huge_header}"), ""), 431),
        ("200 headers", req("POST", "/files/", &format!("Upload-Length: 1\r\n{many_headers}"), ""), 431),
        ("unknown method", req("BREW", "/files/", "", ""), 405),
        ("method override to an unknown method", req("POST", &fresh, "X-HTTP-Method-Override: BREW\r\n", ""), 405),
        ("a GET of an unfinished upload", req("GET", &fresh, "", ""), 409),
        ("a range past the end", req("GET", &done, "Range: bytes=5-9\r\n", ""), 416),
        // --- framing
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("a space in the path", b"HEAD /files/a b HTTP/1.1\r\nHost: {host}\r\n\r\n".to_vec(), 400),
        ("negative content length", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: -1\r\n", "x"), 400),
        ("two different content lengths", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1\r\nContent-Length: 2\r\n", "xx"), 400),
        ("content length list", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1, 2\r\n", "xx"), 400),
        // RFC 9112 §6.3: the coding wins over the length (hyper drops the length).
        ("length and chunked at once", req("PATCH", &spare, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n", "1\r\nx\r\n0\r\n\r\n"), 204),
        ("gzip transfer coding", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nTransfer-Encoding: gzip, chunked\r\n", "1\r\nx\r\n0\r\n\r\n"), 501),
        ("chunk of 2^72 bytes", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n", "1000000000000000000\r\nx\r\n0\r\n\r\n"), 400),
        ("chunk size in letters", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n", "zz\r\nx\r\n0\r\n\r\n"), 400),
        ("chunk longer than declared", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n", "1\r\nxyz\r\n0\r\n\r\n"), 400),
        ("a chunked body past the length", req("PATCH", &fresh, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n", "b\r\n0123456789a\r\n0\r\n\r\n"), 413),
        ("a body that stops halfway",  req("PATCH", &fresh, &format!("Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 5\r\nUpload-Checksum: {}\r\n", md5_header(b"12345")), "12"), 408),
        // --- metadata
        ("metadata not base64", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: filename !!!\r\n", ""), 400),
        ("metadata key with three parts", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: file name dGVzdA==\r\n", ""), 400),
        ("metadata key twice", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: a dGVzdA==,a dGVzdA==\r\n", ""), 400),
        ("metadata key not ASCII", b"POST /files/ HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\nUpload-Metadata: \xd0\xba dGVzdA==\r\nConnection: close\r\n\r\n".to_vec(), 400),
        ("metadata of 20 KiB", req("POST", "/files/", &format!("Upload-Length: 1\r\nUpload-Metadata: filename {}\r\n", b64(&[b'a'; 15 << 10])), ""), 400),
        ("metadata checksum not md5", req("POST", "/files/", &format!("Upload-Length: 1\r\nUpload-Metadata: checksum {}\r\n", b64(b"crc32 AAAA")), ""), 400),
        ("metadata checksum garbage", req("POST", "/files/", &format!("Upload-Length: 1\r\nUpload-Metadata: checksum {}\r\n", b64(b"md5 !!")), ""), 400),
        ("metadata value badly padded", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: a dGVzdA=\r\n", ""), 400),
        ("metadata key without value", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: flag\r\n", ""), 201),
        // RFC 9110 §5.6.1: empty list elements are ignored.
        ("metadata trailing comma", req("POST", "/files/", "Upload-Length: 1\r\nUpload-Metadata: a dGVzdA==,\r\n", ""), 201),
        // --- traversal
        ("encoded dot-dot id", req("HEAD", "/files/..%2F..%2Fetc%2Fpasswd", "", ""), 404),
        ("dot-dot path", req("HEAD", "/files/../../etc/passwd", "", ""), 404),
        ("encoded dots", req("HEAD", "/files/%2e%2e", "", ""), 404),
        ("a dot id", req("HEAD", "/files/.", "", ""), 404),
        ("a patch through dot-dot", patch("/files/..%2Fdata%2Fuploads", "0", "", "x"), 404),
        ("a delete through dot-dot", req("DELETE", "/files/..%2F..", "", ""), 404),
        ("a NUL in the id", req("HEAD", &format!("{fresh}%00"), "", ""), 404),
        ("an id of 300 letters", req("HEAD", &format!("/files/{}", "a".repeat(300)), "", ""), 404),
        ("an id with a slash", req("HEAD", &format!("{fresh}%2F.info"), "", ""), 404),
        ("an info file by name", req("GET", &format!("{fresh}.info"), "", ""), 404),
        ("status through dot-dot", req("GET", "/files/..%2F..%2Fetc/status", "", ""), 404),
        ("absolute URL of another host", format!("HEAD http://evil.example{fresh} HTTP/1.1\r\nHost: evil.example\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n").into_bytes(), 200),
        // --- concatenation
        ("concat the same part twice", req("POST", "/files/", &format!("Upload-Concat: final;{partial};{partial}\r\n"), ""), 400),
        ("concat from another host", req("POST", "/files/", &format!("Upload-Concat: final;http://evil.example{partial}\r\n"), ""), 400),
        ("concat of another path", req("POST", "/files/", &format!("Upload-Concat: final;/elsewhere{partial}\r\n"), ""), 400),
        ("concat of nothing", req("POST", "/files/", "Upload-Concat: final;\r\n", ""), 400),
        ("concat of a malformed id", req("POST", "/files/", "Upload-Concat: final;/files/nosuchupload\r\n", ""), 400),
        ("concat of an unknown upload", req("POST", "/files/", &format!("Upload-Concat: final;/files/{}\r\n", "0".repeat(32)), ""), 404),
        ("concat of a plain upload", req("POST", "/files/", &format!("Upload-Concat: final;{done}\r\n"), ""), 400),
        ("concat of a final", req("POST", "/files/", &format!("Upload-Concat: final;{final_}\r\n"), ""), 400),
        ("concat of dot-dot", req("POST", "/files/", "Upload-Concat: final;/files/..%2F..%2Fetc%2Fpasswd\r\n", ""), 400),
        ("concat keyword unknown", req("POST", "/files/", "Upload-Concat: everything\r\nUpload-Length: 1\r\n", ""), 400),
        ("a patch on a final", patch(&final_, "0", "", "x"), 403),
        ("a final with a length", req("POST", "/files/", &format!("Upload-Concat: final;{partial}\r\nUpload-Length: 1\r\n"), ""), 400),
        ("10,001 parts", req("POST", "/files/", &format!("Upload-Concat: final;{}\r\n", vec!["/files/x"; 10_001].join(" ")), ""), 400),
        // --- metadata names that would escape (published inside --data, checked at the end)
        ("a name with dot-dot", req("POST", "/files/", &format!("Upload-Length: 0\r\nUpload-Metadata: {}\r\n", metadata(&[("filename", "../../escaped")])), ""), 201),
        ("an absolute name", req("POST", "/files/", &format!("Upload-Length: 0\r\nUpload-Metadata: {}\r\n", metadata(&[("filename", "/tmp/escaped-abs")])), ""), 201),
        ("a name with a NUL", req("POST", "/files/", &format!("Upload-Length: 0\r\nUpload-Metadata: filename {}\r\n", b64(b"a\0b")), ""), 201),
        ("a name of 1000 letters", req("POST", "/files/", &format!("Upload-Length: 0\r\nUpload-Metadata: {}\r\n", metadata(&[("filename", &long_name)])), ""), 201),
        ("a name that is dot-dot", req("POST", "/files/", &format!("Upload-Length: 0\r\nUpload-Metadata: {}\r\n", metadata(&[("filename", "..")])), ""), 201),
    ];
    assert!(cases.len() >= 80, "{} cases", cases.len());
    s.run_cases(&cases);
    assert_eq!(
        s.offset(None, &fresh),
        0,
        "no hostile request wrote into the fresh upload"
    );
    s.assert_nothing_outside_data();
    // Published names stayed under files/, sanitised.
    for e in std::fs::read_dir(s.data().join("files")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.contains('/') && !name.contains('\0') && name.len() <= 255 && name != "..",
            "{name:?}"
        );
    }
}

#[test]
fn tokens_keep_strangers_out_of_every_request() {
    let s = Hostile::start(Some("alice-token\nbob-token\n"), &[]);
    let alice = Some("alice-token");
    let mine = s.create(alice, "Upload-Length: 10\r\n");
    let part = s.create(alice, "Upload-Length: 1\r\nUpload-Concat: partial\r\n");
    let bob = "Authorization: Bearer bob-token\r\n";
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("no token", req("POST", "/files/", "Upload-Length: 1\r\n", ""), 401),
        (
            "a wrong token",
            req(
                "POST",
                "/files/",
                "Upload-Length: 1\r\nAuthorization: Bearer mallory\r\n",
                "",
            ),
            401,
        ),
        (
            "an empty bearer",
            req("POST", "/files/", "Upload-Length: 1\r\nAuthorization: Bearer \r\n", ""),
            401,
        ),
        (
            "basic auth",
            req(
                "POST",
                "/files/",
                "Upload-Length: 1\r\nAuthorization: Basic YWxpY2U6YWxpY2UtdG9rZW4=\r\n",
                "",
            ),
            401,
        ),
        (
            "a token's prefix",
            req(
                "POST",
                "/files/",
                "Upload-Length: 1\r\nAuthorization: Bearer alice\r\n",
                "",
            ),
            401,
        ),
        (
            "a token with more after it",
            req(
                "POST",
                "/files/",
                "Upload-Length: 1\r\nAuthorization: Bearer alice-token2\r\n",
                "",
            ),
            401,
        ),
        (
            "two tokens",
            req(
                "POST",
                "/files/",
                "Upload-Length: 1\r\nAuthorization: Bearer alice-token\r\nAuthorization: Bearer bob-token\r\n",
                "",
            ),
            401,
        ),
        ("a HEAD without a token", req("HEAD", &mine, "", ""), 401),
        ("a PATCH without a token", patch(&mine, "0", "", "x"), 401),
        ("a DELETE without a token", req("DELETE", &mine, "", ""), 401),
        ("a list without a token", req("GET", "/files/", "", ""), 401),
        (
            "a status without a token",
            req("GET", &format!("{mine}/status"), "", ""),
            401,
        ),
        ("another's HEAD", req("HEAD", &mine, bob, ""), 404),
        ("another's PATCH", patch(&mine, "0", bob, "x"), 404),
        ("another's DELETE", req("DELETE", &mine, bob, ""), 404),
        ("another's GET", req("GET", &mine, bob, ""), 404),
        ("another's status", req("GET", &format!("{mine}/status"), bob, ""), 404),
        (
            "another's part in a final, as if unknown",
            req("POST", "/files/", &format!("Upload-Concat: final;{part}\r\n{bob}"), ""),
            404,
        ),
        (
            "an override to DELETE another's",
            req("POST", &mine, &format!("X-HTTP-Method-Override: DELETE\r\n{bob}"), ""),
            404,
        ),
        ("OPTIONS needs no token", req("OPTIONS", "/files/", "", ""), 204),
    ];
    s.run_cases(&cases);
    assert_eq!(s.offset(alice, &mine), 0, "a stranger changed nothing");
    // Bob's list does not show Alice's upload.
    let (status, text) = s.exchange(&req("GET", "/files/", bob, ""));
    assert_eq!(status, 200);
    assert!(!text.contains(mine.trim_start_matches("/files/")), "{text}");
    s.assert_nothing_outside_data();
}

/// Opens `n` connections from `from` that send half a request line and then nothing.
fn stalled_connections(server: &str, from: &str, n: usize) -> Vec<std::net::TcpStream> {
    let server: SocketAddr = server.parse().unwrap();
    (0..n)
        .filter_map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            let local: SocketAddr = format!("{from}:0").parse().unwrap();
            socket.bind(&local.into()).ok()?;
            socket.connect(&server.into()).ok()?;
            let mut t: TcpStream = socket.into();
            t.write_all(b"POST /files/ HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(t)
        })
        .collect()
}

/// Whether the other end closed `t` (read returns 0 or an answer, not a timeout).
fn closed_by_server(t: &mut TcpStream, within: Duration) -> bool {
    t.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match t.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn stalled_headers_are_cut_at_the_timeout_and_cannot_exhaust_descriptors() {
    // A descriptor limit of 256 (soft and hard, as a small container gives): 300 connections that
    // stall in their headers, from one address, must not stop anyone else being served.
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(env!("CARGO_BIN_EXE_robusto"))
        .args(["serve", "--listen", "127.0.0.1:0", "--header-timeout", "3s", "--data"])
        .arg(root.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = crate::serve_env::wait_for_url(&mut child);
    let _guard = KillOnDrop(child);
    let started = Instant::now();
    let mut stalled = stalled_connections(&addr, "127.0.0.2", 300);
    assert!(stalled.len() >= 290, "only {} connections opened", stalled.len());
    // A legitimate client on another address is served while they stall.
    let (status, text) = one_request(
        &addr,
        "OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 204, "{text}");
    let (status, text) = one_request(
        &addr,
        "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 201, "{text}");
    // Those over the per-address cap were answered 503 at once; the rest are cut at 3 s.
    let mut refused = 0;
    for t in stalled.iter_mut() {
        t.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(t.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 503")) {
            refused += 1;
        }
    }
    assert!(refused >= 300 - 64 - 10, "{refused} of {} refused", stalled.len());
    for t in stalled.iter_mut() {
        assert!(
            closed_by_server(t, Duration::from_secs(10)),
            "a stalled connection outlived the header timeout"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "stalled connections were closed after {took:?}"
    );
    // A keep-alive connection that goes idle is closed at the same timeout.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t0 = Instant::now();
    assert!(closed_by_server(&mut idle, Duration::from_secs(10)));
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed at {:?}", t0.elapsed());
}

#[test]
fn connections_over_the_global_cap_are_refused_and_accepting_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
        .args(["serve", "--listen", "127.0.0.1:0", "--header-timeout", "30s"])
        .args(["--max-connections", "40", "--max-connections-per-ip", "10", "--data"])
        .arg(root.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = crate::serve_env::wait_for_url(&mut child);
    let _guard = KillOnDrop(child);
    // Ten addresses, ten stalled connections each fill the 40 places (and 60 are refused).
    let mut all = Vec::new();
    for i in 2..12 {
        all.extend(stalled_connections(&addr, &format!("127.0.0.{i}"), 10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = one_request(
        &addr,
        "OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 503, "over the global cap");
    // Once they go, the server serves again, without a restart.
    drop(all);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = one_request(
            &addr,
            "OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status == 204 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the stalled connections closed: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_request(addr: &str, request: &str) -> (u16, String) {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = t.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
