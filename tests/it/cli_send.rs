//! The real `robusto send` binary: exit codes 0/1/2/75, stdout carrying the URL only, the job
//! lock, SIGKILL at random moments (the rerun resumes; no acknowledged chunk is sent twice),
//! `--max-duration` and `--bwlimit`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng as _;

use super::peers::{TusNode, md5_file, random_file};
use super::proxy::{Faults, Proxy};
use super::support::{Run, TestEnv, send_command, signal};

fn upstream(server: &TusNode) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_stdout() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, (2 << 20) + 5, 21);

    // 0: done; stdout is the URL and nothing else.
    let out = env
        .send(&file, &server.endpoint())
        .args(["--chunk-size", "1M"])
        .run_async()
        .await
        .ok();
    let url = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "stdout: {:?}", out.stdout);
    assert!(url.starts_with(&server.endpoint()), "{url}");
    assert_eq!(md5_file(&server.stored(url)), md5_file(&file));
    // a rerun has nothing to send, and says so
    let again = env
        .send(&file, &server.endpoint())
        .args(["--chunk-size", "1M"])
        .run_async()
        .await
        .ok();
    assert_eq!(again.stdout.trim(), url);
    assert!(
        again
            .stderr
            .contains("nothing to send: the server already has the whole upload"),
        "{}",
        again.stderr
    );

    // 2: usage errors.
    for bad in [
        &["--bwlimit", "fast"][..],
        &["--chunk-size", "0"],
        &["--max-duration", "soon"],
        &["--parallel", "0"],
    ] {
        let out = env.send(&file, &server.endpoint()).args(bad).run_async().await.code(2);
        assert!(out.stdout.is_empty());
    }

    // 1: a file that is not there; a server that refuses.
    let out = env.send("missing", &server.endpoint()).run_async().await.code(1);
    assert!(out.stderr.contains("missing"), "{}", out.stderr);

    // 75: the link fails past the budget; the message names the upload; the rerun finishes.
    let proxy = Proxy::start(
        upstream(&server),
        Faults {
            fail_patches: (1..10_000).collect(),
            ..Faults::default()
        },
    )
    .await;
    let other = env.join("b.bin");
    random_file(&other, 3 << 20, 22);
    let out = env
        .send(&other, &proxy.endpoint())
        .args(["--chunk-size", "1M", "--retries", "2", "--json"])
        .run_async()
        .await
        .code(75);
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(
        out.stderr.contains(&format!("http://{}/files/", proxy.addr)),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(r#""event":"retry""#), "{}", out.stderr);
    assert!(out.stderr.contains(r#""event":"error""#), "{}", out.stderr);
    assert!(out.stderr.contains(r#""event":"chunk_sent""#), "{}", out.stderr);
    proxy.set(|f| f.fail_patches.clear());
    let out = env
        .send(&other, &proxy.endpoint())
        .args(["--chunk-size", "1M", "--json"])
        .run_async()
        .await
        .ok();
    assert!(out.stderr.contains(r#""event":"complete""#), "{}", out.stderr);
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&other));
    proxy.log.assert_no_acked_resend();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_the_same_job_is_refused_with_the_holder() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, 4 << 20, 31);
    let send = env.send(&file, &server.endpoint());
    let args = ["--chunk-size", "256K", "--bwlimit", "1M"];
    let mut first = send.clone().args(args).spawn();
    let pid = first.id().expect("pid");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = send.clone().args(args).run_async().await.code(1);
    assert!(
        out.stderr.contains(&format!("process {pid}")),
        "names the holder {pid}: {}",
        out.stderr
    );
    // A dead holder's lock is taken over.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let out = send.args(["--chunk-size", "256K"]).run_async().await.ok();
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&file));
}

/// Runs `robusto send` again and again, SIGKILLing it at a random moment 0.15–1.2 s after each
/// start, 20 times, then lets a run finish; returns the kills that landed and the URL printed.
pub async fn kill_loop(file: &Path, endpoint: &str, state: &Path, args: &[&str]) -> (u32, String) {
    let mut kills = 0;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let mut child = send_command(file, endpoint, state).args(args).spawn();
        let wait = Duration::from_millis(if kills < 20 {
            rng.random_range(150..1200)
        } else {
            120_000
        });
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(status) => {
                let status = status.unwrap();
                let mut stdout = String::new();
                if let Some(mut s) = child.stdout.take() {
                    use tokio::io::AsyncReadExt as _;
                    s.read_to_string(&mut stdout).await.unwrap();
                }
                assert_eq!(status.code(), Some(0), "a run ended on its own but not with 0");
                return (kills, stdout.trim().to_string());
            }
            Err(_) => {
                child.start_kill().unwrap(); // SIGKILL
                child.wait().await.unwrap();
                kills += 1;
            }
        }
    }
    panic!("the upload did not finish after {kills} kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_then_rerun() {
    let server = TusNode::start();
    let proxy = Proxy::start(upstream(&server), Faults::default()).await;
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, 48 << 20, 41);
    let (kills, url) = kill_loop(
        &file,
        &proxy.endpoint(),
        &env.state(),
        &["--chunk-size", "1M", "--bwlimit", "2M"],
    )
    .await;
    assert!(kills >= 20, "only {kills} kills landed before the upload finished");
    assert_eq!(md5_file(&server.stored(&url)), md5_file(&file), "stored bytes differ");
    proxy.log.assert_no_acked_resend();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_stops_resumably_and_the_rerun_finishes() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, 6 << 20, 51);
    let t = Instant::now();
    let out = env
        .send(&file, &server.endpoint())
        .args(["--chunk-size", "512K", "--bwlimit", "1M", "--max-duration", "2s"])
        .run_async()
        .await
        .code(75);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped at a chunk boundary soon after 2 s"
    );
    assert!(out.stderr.contains("max-duration"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = env
        .send(&file, &server.endpoint())
        .args(["--chunk-size", "512K"])
        .run_async()
        .await
        .ok();
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwlimit_2m_sends_40_mib_in_about_20_s() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, 40 << 20, 61);
    // The manifest is computed before the clock starts (a separate, unthrottled run would
    // upload it; computing it is what a first run does anyway).
    let m = robusto::fingerprint::fingerprint_file(&file, 8 << 20).unwrap();
    robusto::manifest::Manifest::new(&file, "raw", "none", None, m, Default::default())
        .write(&robusto::manifest::path_for(&file))
        .unwrap();
    let t = Instant::now();
    let out = env
        .send(&file, &server.endpoint())
        .args(["--bwlimit", "2M"])
        .run_async()
        .await;
    let secs = t.elapsed().as_secs_f64();
    let out = out.ok();
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&file));
    assert!(
        (18.0..=22.0).contains(&secs),
        "40 MiB at 2 MiB/s took {secs:.1} s, not 20 s ± 10%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_exits_130_and_the_rerun_finishes() {
    let server = TusNode::start();
    let env = TestEnv::new();
    let file = env.join("a.bin");
    random_file(&file, 4 << 20, 81);
    let send = env.send(&file, &server.endpoint());
    let child = send.clone().args(["--chunk-size", "256K", "--bwlimit", "1M"]).spawn();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    signal(&child, libc::SIGINT);
    let out = Run::of_child(child).await.code(130);
    assert!(out.stdout.is_empty());
    let out = send.args(["--chunk-size", "256K"]).run_async().await.ok();
    assert!(out.stderr.contains("resuming"), "{}", out.stderr);
    assert_eq!(md5_file(&server.stored(out.stdout.trim())), md5_file(&file));
}
