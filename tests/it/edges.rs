//! The edges a user hits first, through the real binary: what `-o` may replace, `-o -`, a
//! server address without a scheme, the order of uploads completed within a second, usage errors
//! and the messages of a server that is down or refuses, signals while packing, completions,
//! the man page and `--help`.

use std::fs;
use std::path::Path;

use crate::serve_env::Server;
use crate::support::*;
use robusto::manifest::Manifest;

/// `mkfifo PATH`.
fn mkfifo(path: &Path) {
    sh(&format!("mkfifo '{}'", path.display()));
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    fs::symlink_metadata(path).unwrap().file_type().is_fifo()
}

/// The ERROR line the binary logged.
fn error_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.starts_with("ERROR") || l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {:?}", run.stderr))
}

#[test]
fn pack_refuses_to_replace_what_is_not_a_regular_file() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let fifo = env.join("fifo");
    mkfifo(&fifo);
    let run = env.pack(&tree, &fifo).code(2);
    assert_eq!(
        error_line(&run),
        format!(
            "ERROR -o: {} is a fifo, not a regular file: robusto writes a new file there and will not replace it",
            fifo.display()
        )
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(is_fifo(&fifo), "the fifo is still there");
    assert!(!env.join("fifo.partial").exists());

    let dir = env.mkdir("a-folder");
    let run = env.pack(&tree, &dir).code(2);
    assert_eq!(
        error_line(&run),
        format!(
            "ERROR -o: {} is a folder, not a regular file: robusto writes a new file there and will not replace it",
            dir.display()
        )
    );
    assert!(dir.is_dir());

    // the manifest beside it is replaced too: the same rule
    let archive = env.join("a.zip");
    mkfifo(&env.join("a.zip.manifest.json"));
    let run = env.pack(&tree, &archive).code(2);
    assert!(
        error_line(&run).contains("a.zip.manifest.json is a fifo"),
        "{}",
        run.stderr
    );
    assert!(!archive.exists());

    // a regular file is replaced as before
    fs::write(env.join("b.zip"), b"old").unwrap();
    env.pack(&tree, "b.zip").ok();
    assert!(Manifest::read_for(&env.join("b.zip")).is_ok());
}

