//! TLS: `robusto serve --tls-cert --tls-key` with certificates made here (rcgen), the client's
//! `--ca-cert`, refusals of untrusted, expired and mismatched certificates, a reload on SIGHUP
//! during an upload, tus-js-client over HTTPS, and the rules that keep a token off plain HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use robusto::fingerprint::Md5;

use crate::serve_env::{Server, bytes, read_url, repo};
use crate::support::TestEnv;

/// A certificate authority made for one test.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM, written to a file.
    pub(crate) pem: PathBuf,
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("robusto test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, written to `NAME.crt` and `NAME.key`;
    /// `expired` makes one whose validity ended in 2021.
    pub(crate) fn server(&self, dir: &Path, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "robusto test server");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, keyfile) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        write_pem(&crt, &cert.pem());
        write_pem(&keyfile, &key.serialize_pem());
        (crt, keyfile)
    }
}

/// Writes a PEM file whole, by rename, as a certificate tool does.
fn write_pem(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `robusto serve` over TLS, killed on drop; stderr lines collected.
struct TlsServer {
    child: Child,
    /// `https://127.0.0.1:PORT`
    base: String,
}

impl TlsServer {
    fn start(data: &Path, cert: &Path, key: &Path, extra: &[&str]) -> TlsServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (base, log) = read_url(&mut child);
        assert!(base.starts_with("https://127.0.0.1:"), "{log}");
        TlsServer { child, base }
    }

    fn endpoint(&self) -> String {
        format!("{}/files/", self.base)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client trusting only `ca`.
fn https_client(ca: &Path, http1_only: bool) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([cert]);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_status_get_and_list_over_https_with_a_private_ca() {
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let (crt, key) = ca.server(env.path(), "server", false);
    let token = env.write_secret("token", "s3cret\n");
    let server = TlsServer::start(
        &env.join("data"),
        &crt,
        &key,
        &["--token-file", token.to_str().unwrap()],
    );
    let data = bytes(3 << 20, 17);
    env.write("backup.bin", &data);
    let ca_arg = ca.pem.to_str().unwrap();
    let tok = token.to_str().unwrap();
    let sent = env
        .send("backup.bin", &server.endpoint())
        .args(["--chunk-size", "1MiB", "--ca-cert", ca_arg, "--token-file", tok])
        .run_async()
        .await
        .ok();
    let url = sent.stdout.trim().to_string();
    assert!(url.starts_with(&format!("{}/files/", server.base)), "{sent:?}");
    let published = env.join("data/files/backup.bin");
    assert_eq!(Md5::of(&std::fs::read(&published).unwrap()), Md5::of(&data));

    let status = env
        .robusto("status")
        .arg(&url)
        .args(["--ca-cert", ca_arg, "--token-file", tok])
        .run_async()
        .await
        .ok();
    let report: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(report["status"], "complete", "{report}");
    assert_eq!(
        report["value"].as_str().unwrap(),
        url,
        "the status report hands out the https URL"
    );

    env.robusto("get")
        .arg(&url)
        .arg("-o")
        .arg(env.join("back.bin"))
        .args(["--ca-cert", ca_arg, "--token-file", tok])
        .run_async()
        .await
        .ok();
    assert_eq!(std::fs::read(env.join("back.bin")).unwrap(), data);

    let listed = env
        .robusto("list")
        .args(["--from", &server.endpoint(), "--ca-cert", ca_arg, "--token-file", tok])
        .run_async()
        .await
        .ok();
    assert!(listed.stdout.contains("backup.bin"), "{listed:?}");

    // Both HTTP/2 (ALPN's first choice) and HTTP/1.1 are served.
    for (http1_only, version) in [(false, reqwest::Version::HTTP_2), (true, reqwest::Version::HTTP_11)] {
        let r = https_client(&ca.pem, http1_only)
            .request(reqwest::Method::OPTIONS, server.endpoint())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.version(), version);
        assert_eq!(r.headers()["tus-version"], "1.0.0");
    }
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::get(format!("{}/files/", server.base.replace("https://", "http://"))).await;
    assert!(plain.is_err() || plain.unwrap().status() == 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_expired_certificates_are_refused_at_once() {
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let other = Ca::new(env.path(), "other");
    let (crt, key) = ca.server(env.path(), "server", false);
    let (old_crt, old_key) = ca.server(env.path(), "expired", true);
    let good = TlsServer::start(&env.join("data"), &crt, &key, &[]);
    let expired = TlsServer::start(&env.join("data2"), &old_crt, &old_key, &[]);
    env.write("f.bin", bytes(4096, 1));
    let cases = [
        (&good, None, "UnknownIssuer", "add --ca-cert FILE"),
        (&good, Some(&other.pem), "UnknownIssuer", "add --ca-cert FILE"),
        (
            &expired,
            Some(&ca.pem),
            "certificate expired",
            "renew the server's certificate",
        ),
    ];
    for (server, trusted, why, hint) in cases {
        let mut cmd = env.send("f.bin", &server.endpoint()).args(["--retries", "5"]);
        if let Some(ca) = trusted {
            cmd = cmd.arg("--ca-cert").arg(ca);
        }
        let run = cmd.run_async().await.code(1);
        assert!(run.stderr.contains("TLS with the server failed"), "{run:?}");
        assert!(run.stderr.contains(why), "{why}: {run:?}");
        assert!(run.stderr.contains(hint), "{hint}: {run:?}");
        assert!(!run.stderr.contains("giving up after"), "not retried: {run:?}");
        let got = env
            .robusto("get")
            .arg(format!("{}/files/x", server.base))
            .arg("-o")
            .arg(env.join("x"))
            .run_async()
            .await
            .code(1);
        assert!(got.stderr.contains("TLS with the server failed"), "{got:?}");
    }
    assert!(!env.join("data/files/f.bin").exists() && !env.join("data2/files/f.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_the_keys_is_refused_with_exit_2() {
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let (crt, _) = ca.server(env.path(), "a", false);
    let (_, other_key) = ca.server(env.path(), "b", false);
    let garbage = env.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let cases: [(&Path, &Path, &str); 4] = [
        (&crt, &other_key, "is not the key of the certificate"),
        (&garbage, &other_key, "no usable PEM certificate"),
        (&crt, &crt, "no usable PEM private key"),
        (&env.join("missing.crt"), &other_key, "cannot read"),
    ];
    for (cert, key, message) in cases {
        let run = env
            .robusto("serve")
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(env.join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .run_async()
            .await
            .code(2);
        assert!(run.stderr.contains(message), "{message}: {run:?}");
    }
    let run = env
        .robusto("serve")
        .arg("--tls-cert")
        .arg(&crt)
        .run_async()
        .await
        .code(2);
    assert!(run.stderr.contains("--tls-key"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_while_an_upload_goes_on() {
    let env = TestEnv::new();
    let first = Ca::new(env.path(), "first");
    let second = Ca::new(env.path(), "second");
    let (crt, key) = first.server(env.path(), "server", false);
    let server = TlsServer::start(&env.join("data"), &crt, &key, &[]);
    let data = bytes(6 << 20, 5);
    env.write("big.bin", &data);
    // Trusting both authorities, the sender may reconnect after the reload too.
    let mut sender = env
        .send("big.bin", &server.endpoint())
        .args(["--chunk-size", "1MiB", "--bwlimit", "1M"])
        .arg("--ca-cert")
        .arg(&first.pem)
        .arg("--ca-cert")
        .arg(&second.pem)
        .spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sender.try_wait().unwrap().is_none(), "the upload is still going");

    // A broken pair is refused and the one in use stays.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    server.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = https_client(&first.pem, true)
        .request(reqwest::Method::OPTIONS, server.endpoint())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "still served with the first certificate");

    // A new pair from another authority: new connections get it.
    let (new_crt, new_key) = second.server(env.path(), "renewed", false);
    std::fs::rename(&new_crt, &crt).unwrap();
    std::fs::rename(&new_key, &key).unwrap();
    server.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = https_client(&second.pem, true)
        .request(reqwest::Method::OPTIONS, server.endpoint())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "served with the renewed certificate");
    let old = https_client(&first.pem, true)
        .request(reqwest::Method::OPTIONS, server.endpoint())
        .send()
        .await;
    assert!(old.is_err(), "the first authority no longer vouches for the server");

    let out = tokio::time::timeout(Duration::from_secs(60), sender.wait_with_output())
        .await
        .expect("the upload finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(env.join("data/files/big.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_uploads_over_https() {
    if !repo().join("node_modules/tus-js-client/package.json").exists() {
        panic!("tus-js-client is not installed: run `bash .ci/run` (it installs the interop peers)");
    }
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let (crt, key) = ca.server(env.path(), "server", false);
    let server = TlsServer::start(&env.join("data"), &crt, &key, &[]);
    let data = bytes((5 << 20) + 1, 9);
    let file = env.write("js.bin", &data);
    let md5 = Md5::of(&data);
    let out = tokio::process::Command::new("node")
        .current_dir(repo())
        .env("NODE_EXTRA_CA_CERTS", &ca.pem)
        .arg(repo().join("interop/tus-js-upload.mjs"))
        .arg(server.endpoint())
        .arg(&file)
        .arg("1048576")
        .args([
            "--meta",
            "filename=js.bin",
            "--meta",
            &format!("checksum=md5 {}", md5.base64()),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{}/files/", server.base)), "{stdout}");
    assert_eq!(Md5::of(&std::fs::read(env.join("data/files/js.bin")).unwrap()), md5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_goes_out_on_plain_http_off_loopback() {
    let env = TestEnv::new();
    let token = env.write_secret("token", "s3cret\n");
    env.write("f.bin", bytes(100, 2));
    let tok = token.to_str().unwrap();

    // The server: tokens on a public address need TLS or a proxy that terminates it.
    let run = env
        .robusto("serve")
        .args(["--listen", "0.0.0.0:0", "--token-file", tok, "--data"])
        .arg(env.join("data"))
        .run_async()
        .await
        .code(2);
    assert!(
        run.stderr.contains("without TLS would send every token in clear"),
        "{run:?}"
    );
    assert!(run.stderr.contains("--tls-cert FILE --tls-key FILE") && run.stderr.contains("--behind-proxy"));
    let mut behind = Command::new(env!("CARGO_BIN_EXE_robusto"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--behind-proxy",
            "--token-file",
            tok,
            "--data",
        ])
        .arg(env.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (base, _) = read_url(&mut behind);
    assert!(base.starts_with("http://0.0.0.0:"), "{base}");
    let _ = behind.kill();
    let _ = behind.wait();

    // The client: a token to a host that is not this one, over http, is refused before any
    // connection; with --allow-insecure-http it is tried (and here fails to connect).
    let far = "http://192.0.2.1:1080/files/";
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "send",
            vec![env.join("f.bin").display().to_string(), "--to".into(), far.into()],
        ),
        ("status", vec![format!("{far}abc")]),
        ("get", vec![format!("{far}abc"), "-o".into(), "out".into()]),
        ("list", vec!["--from".into(), far.into()]),
        (
            "prune",
            vec!["--from".into(), far.into(), "--keep-last".into(), "1".into()],
        ),
    ];
    for (command, args) in &cases {
        let run = env
            .robusto(command)
            .args(args)
            .args(["--token-file", tok])
            .run_async()
            .await
            .code(2);
        assert!(
            run.stderr.contains("would cross the network in clear"),
            "{command}: {run:?}"
        );
        assert!(run.stderr.contains("--allow-insecure-http"), "{command}: {run:?}");
        let run = env
            .robusto(command)
            .args(args)
            .env("ROBUSTO_TOKEN", "s3cret")
            .run_async()
            .await
            .code(2);
        assert!(
            run.stderr.contains("in clear"),
            "{command} with $ROBUSTO_TOKEN: {run:?}"
        );
    }
    let run = env
        .send("f.bin", far)
        .args([
            "--token-file",
            tok,
            "--allow-insecure-http",
            "--retries",
            "0",
            "--stall-timeout",
            "1s",
        ])
        .run_async()
        .await;
    assert_ne!(run.code, 2, "allowed: {run:?}");
    assert!(!run.stderr.contains("in clear"), "{run:?}");

    // Loopback over http with a token is fine (the README's quick start).
    let server = Server::start(|c| {
        c.tokens = robusto::serve::auth::Tokens::from_file(&token).unwrap();
    })
    .await;
    env.send("f.bin", &server.endpoint())
        .args(["--token-file", tok])
        .run_async()
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_status_url_is_the_proxys() {
    let plain = Server::start(|_| {}).await;
    let proxied = Server::start(|c| c.behind_proxy = true).await;
    for (server, expected) in [(&plain, None), (&proxied, Some("https://backup.example.org/files/"))] {
        let tus = server.client();
        let loc = tus.create(0, "").await;
        let report = tus
            .req(reqwest::Method::GET, &format!("{loc}/status"))
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "backup.example.org")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
        let url = report["value"].as_str().unwrap();
        match expected {
            Some(prefix) => assert!(url.starts_with(prefix), "{report}"),
            None => assert!(
                url.starts_with("http://127.0.0.1:"),
                "forwarded headers ignored: {report}"
            ),
        }
    }
}
