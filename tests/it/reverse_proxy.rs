//! The README's reverse-proxy setups, run as written in `contrib/` (names, ports and certificate
//! paths filled in): nginx and Caddy from Debian terminate TLS in front of `robusto serve
//! --behind-proxy`, and robusto's client sends, checks and fetches through them. The proxies are
//! installed by `bash .ci/run`; a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use robusto::fingerprint::Md5;

use crate::serve_env::{bytes, read_url, repo};
use crate::support::TestEnv;
use crate::tls::Ca;

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} is not installed: run `bash .ci/run` (it installs nginx-light and caddy)")
}

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts connections, or panics with `log`'s contents.
fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the proxy exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the proxy did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `robusto serve --behind-proxy --token-file` on loopback; returns it and its port.
fn robusto_behind(env: &TestEnv, token: &Path) -> (Running, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
        .args(["serve", "--listen", "127.0.0.1:0", "--behind-proxy", "--token-file"])
        .arg(token)
        .arg("--data")
        .arg(env.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (base, _) = read_url(&mut child);
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    (Running(child), port)
}

/// contrib/nginx-robusto.conf with this test's port, certificate and upstream, inside the
/// smallest nginx.conf that runs it in the foreground from `dir`.
fn nginx(dir: &Path, port: u16, crt: &Path, key: &Path, upstream: u16) -> Running {
    let site = std::fs::read_to_string(repo().join("contrib/nginx-robusto.conf"))
        .unwrap()
        .replace("listen 443 ssl", &format!("listen 127.0.0.1:{port} ssl"))
        .replace(
            "/etc/letsencrypt/live/backup.example.org/fullchain.pem",
            crt.to_str().unwrap(),
        )
        .replace(
            "/etc/letsencrypt/live/backup.example.org/privkey.pem",
            key.to_str().unwrap(),
        )
        .replace("127.0.0.1:1080", &format!("127.0.0.1:{upstream}"));
    assert!(site.contains(&format!("127.0.0.1:{port}")) && site.contains(&format!("127.0.0.1:{upstream}")));
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(installed("nginx"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, &dir.join("error.log"));
    Running(child)
}

/// contrib/Caddyfile with this test's address, certificate and upstream, and global options
/// that keep Caddy to itself (no admin port, no redirect listener, state under `dir`).
fn caddy(dir: &Path, port: u16, crt: &Path, key: &Path, upstream: u16) -> Running {
    let site = std::fs::read_to_string(repo().join("contrib/Caddyfile"))
        .unwrap()
        .replace("backup.example.org {", &format!("https://127.0.0.1:{port} {{"))
        .replace("/etc/ssl/robusto/fullchain.pem", crt.to_str().unwrap())
        .replace("/etc/ssl/robusto/privkey.pem", key.to_str().unwrap())
        .replace("127.0.0.1:1080", &format!("127.0.0.1:{upstream}"));
    assert!(site.contains(&format!("127.0.0.1:{port}")) && site.contains(&format!("127.0.0.1:{upstream}")));
    let file = dir.join("Caddyfile");
    std::fs::write(
        &file,
        format!("{{\n  admin off\n  auto_https disable_redirects\n}}\n{site}"),
    )
    .unwrap();
    let log = dir.join("caddy.log");
    let mut child = Command::new(installed("caddy"))
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, &log);
    Running(child)
}

/// Sends 5 MiB through the proxy at `port`, then checks its status URL (the proxy's https
/// origin, from the forwarded headers) and fetches it back, all with a token and a private CA.
async fn through(env: &TestEnv, port: u16, ca: &Ca, token: &Path, name: &str) {
    let data = bytes(5 << 20, port as u64);
    env.write(name, &data);
    let endpoint = format!("https://127.0.0.1:{port}/files/");
    let connect = [
        "--ca-cert",
        ca.pem.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let sent = env
        .send(name, &endpoint)
        .args(["--chunk-size", "1MiB"])
        .args(connect)
        .run_async()
        .await
        .ok();
    let url = sent.stdout.trim().to_string();
    assert!(url.starts_with(&endpoint), "{sent:?}");
    let published = env.join("data/files").join(name);
    assert_eq!(Md5::of(&std::fs::read(&published).unwrap()), Md5::of(&data));

    let status = env.robusto("status").arg(&url).args(connect).run_async().await.ok();
    let report: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(report["status"], "complete", "{report}");
    assert_eq!(
        report["value"].as_str().unwrap(),
        url,
        "the URL handed out is the proxy's: {report}"
    );

    let back = env.join(format!("{name}.back"));
    env.robusto("get")
        .arg(&url)
        .arg("-o")
        .arg(&back)
        .args(connect)
        .run_async()
        .await
        .ok();
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // Without the token the proxy passes robusto's refusal on.
    let refused = env
        .robusto("status")
        .arg(&url)
        .args(["--ca-cert", ca.pem.to_str().unwrap()])
        .run_async()
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("401"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_nginx_setup_carries_uploads_with_tls_and_tokens() {
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let (crt, key) = ca.server(env.path(), "proxy", false);
    let token = env.write_secret("token", "nightly-secret\n");
    let (_robusto, upstream) = robusto_behind(&env, &token);
    let port = free_port();
    let _nginx = nginx(&env.mkdir("nginx"), port, &crt, &key, upstream);
    through(&env, port, &ca, &token, "via-nginx.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_caddy_setup_carries_uploads_with_tls_and_tokens() {
    let env = TestEnv::new();
    let ca = Ca::new(env.path(), "ca");
    let (crt, key) = ca.server(env.path(), "proxy", false);
    let token = env.write_secret("token", "nightly-secret\n");
    let (_robusto, upstream) = robusto_behind(&env, &token);
    let port = free_port();
    let _caddy = caddy(&env.mkdir("caddy"), port, &crt, &key, upstream);
    through(&env, port, &ca, &token, "via-caddy.bin").await;
}