#[test]
fn pack_to_stdout_writes_the_same_bytes_and_its_manifest_where_told() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    for format in ["zip", "tar"] {
        let file = env.join(format!("file.{format}"));
        env.pack(&tree, &file).args(["--format", format]).ok();
        let manifest = env.join(format!("stream-{format}.json"));
        let out = env
            .robusto("pack")
            .arg(&tree)
            .args(["-o", "-", "--format", format, "--manifest"])
            .arg(&manifest)
            .output();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.stdout == fs::read(&file).unwrap(),
            "{format}: stdout is the archive"
        );
        let m: Manifest = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
        let beside = Manifest::read_for(&file).unwrap();
        assert_eq!(m.archive.md5, robusto::fingerprint::Md5::of(&out.stdout));
        assert_eq!(
            (m.archive.md5, m.archive.size),
            (beside.archive.md5, beside.archive.size)
        );
        assert_eq!(m.chunks, beside.chunks);
        assert!(!env.join("-").exists() && !env.join("-.manifest.json").exists());
    }

    // -o - without --manifest: a usage error, nothing written
    let out = env.robusto("pack").arg(&tree).args(["-o", "-"]).output();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "ERROR -o - writes the archive to standard output: say where its manifest goes with --manifest FILE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_refuses_what_is_not_a_regular_file_and_streams_to_stdout() {
    let server = Server::start(|_| {}).await;
    let env = TestEnv::new();
    let file = env.write("a.bin", noise((1 << 20) + 7, 3));
    let url = env
        .send(&file, &server.endpoint())
        .args(["--chunk-size", "256K"])
        .run_async()
        .await
        .ok()
        .stdout
        .trim()
        .to_string();

    let fifo = env.join("fifo");
    mkfifo(&fifo);
    let dir = env.mkdir("folder");
    for (target, kind) in [(&fifo, "a fifo"), (&dir, "a folder")] {
        let run = env
            .robusto("get")
            .arg(&url)
            .arg("-o")
            .arg(target)
            .run_async()
            .await
            .code(2);
        assert_eq!(
            error_line(&run),
            format!(
                "ERROR -o: {} is {kind}, not a regular file: robusto writes a new file there and will not replace it",
                target.display()
            )
        );
    }
    assert!(is_fifo(&fifo) && dir.is_dir());

    let out = tokio::task::spawn_blocking({
        let cmd = env.robusto("get").arg(&url).args(["-o", "-"]);
        move || cmd.output()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == fs::read(&file).unwrap(), "stdout is the upload");
    let md5 = robusto::fingerprint::Md5::of(&out.stdout).hex();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("md5 {md5} (verified)")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_server_address_without_its_scheme_is_not_taken_for_a_folder() {
    let env = TestEnv::new();
    let file = env.write("a.bin", noise(4096, 1));
    for (to, meant) in [
        ("127.0.0.1:19100/files/", "http://127.0.0.1:19100/files/"),
        ("backup.example.org/files/", "https://backup.example.org/files/"),
    ] {
        let run = env.send(&file, to).code(2);
        assert_eq!(
            error_line(&run),
            format!(
                "ERROR --to {to} looks like a server address, not a folder: did you mean {meant}? write ./{to} for a local folder"
            )
        );
        assert!(run.stdout.is_empty());
        assert!(!env.join(to.split('/').next().unwrap()).exists(), "no folder made");
    }
    let tree = env.awkward_tree();
    let run = env.push(&tree, "localhost:1080").code(2);
    assert!(
        error_line(&run).contains("did you mean http://localhost:1080? write ./localhost:1080 for a local folder"),
        "{}",
        run.stderr
    );
    // list, status, get: the same hint
    let run = env.robusto("list").args(["--from", "localhost:1080/files/"]).code(2);
    assert_eq!(
        error_line(&run),
        "ERROR localhost:1080/files/ has no http:// or https://: did you mean http://localhost:1080/files/?"
    );

    // written as a path, or an existing folder of that name: a folder
    let run = env.send(&file, "./127.0.0.1:19100/files/").ok();
    assert!(
        env.join("127.0.0.1:19100/files/files/a.bin").is_file(),
        "{}",
        run.stdout
    );
    env.mkdir("backup.example.org");
    env.send(&file, "backup.example.org/files/").ok();
    assert!(env.join("backup.example.org/files/files/a.bin").is_file());
    let absolute = env.join("srv.example.org:80/in");
    env.send(&file, absolute.to_str().unwrap()).ok();
    assert!(absolute.join("files/a.bin").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_of_uploads_completed_within_one_second() {
    use crate::serve_env::{id_of, metadata};
    let server = Server::start(|_| {}).await;
    let tus = server.client();
    // start at the beginning of a second, so that the uploads share it
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        // empty uploads are complete when created; every one has the name a push gives
        let loc = tus
            .create(0, &metadata(&[("filename", "web-2026-12-01T023000.zip")]))
            .await;
        ids.push(id_of(&loc));
    }
    let env = TestEnv::new();
    let list = || env.robusto("list").args(["--from", &server.endpoint(), "--json"]);
    let listed: Vec<robusto::protocol::Listed> = serde_json::from_str(&list().run_async().await.ok().stdout).unwrap();
    let seconds: std::collections::BTreeSet<_> = listed.iter().map(|u| u.completed).collect();
    assert!(seconds.len() <= 2, "the uploads took more than a second: {seconds:?}");
    assert_eq!(
        listed.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        ids,
        "listed in completion order"
    );
    assert!(listed.iter().all(|u| u.completed_ns.is_some()));
    for _ in 0..3 {
        assert_eq!(
            list().run_async().await.ok().stdout,
            list().run_async().await.ok().stdout,
            "the same order every time"
        );
    }

    let run = env
        .robusto("prune")
        .args(["--from", &server.endpoint(), "--keep-last", "2"])
        .run_async()
        .await
        .ok();
    let left: Vec<robusto::protocol::Listed> = serde_json::from_str(&list().run_async().await.ok().stdout).unwrap();
    assert_eq!(
        left.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        ids[6..],
        "the two completed last are kept\n{}",
        run.stdout
    );
}

#[test]
fn a_bad_exclude_pattern_is_a_usage_error_naming_it() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let run = env.pack(&tree, "a.zip").args(["--exclude", "["]).code(2);
    assert_eq!(
        error_line(&run),
        "ERROR bad exclude pattern '[': unclosed character class; missing ']'"
    );
    assert!(!env.join("a.zip").exists() && !env.join("a.zip.partial").exists());
    let run = env
        .push(&tree, "./received")
        .args(["--exclude", "*.log", "--exclude", "a[b"])
        .code(2);
    assert!(error_line(&run).contains("bad exclude pattern 'a[b'"), "{}", run.stderr);
}

#[test]
fn config_check_reports_every_bad_profile_then_exits_2() {
    let env = TestEnv::new();
    let token = env.write_secret("token", "t\n");
    let config = env.write(
        "robusto.toml",
        format!(
            "[profile.good]\npaths = [\"/etc\"]\nto = \"./out\"\n\n\
             [profile.rate]\npaths = [\"/etc\"]\nto = \"./out\"\nbwlimit = \"fast\"\n\n\
             [profile.fine]\npaths = [\"/etc\"]\nto = \"./out\"\ntoken-file = \"{}\"\n\n\
             [profile.key]\npaths = [\"/etc\"]\nto = \"./out\"\nno-such-key = 1\n",
            token.display()
        ),
    );
    let run = env.robusto("--config").arg(&config).args(["config", "check"]).code(2);
    // profiles in the order of their names
    assert_eq!(run.stdout, "[profile.fine]: valid\n[profile.good]: valid\n");
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    let file = config.display();
    assert_eq!(errors.len(), 3, "{}", run.stderr);
    assert_eq!(
        errors[0],
        format!("ERROR {file}: [profile.key] has an unknown key 'no-such-key'")
    );
    assert!(
        errors[1].starts_with(&format!("ERROR {file}: [profile.rate]: --bwlimit: ")) && errors[1].contains("fast"),
        "{}",
        errors[1]
    );
    assert_eq!(errors[2], format!("ERROR {file}: 2 of 4 profile(s) are not valid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_others_may_read_is_refused_by_client_and_server() {
    let env = TestEnv::new();
    let token = env.write("token", "s3cret\n");
    chmod(&token, 0o644);
    let file = env.write("a.bin", noise(1000, 5));
    let expected = format!(
        "ERROR --token-file {} holds tokens but its group or others may read it (mode 644): chmod 600 {}",
        token.display(),
        token.display()
    );
    let run = env
        .send(&file, "http://127.0.0.1:9/files/")
        .arg("--token-file")
        .arg(&token)
        .run_async()
        .await
        .code(2);
    assert_eq!(error_line(&run), expected);
    let run = env
        .robusto("list")
        .args(["--from", "http://127.0.0.1:9/files/", "--token-file"])
        .arg(&token)
        .run_async()
        .await
        .code(2);
    assert_eq!(error_line(&run), expected);
    let run = env
        .robusto("serve")
        .args(["--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token)
        .arg("--data")
        .arg(env.join("data"))
        .run_async()
        .await
        .code(2);
    assert_eq!(error_line(&run), expected);

    // 0600 (or 0400) is taken
    chmod(&token, 0o600);
    let server = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("s3cret\n")).await;
    env.send(&file, &server.endpoint())
        .arg("--token-file")
        .arg(&token)
        .run_async()
        .await
        .ok();
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_named_and_the_job_is_resumable() {
    let env = TestEnv::new();
    let file = env.write("a.bin", noise(1000, 6));
    let port = dead_port();
    let endpoint = format!("http://127.0.0.1:{port}/files/");
    let refused = format!("connection refused by 127.0.0.1:{port} (is the server running, and listening there?)");
    let run = env
        .send(&file, &endpoint)
        .args(["--retries", "1"])
        .run_async()
        .await
        .code(75);
    assert_eq!(
        error_line(&run),
        format!(
            "ERROR giving up after 2 failed attempts on one chunk (last: {refused}); run the same command again to continue"
        )
    );
    assert!(
        run.stderr.contains("WARN retry 1/1 in") && run.stderr.contains(&refused),
        "{}",
        run.stderr
    );
    // list, prune and status say the same, and exit as send does
    for cmd in [
        env.robusto("list").args(["--from", &endpoint]),
        env.robusto("prune").args(["--from", &endpoint, "--keep-last", "1"]),
    ] {
        let run = cmd.args(["--retries", "1"]).run_async().await.code(75);
        assert_eq!(
            error_line(&run),
            format!(
                "ERROR giving up after 2 failed attempts (last: {refused}); run the same command again to continue"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_fails_at_once_with_what_to_do() {
    let server = Server::start(|c| c.tokens = robusto::serve::auth::Tokens::parse("right\n")).await;
    let env = TestEnv::new();
    let file = env.write("a.bin", noise(1000, 7));
    let endpoint = server.endpoint();
    let cases = [
        (
            None,
            "the server wants a token (401 Unauthorized): pass it with --token-file FILE or $ROBUSTO_TOKEN",
        ),
        (
            Some("wrong"),
            "the server refused the token (401 Unauthorized): check the one in --token-file FILE or $ROBUSTO_TOKEN",
        ),
    ];
    for (token, says) in cases {
        let with = |c: TestCommand| match token {
            Some(t) => c.env("ROBUSTO_TOKEN", t),
            None => c,
        };
        let started = std::time::Instant::now();
        let run = with(env.send(&file, &endpoint)).run_async().await.code(1);
        assert_eq!(error_line(&run), format!("ERROR {endpoint}: {says}"));
        assert!(!run.stderr.contains("retry"), "not retried: {}", run.stderr);
        let run = with(env.robusto("list").args(["--from", &endpoint]))
            .run_async()
            .await
            .code(1);
        assert_eq!(error_line(&run), format!("ERROR {endpoint}: {says}"));
        assert!(!run.stderr.contains("retry"), "not retried: {}", run.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "at once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_endpoint_path_is_said_to_be_one() {
    let server = Server::start(|_| {}).await;
    let env = TestEnv::new();
    let file = env.write("a.bin", noise(1000, 8));
    let wrong = format!("{}/uploads/", server.base);
    let run = env.send(&file, &wrong).run_async().await.code(1);
    assert_eq!(
        error_line(&run),
        format!(
            "ERROR {wrong}: not a tus upload endpoint: POST answered 404 Not Found; check the URL's path (robusto serve's endpoint is /files/)"
        )
    );
    let run = env.robusto("list").args(["--from", &wrong]).run_async().await.code(1);
    assert_eq!(
        error_line(&run),
        format!(
            "ERROR {wrong}: not a robusto upload endpoint: GET answered 404 Not Found; check the URL's path (robusto serve's endpoint is /files/)"
        )
    );
    // the endpoint itself works
    env.send(&file, &server.endpoint()).run_async().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_pack_with_130_and_leaves_nothing_behind() {
    let env = TestEnv::new();
    let tree = env.mkdir("big");
    for i in 0..200 {
        env.write(format!("big/small/{i}.txt"), format!("file {i}\n"));
    }
    // 8 GiB of zeros (sparse): far longer to pack than the test waits
    fs::File::create(tree.join("disk.img"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    for (format, sig) in [("zip", libc::SIGTERM), ("tar", libc::SIGINT)] {
        let archive = env.join(format!("big.{format}"));
        let child = env.pack(&tree, &archive).args(["--format", format]).spawn();
        let partial = env.join(format!("big.{format}.partial"));
        for _ in 0..400 {
            if partial.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(partial.exists(), "{format}: packing started");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        signal(&child, sig);
        let run = Run::of_child(child).await.code(130);
        assert!(
            run.stderr
                .lines()
                .any(|l| l == " WARN interrupted: no archive was written"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        let left: Vec<_> = fs::read_dir(env.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("big."))
            .collect();
        assert!(left.is_empty(), "{format}: left behind {left:?}");
    }
}

/// Every command of `robusto`, as `robusto --help` lists them.
const COMMANDS: [&str; 13] = [
    "pack",
    "verify",
    "send",
    "status",
    "get",
    "push",
    "restore",
    "serve",
    "list",
    "prune",
    "config",
    "completions",
    "man",
];

/// Whether `tool` is on the PATH.
fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_cover_every_command_and_bash_accepts_them() {
    let help = robusto(["--help"]).ok();
    for c in COMMANDS {
        assert!(
            help.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{c} "))),
            "{c} in --help"
        );
    }
    let env = TestEnv::new();
    let bash = env.robusto("completions").arg("bash").ok();
    let first_words = bash
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("opts=\"-v -q"))
        .expect("the words after robusto");
    for c in COMMANDS {
        assert!(
            bash.stdout.contains(&format!("robusto,{c})")),
            "the bash script completes {c}'s flags"
        );
        assert!(
            first_words.split([' ', '"']).any(|w| w == c),
            "{c} completes after robusto"
        );
    }
    assert!(bash.stdout.contains("--token-file") && bash.stdout.contains("--keep-last"));
    let script = env.write("robusto.bash", &bash.stdout);
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // sourced, it registers the completion for robusto
    let complete = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p robusto", script.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&complete.stdout).contains("robusto"),
        "{complete:?}"
    );
    for shell in ["zsh", "fish"] {
        let out = env.robusto("completions").arg(shell).ok();
        assert!(
            out.stdout.contains("push") && out.stdout.contains("token-file"),
            "{shell}"
        );
    }
    let run = env.robusto("completions").arg("tcsh").code(2);
    assert!(run.stderr.contains("invalid value 'tcsh'"), "{}", run.stderr);
}

#[test]
fn the_man_page_has_every_command_and_renders() {
    let env = TestEnv::new();
    let page = env.robusto("man").ok().stdout;
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "roff: {}",
        &page[..80]
    );
    assert!(page.contains(".TH robusto 1"), "a section 1 page");
    for c in COMMANDS.iter().filter(|c| **c != "config") {
        assert!(
            page.contains(&format!(".SH \"ROBUSTO {}\"", c.to_uppercase())),
            "{c} has its section"
        );
    }
    assert!(page.contains(".SH \"ROBUSTO CONFIG CHECK\""));
    for flag in ["token\\-file", "keep\\-last", "to", "bwlimit", "tls\\-cert", "manifest"] {
        assert!(
            page.contains(&format!("\\fB\\-\\-{flag}\\fR")),
            "--{flag} is in the page"
        );
    }
    assert!(page.is_ascii(), "plain ASCII roff");
    let file = env.write("robusto.1", &page);
    if have("man") {
        let out = std::process::Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success() && stderr.is_empty(), "man -l: {stderr}");
        assert!(
            stdout.contains("ROBUSTO PUSH") && stdout.contains("--token-file"),
            "{stdout}"
        );
    } else if have("groff") {
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_help_has_examples_and_global_options_apart() {
    let push = robusto(["push", "--help"]).ok().stdout;
    let lines: Vec<&str> = push.lines().collect();
    let at = |heading: &str| {
        lines
            .iter()
            .position(|l| *l == heading)
            .unwrap_or_else(|| panic!("{heading} in {push}"))
    };
    let (own, global, examples) = (at("Options:"), at("Global options:"), at("Examples:"));
    assert!(own < global && global < examples, "{push}");
    assert_eq!(
        lines[examples + 1],
        "  robusto push ~/Documents --to https://backup.example.org/files/ \\"
    );
    let section = |from: usize, to: usize| lines[from..to].join("\n");
    assert!(section(own, global).contains("--profile <NAME>") && section(own, global).contains("--to <URL|DIR>"));
    let globals = section(global, examples);
    for flag in ["--verbose", "--quiet", "--json", "--log-file <FILE>"] {
        assert!(globals.contains(flag), "{flag} among the global options");
    }
    assert!(
        !globals.contains("--profile") && !globals.contains("--to "),
        "{globals}"
    );

    for c in COMMANDS.iter().filter(|c| **c != "config").chain(&["config check"]) {
        let args: Vec<&str> = c.split(' ').chain(["--help"]).collect();
        let help = robusto(&args).ok().stdout;
        let example = help
            .lines()
            .skip_while(|l| *l != "Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("robusto {c} --help has no example:\n{help}"));
        assert!(example.starts_with(&format!("  robusto {c}")), "{c}: {example}");
        assert!(help.contains("\nGlobal options:\n"), "{c}");
        // --profile (and --config) only where a profile applies
        let profile = help.contains("--profile <NAME>");
        assert_eq!(
            profile,
            matches!(*c, "push" | "config check"),
            "{c}: --profile shown: {profile}"
        );
    }
    assert!(!robusto(["--help"]).ok().stdout.contains("--profile"));
}

#[test]
fn profile_goes_before_or_after_the_command_and_only_with_push_and_config() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let config = env.write(
        "robusto.toml",
        format!(
            "[profile.local]\npaths = [\"{}\"]\nto = \"./received\"\nstate-dir = \"{}\"\n",
            tree.display(),
            env.state().display()
        ),
    );
    let after = env
        .robusto("push")
        .args(["--profile", "local", "--config"])
        .arg(&config)
        .ok();
    assert!(env.join(after.stdout.trim()).is_file(), "{}", after.stdout);
    let before = env
        .robusto("--config")
        .arg(&config)
        .args(["--profile", "local", "push"])
        .ok();
    assert!(env.join(before.stdout.trim()).is_file(), "{}", before.stdout);
    let shown = env
        .robusto("config")
        .args(["check", "--profile", "local", "--config"])
        .arg(&config)
        .ok();
    assert!(
        shown.stdout.contains("to = \"./received\"  # profile"),
        "{}",
        shown.stdout
    );
    let run = env
        .robusto("--profile")
        .args(["local", "list", "--from", "http://127.0.0.1:9/files/"])
        .code(2);
    assert_eq!(run.stderr.trim(), "error: --profile applies to push and config check");
    let run = env
        .robusto("send")
        .args(["x", "--to", "./r", "--profile", "local"])
        .code(2);
    assert!(
        run.stderr.contains("--profile applies to push and config check"),
        "{}",
        run.stderr
    );
}

#[test]
fn verify_says_a_truncated_archive_is_too_short_and_restore_keeps_link_times() {
    let env = TestEnv::new();
    env.write("tree/a.bin", crate::serve_env::bytes(300_000, 4));
    std::os::unix::fs::symlink("a.bin", env.join("tree/link")).unwrap();
    // an old mtime on the link itself
    sh(&format!(
        "touch -h -d 2020-01-02T03:04:05Z '{}'",
        env.join("tree/link").display()
    ));
    env.pack("tree", "t.tar")
        .args(["--format", "tar", "--compress", "none"])
        .ok();
    env.restore(env.join("t.tar"), "out").ok();
    let m = fs::symlink_metadata(env.join("out/tree/link")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mtime(), 1_577_934_245, "the link's own mtime is restored");

    let file = fs::OpenOptions::new().write(true).open(env.join("t.tar")).unwrap();
    file.set_len(100_000).unwrap();
    let run = env.robusto("verify").arg(env.join("t.tar")).code(1);
    assert!(run.stderr.contains("too short (truncated)"), "{run:?}");
}

#[test]
fn hard_links_are_stored_once_in_tar_and_restored_as_links() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new();
    let data = crate::serve_env::bytes(1 << 20, 9);
    env.write("tree/a.bin", &data);
    fs::hard_link(env.join("tree/a.bin"), env.join("tree/b.bin")).unwrap();
    env.mkdir("tree/sub");
    fs::hard_link(env.join("tree/a.bin"), env.join("tree/sub/c.bin")).unwrap();
    env.pack("tree", "t.tar")
        .args(["--format", "tar", "--compress", "none"])
        .ok();
    let size = fs::metadata(env.join("t.tar")).unwrap().len();
    assert!(
        size < (1 << 20) + (64 << 10),
        "the content is stored once: {size} bytes"
    );
    let list = sh(&format!("tar -tvf '{}'", env.join("t.tar").display())).stdout;
    assert!(list.contains("tree/b.bin link to tree/a.bin"), "{list}");
    env.restore(env.join("t.tar"), "out").ok();
    let ino = |p: &str| fs::metadata(env.join(p)).unwrap().ino();
    assert_eq!(ino("out/tree/a.bin"), ino("out/tree/b.bin"));
    assert_eq!(ino("out/tree/a.bin"), ino("out/tree/sub/c.bin"));
    assert_eq!(fs::read(env.join("out/tree/sub/c.bin")).unwrap(), data);
    // zip has no hard links: each name carries the content
    env.pack("tree", "t.zip").ok();
    env.restore(env.join("t.zip"), "zout").ok();
    assert_eq!(fs::read(env.join("zout/tree/b.bin")).unwrap(), data);
}

#[test]
fn the_exclude_flags_backup_users_expect() {
    let env = TestEnv::new();
    env.write("tree/keep.txt", "k");
    env.write("tree/Thumbs.DB", "t");
    env.write("tree/photos/IMG.JPG", "j");
    env.write("tree/photos/note.txt", "n");
    env.write("tree/private/.nobackup", "");
    env.write("tree/private/secret.txt", "s");
    env.write(
        "tree/cache/CACHEDIR.TAG",
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    );
    env.write("tree/cache/blob", "c");
    env.write("tree/notcache/CACHEDIR.TAG", "no signature here\n");
    env.write("tree/notcache/kept", "k");
    env.write("tree/big.iso", crate::serve_env::bytes(200_000, 1));
    env.write("other/extra.txt", "from the list");
    env.write(
        "list.txt",
        format!("# the paths to pack\n{}\n", env.join("other").display()),
    );
    env.pack("tree", "t.tar")
        .args(["--format", "tar", "--compress", "none"])
        .args(["--iexclude", "thumbs.db", "--iexclude", "*.jpg"])
        .args(["--exclude-if-present", ".nobackup", "--exclude-caches"])
        .args(["--exclude-larger-than", "100KiB"])
        .arg("--files-from")
        .arg(env.join("list.txt"))
        .ok();
    let names = sh(&format!("tar -tf '{}' | sort", env.join("t.tar").display())).stdout;
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(
        names,
        [
            "other/",
            "other/extra.txt",
            "tree/",
            "tree/keep.txt",
            "tree/notcache/",
            "tree/notcache/CACHEDIR.TAG",
            "tree/notcache/kept",
            "tree/photos/",
            "tree/photos/note.txt",
        ]
    );
    // --files-from alone is enough
    env.robusto("pack")
        .arg("--files-from")
        .arg(env.join("list.txt"))
        .arg("-o")
        .arg(env.join("l.zip"))
        .ok();
    let run = env
        .robusto("pack")
        .arg("tree")
        .arg("--exclude-larger-than")
        .arg("big")
        .arg("-o")
        .arg("x.zip")
        .code(2);
    assert!(run.stderr.contains("--exclude-larger-than"), "{run:?}");
}

#[test]
fn dry_runs_say_what_would_be_packed_and_write_nothing() {
    let env = TestEnv::new();
    env.write("tree/a.txt", "a".repeat(10_000));
    env.write("tree/sub/b.bin", crate::serve_env::bytes(100_000, 3));
    env.write("tree/skip.tmp", "t");
    let run = env
        .robusto("pack")
        .arg(env.join("tree"))
        .args(["--dry-run", "--exclude", "*.tmp", "--compress", "zstd"])
        .ok();
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["tree", "tree/a.txt", "tree/sub", "tree/sub/b.bin"]
    );
    assert!(run.stderr.contains("would pack 2 files (107.4 KiB)"), "{run:?}");
    // the text compresses, the random bytes do not: about 100 KB, not 110
    let est: f64 = run
        .stderr
        .split("about ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((95.0..=105.0).contains(&est), "{run:?}");
    assert_eq!(fs::read_dir(env.path()).unwrap().count(), 1, "nothing written");
    let run = env.push("tree", "http://127.0.0.1:9/files/").arg("--dry-run").ok();
    assert!(
        run.stdout.contains("tree/sub/b.bin") && run.stderr.contains("would pack 3 files"),
        "{run:?}"
    );
    assert!(!env.state().join("staging").exists(), "push --dry-run stages nothing");
    let run = env.robusto("pack").arg(env.join("tree")).code(2);
    assert!(run.stderr.contains("-o FILE"), "{run:?}");
}

#[test]
fn a_dangling_link_followed_is_called_dangling() {
    let env = TestEnv::new();
    env.write("tree/a.txt", "a");
    std::os::unix::fs::symlink("nowhere.txt", env.join("tree/broken")).unwrap();
    let run = env.pack("tree", "t.zip").arg("--follow-symlinks").code(3);
    assert!(
        run.stderr
            .contains("broken: dangling symlink: nowhere.txt does not exist"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_restore_and_leaves_the_target_as_it_was() {
    let env = TestEnv::new();
    env.write("tree/small.txt", "s");
    // 3 GiB of zeros: a small tar.zst that takes seconds to write out
    let big = fs::File::create(env.join("tree/zeros.bin")).unwrap();
    big.set_len(3 << 30).unwrap();
    env.pack("tree", "t.tar.zst")
        .args(["--format", "tar", "--compress", "zstd", "-l", "1"])
        .ok();
    fs::remove_dir_all(env.join("tree")).unwrap();
    env.write("into/mine.txt", "already here");
    let child = env.restore(env.join("t.tar.zst"), "into").spawn();
    // wait until the staging folder has the big file on its way
    for _ in 0..100 {
        let staged = fs::read_dir(env.join("into"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(".robusto-restore-"));
        if staged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: nothing of the restore was moved into place"),
        "{stderr}"
    );
    let left: Vec<String> = fs::read_dir(env.join("into"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["mine.txt"], "no staging folder, nothing restored");
}
