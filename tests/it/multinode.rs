//! Several `robusto serve` nodes on one bucket of a real Ceph cluster, behind a round-robin
//! proxy that sends each request to the next node (no sticky sessions): uploads by robusto
//! and tus-js-client complete with the right bytes, a node killed in the middle leaves the rest
//! to the other, and two PATCHes racing at one offset on two nodes never both count.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use crate::relay::RoundRobin;
use crate::s3::Engine;
use crate::serve_env::{Tus, bytes, md5_header};
use crate::support::{repo, send_command};
use robusto::fingerprint::Md5;

/// One `robusto serve --store s3` process; killed on drop.
struct Node {
    addr: SocketAddr,
    child: Child,
    /// What it logged.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Node {
    fn start(config: &robusto::serve::store::s3::S3Config) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_robusto"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", "s3", "--s3-bucket"])
            .arg(&config.bucket)
            .arg("--s3-endpoint")
            .arg(config.endpoint.as_deref().unwrap())
            .arg("--s3-prefix")
            .arg(&config.prefix)
            .env("AWS_ACCESS_KEY_ID", &config.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &config.secret_key)
            .env("RUST_LOG", "robusto=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("robusto serve exited before listening").unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Node { addr, child, log }
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn two_nodes() -> (Node, Node, RoundRobin) {
    let config = Engine::Ceph.config().await;
    let (a, b) = (Node::start(&config), Node::start(&config));
    let rr = RoundRobin::start(vec![a.addr, b.addr], None).await;
    (a, b, rr)
}

/// Downloads the completed upload at `url` through the proxy and returns its MD5.
async fn downloaded_md5(url: &str) -> Md5 {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    Md5::of(&resp.bytes().await.unwrap())
}

fn file_of(dir: &Path, name: &str, len: usize, seed: u64) -> (std::path::PathBuf, Md5) {
    let data = bytes(len, seed);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, Md5::of(&data))
}

fn url_from(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in '{stdout}'"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robusto_send_through_two_nodes_on_one_bucket() {
    let (_a, _b, rr) = two_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, md5) = file_of(dir.path(), "night.bin", 64 << 20, 5);
    let to = rr.endpoint();
    let state = dir.path().join("state");
    let run =
        tokio::task::spawn_blocking(move || send_command(&file, &to, &state).args(["--chunk-size", "1MiB"]).run())
            .await
            .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let url = url_from(&run.stdout);
    assert_eq!(downloaded_md5(&url).await, md5);
    let counts: Vec<usize> = rr.counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert!(counts.iter().all(|&c| c >= 30), "both nodes took requests: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_send_through_two_nodes_on_one_bucket() {
    let (a, b, rr) = two_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, md5) = file_of(dir.path(), "par.bin", 48 << 20, 6);
    let to = rr.endpoint();
    let state = dir.path().join("state");
    let run = tokio::task::spawn_blocking(move || {
        send_command(&file, &to, &state)
            .args(["--chunk-size", "8MiB", "--parallel", "4"])
            .run()
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(downloaded_md5(&url_from(&run.stdout)).await, md5);
    // The final was created first and its six parts went straight into it: nothing copied.
    assert!(
        a.logged("placed=6") || b.logged("placed=6"),
        "{:?}",
        a.log.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_through_two_nodes_on_one_bucket() {
    assert!(
        repo().join("node_modules/tus-js-client/package.json").exists(),
        "tus-js-client is not installed: run `bash .ci/run`"
    );
    let (_a, _b, rr) = two_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, md5) = file_of(dir.path(), "js.bin", 24 << 20, 7);
    let mut cmd = Command::new("node");
    cmd.current_dir(repo())
        .arg(repo().join("interop/tus-js-upload.mjs"))
        .arg(rr.endpoint())
        .arg(&file)
        .arg("5242880")
        .args(["--meta", "filename=js.bin", "--meta"])
        .arg(format!("checksum=md5 {}", md5.base64()));
    let answer = crate::interop_serve::run(cmd).await;
    assert_eq!(downloaded_md5(answer["url"].as_str().unwrap()).await, md5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_leaves_the_upload_to_the_other() {
    let (mut a, _b, rr) = two_nodes().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, md5) = file_of(dir.path(), "kill.bin", 32 << 20, 8);
    let to = rr.endpoint();
    let state = dir.path().join("state");
    let job = tokio::task::spawn_blocking(move || {
        send_command(&file, &to, &state)
            .args(["--chunk-size", "1MiB", "--bwlimit", "8M"])
            .run()
    });
    // About a third in, node A dies without a word.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    a.kill();
    let run = job.await.unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(downloaded_md5(&url_from(&run.stdout)).await, md5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_racing_at_one_offset_on_two_nodes_never_both_count() {
    let config = Engine::Ceph.config().await;
    let (a, b) = (Node::start(&config), Node::start(&config));
    let (ta, tb) = (
        Tus::new(&format!("http://{}", a.addr)),
        Tus::new(&format!("http://{}", b.addr)),
    );
    let trials = 50u64;
    let chunk = 4096usize;
    let loc = ta.create(trials * chunk as u64, "").await;
    let mut expected = Vec::new();
    for t in 0..trials {
        let offset = t * chunk as u64;
        let (ca, cb) = (bytes(chunk, 2 * t + 1), bytes(chunk, 2 * t + 2));
        let (ha, hb) = (md5_header(&ca), md5_header(&cb));
        let (ra, rb) = tokio::join!(
            ta.patch(&loc, offset, &ca, Some(&ha)),
            tb.patch(&loc, offset, &cb, Some(&hb))
        );
        let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
        match (sa, sb) {
            (204, 409) => expected.extend_from_slice(&ca),
            (409, 204) => expected.extend_from_slice(&cb),
            _ => panic!("trial {t}: exactly one PATCH must win: {sa} / {sb}"),
        }
        assert_eq!(tb.offset(&loc).await, offset + chunk as u64, "trial {t}");
    }
    let url = if loc.starts_with("http") {
        loc.clone()
    } else {
        format!("http://{}{loc}", a.addr)
    };
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(Md5::of(&resp.bytes().await.unwrap()), Md5::of(&expected));
}
