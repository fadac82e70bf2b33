//! The `robusto` binary: parse the command line, set up logging, dispatch to the library, and
//! turn the outcome into an exit code (0 done, 1 failed, 2 usage, 3 done with skipped files,
//! 75 resumable, 130 interrupted).

mod cli;

/// The process allocator: glibc's malloc, except on the zip compression workers, which get
/// mimalloc (see [`robusto::pack::on_compression_worker`]): with glibc alone `pack` reached
/// 2.7 GB RSS on 48,000 files; with mimalloc alone the server used twice the CPU per GiB. A
/// block is always freed by the allocator that owns it, whichever thread frees it.
struct Allocator;

/// Set (before any worker thread exists) for the commands that pack; until then, and for every
/// other command, all blocks are glibc's and freeing them needs no ownership check.
static PACKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `ptr` belongs to mimalloc (only possible once packing started).
fn mimalloc_owns(ptr: *mut u8) -> bool {
    // SAFETY: mi_is_in_heap_region only compares the address with mimalloc's own regions.
    PACKING.load(std::sync::atomic::Ordering::Relaxed) && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every block is allocated by exactly one of two allocators and returned to the one that
// owns it (mimalloc answers mi_is_in_heap_region for its own blocks only).
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if robusto::pack::on_compression_worker() {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                std::alloc::System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if robusto::pack::on_compression_worker() {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                std::alloc::System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: ptr came from one of the two; each gets back only its own blocks.
        unsafe {
            if mimalloc_owns(ptr) {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                std::alloc::System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for dealloc; the block stays with the allocator that owns it.
        unsafe {
            if mimalloc_owns(ptr) {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                std::alloc::System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the v3 header this build compiles).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The compression workers' freed buffers go back to the system at once (instead of after
/// 10 ms), so `pack`'s memory stays bounded by its window, not by the number of files.
fn return_freed_memory_promptly() {
    // SAFETY: mi_option_set only stores an integer option; 0 is valid for this one.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use robusto::config::{self, Profile};
use robusto::hooks::{self, JobOutcome};

use cli::{Cli, Command, UsageError};
use robusto::progress::{Event, Human, JsonLines, Progress, Silent};
use robusto::send::local::LocalServer;
use robusto::send::{SendOptions, SendOutcome};

/// Exit codes (README "Exit codes").
mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const SKIPPED: u8 = 3;
    pub const RESUMABLE: u8 = 75;
    pub const INTERRUPTED: u8 = 130;
}

/// The progress reporter the flags and the terminal call for.
fn reporter(global: &cli::GlobalArgs) -> Box<dyn Progress> {
    if global.json {
        Box::new(JsonLines)
    } else if global.quiet {
        Box::new(Silent)
    } else {
        let tty = std::io::stderr().is_terminal();
        let interval = (global.verbose > 0).then(|| Duration::from_secs(10));
        Box::new(Human::new(tty, interval))
    }
}

/// Logs to stderr, and to `log_file` as well when given. A log file that cannot be opened is
/// reported and skipped: losing the file must not lose the night's backup (or its hooks).
fn init_logging(global: &cli::GlobalArgs, log_file: Option<&std::path::Path>) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = || EnvFilter::try_from_env("ROBUSTO_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let opened = log_file.map(|path| (path, std::fs::OpenOptions::new().create(true).append(true).open(path)));
    match opened {
        Some((_, Ok(file))) => {
            // the file gets timestamps (it outlives the run), and no colour codes
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr.and(std::sync::Mutex::new(file)))
                .with_ansi(false)
                .with_target(false)
                .init()
        }
        other => {
            tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(false)
                .without_time()
                .init();
            if let Some((path, Err(e))) = other {
                tracing::warn!(
                    "cannot append to the log file {}: {e}; logging to stderr only",
                    path.display()
                );
            }
        }
    }
}

/// Counts retries on their way to the real reporter, for the job summary.
struct Counting<'a> {
    inner: &'a dyn Progress,
    retries: AtomicU64,
}

impl Progress for Counting<'_> {
    fn event(&self, event: &Event) {
        if matches!(event, Event::Retry { .. }) {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.event(event);
    }
}

/// The command line, with a `--profile` of the configuration file put in front of the user's own
/// arguments (flags > environment > profile > defaults), and every flag's `ROBUSTO_*` variable.
fn parse_command_line(argv: Vec<OsString>) -> Result<(Cli, Option<Profile>), ParseFailure> {
    let mut cmd = config::with_env(Cli::command());
    let lenient = cmd.clone().ignore_errors(true).try_get_matches_from(&argv).ok();
    let name = lenient.as_ref().and_then(|m| m.get_one::<String>("profile").cloned());
    let file = lenient
        .as_ref()
        .and_then(|m| m.get_one::<std::path::PathBuf>("config").cloned());
    let sub = lenient.as_ref().and_then(|m| m.subcommand_name().map(str::to_string));
    let mut profile = None;
    if let Some(name) = name {
        if !matches!(sub.as_deref(), Some("push" | "config")) {
            return Err(ParseFailure::Usage("--profile applies to push and config check".into()));
        }
        let usage = |e: config::ConfigError| ParseFailure::Usage(e.to_string());
        let path = config::locate(file.as_deref()).map_err(usage)?;
        let push = cmd
            .find_subcommand("push")
            .ok_or_else(|| ParseFailure::Usage("no push command".into()))?;
        let mut p = config::load_profile(&path, &name, push).map_err(usage)?;
        // the environment's token wins over the profile's token file
        if std::env::var_os("ROBUSTO_TOKEN").is_some() {
            p.values.remove("token_file");
        }
        cmd = cmd.mut_subcommand("push", |s| p.apply(s));
        profile = Some(p);
    }
    let matches = cmd.try_get_matches_from(&argv).map_err(|e| match &profile {
        // a bad value may come from the profile: say where to look
        Some(p) if e.use_stderr() => ParseFailure::Usage(format!(
            "{} (values may come from [profile.{}] of {})",
            e.render().to_string().trim().trim_start_matches("error: "),
            p.name,
            p.file.display()
        )),
        _ => ParseFailure::Clap(e),
    })?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseFailure::Clap)?;
    Ok((cli, profile))
}

/// Why the command line could not be taken.
enum ParseFailure {
    Clap(clap::Error),
    Usage(String),
}

/// `robusto config check`: the resolved settings of `push --profile P`, with their sources.
fn config_check(global: &cli::GlobalArgs, profile: Option<&Profile>) -> anyhow::Result<u8> {
    let Some(p) = profile else {
        // No profile named: every profile in the file must resolve to a valid push.
        let path = config::locate(global.config.as_deref()).map_err(|e| UsageError(e.to_string()))?;
        let text = std::fs::read_to_string(&path).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
        let doc = text
            .parse::<toml::Table>()
            .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
        let names: Vec<String> = match doc.get("profile") {
            Some(toml::Value::Table(t)) => t.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let cmd = config::with_env(Cli::command());
        let push = cmd
            .find_subcommand("push")
            .ok_or_else(|| anyhow::anyhow!("no push command"))?;
        for name in &names {
            let p = config::load_profile(&path, name, push).map_err(|e| UsageError(e.to_string()))?;
            resolve_profile(&p)?;
            println!("[profile.{name}]: valid");
        }
        println!(
            "{}: valid, {} profile(s) (name one with --profile to see its settings)",
            path.display(),
            names.len()
        );
        return Ok(exit::OK);
    };
    let (cmd, matches) = resolve_profile(p)?;
    let Some(push) = matches.subcommand_matches("push") else {
        return Ok(exit::FAILED);
    };
    let push_cmd = cmd
        .find_subcommand("push")
        .ok_or_else(|| anyhow::anyhow!("no push command"))?;
    println!("# {} [profile.{}]", p.file.display(), p.name);
    for arg in push_cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(source) = push.value_source(id) else { continue };
        let values: Vec<String> = push
            .get_raw(id)
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let from = match source {
            clap::parser::ValueSource::EnvVariable => "environment",
            _ if p.values.contains_key(id) || (id == "paths" && !p.paths.is_empty()) => "profile",
            _ => "default",
        };
        let key = arg.get_long().unwrap_or(id);
        println!("{key} = {:?}  # {from}", values.join(" "));
    }
    if std::env::var_os("ROBUSTO_TOKEN").is_some() {
        println!("token = \"<redacted>\"  # environment");
    }
    for (key, value) in [
        ("run-before", &p.hooks.before),
        ("run-after", &p.hooks.after),
        ("run-failed", &p.hooks.failed),
        ("run-finally", &p.hooks.finally),
    ] {
        if let Some(v) = value {
            println!("{key} = {v:?}  # profile");
        }
    }
    Ok(exit::OK)
}

/// `push --profile P` as it would run: parsed with the profile's values as defaults and the
/// environment over them, then validated the way `push` validates its options (sizes, rates,
/// durations, the destination). Errors name the profile and its file.
fn resolve_profile(p: &Profile) -> anyhow::Result<(clap::Command, clap::ArgMatches)> {
    let in_profile = |what: String| UsageError(format!("{}: [profile.{}]: {what}", p.file.display(), p.name));
    let cmd = config::with_env(Cli::command()).mut_subcommand("push", |s| p.apply(s));
    let matches = cmd
        .clone()
        .try_get_matches_from(["robusto", "push"])
        .map_err(|e| in_profile(e.render().to_string().trim().trim_start_matches("error: ").to_string()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| in_profile(e.to_string()))?;
    if let Command::Push(args) = &cli.command {
        let dest = cli::destination(&args.send.to).map_err(|e| in_profile(e.to_string()))?;
        args.options(dest.endpoint()).map_err(|e| in_profile(e.to_string()))?;
    }
    Ok((cmd, matches))
}

fn run(cli: Cli, profile: Option<Profile>) -> anyhow::Result<u8> {
    let progress = reporter(&cli.global);
    match cli.command {
        Command::Pack(args) => {
            let opts = args.to_options()?;
            let report = robusto::pack::pack(&opts, progress.as_ref())?;
            println!("{}  {}", report.manifest.archive.md5, report.archive.display());
            let skipped = report.skipped();
            if skipped.is_empty() {
                Ok(exit::OK)
            } else {
                tracing::warn!(
                    "{} file(s) skipped; listed in {}",
                    skipped.len(),
                    report.manifest_path.display()
                );
                Ok(exit::SKIPPED)
            }
        }
        Command::Restore(args) => restore(&args),
        Command::List(args) => {
            let opts = args.remote.options(None)?;
            let uploads = runtime()?.block_on(robusto::send::get::list(&opts))?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&uploads)?);
            } else {
                for u in &uploads {
                    println!(
                        "{}  {:>12}  {}  {}  {}",
                        u.completed_at.as_deref().unwrap_or("-"),
                        u.size,
                        u.md5.as_deref().unwrap_or("-"),
                        u.name,
                        upload_url(&opts.url, &u.id)
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Prune(args) => {
            let policy = args.policy()?;
            let opts = args.remote.options(None)?;
            let rt = runtime()?;
            let uploads = rt.block_on(robusto::send::get::list(&opts))?;
            let (mut kept, mut removed) = (0, 0);
            for d in robusto::retention::decide(uploads, policy) {
                let url = robusto::send::Url::parse(&upload_url(&opts.url, &d.upload.id))?;
                if d.keep() {
                    kept += 1;
                    println!(
                        "keep    {}  {}  ({})",
                        d.upload.completed_at.as_deref().unwrap_or("-"),
                        d.upload.name,
                        d.reasons.join(", ")
                    );
                } else if args.dry_run {
                    println!(
                        "would remove  {}  {}",
                        d.upload.completed_at.as_deref().unwrap_or("-"),
                        d.upload.name
                    );
                } else {
                    rt.block_on(robusto::send::get::delete(&opts, &url))?;
                    removed += 1;
                    println!(
                        "removed {}  {}",
                        d.upload.completed_at.as_deref().unwrap_or("-"),
                        d.upload.name
                    );
                }
            }
            tracing::info!(
                "kept {kept}, removed {removed}{}",
                if args.dry_run { " (dry run)" } else { "" }
            );
            Ok(exit::OK)
        }
        Command::Verify(args) => {
            let m = robusto::manifest::verify(&args.file)?;
            tracing::info!(
                "{}: {} bytes, {} chunks, md5 {} — all match",
                args.file.display(),
                m.archive.size,
                m.chunks.len(),
                m.archive.md5
            );
            println!("{}  {}", m.archive.md5, args.file.display());
            Ok(exit::OK)
        }
        Command::Serve(args) => serve(&args),
        Command::Send(args) => {
            let dest = cli::destination(&args.send.to)?;
            let opts = args.send.options(args.file, dest.endpoint(), args.name)?;
            let progress = send_reporter(&cli.global);
            Ok(block_on_then_drop(send_to(dest, opts, progress.as_ref()))??.code)
        }
        Command::Push(args) => {
            // Ctrl-C or SIGTERM (systemctl stop) ends the job at a point it resumes from, and the
            // hooks still run (exit 130).
            if let Err(e) = robusto::stop::watch_signals() {
                tracing::warn!("cannot watch for SIGINT/SIGTERM ({e}); a signal will end the job without its hooks");
            }
            let hooks = profile.as_ref().map(|p| p.hooks.clone()).unwrap_or_default();
            // A profile's job holds its lock around its hooks too: an overlapping run must not
            // run run-before (a dump, say) under the running one, nor its cleanup after.
            let _job = match &profile {
                Some(p) => {
                    let state = args
                        .send
                        .state_dir
                        .clone()
                        .unwrap_or_else(robusto::send::journal::default_state_dir);
                    Some(robusto::send::journal::lock(
                        &state.join(format!("profile-{}.lock", p.name)),
                    )?)
                }
                None => None,
            };
            let started = Instant::now();
            if let Err(e) = hooks::before(&hooks) {
                // the job does not start; the failure hooks still run (a stop during run-before
                // usually ends the hook too: that is an interruption, not a failure)
                let stopped = robusto::stop::requested();
                hooks::after(
                    &hooks,
                    &JobOutcome {
                        exit: if stopped { exit::INTERRUPTED } else { exit::FAILED },
                        url: None,
                        bytes: None,
                    },
                );
                if stopped {
                    tracing::warn!("interrupted during run-before ({e})");
                    return Ok(exit::INTERRUPTED);
                }
                return Err(e.into());
            }
            let mut summary = PushSummary::default();
            let mut result = push(&cli.global, &args, progress.as_ref(), &mut summary);
            if let Err(e) = &result
                && robusto::stop::requested()
            {
                // whatever the stop cut short (a read, a write) reports itself as an error
                tracing::warn!("interrupted ({})", error_chain(e));
                result = Ok(exit::INTERRUPTED);
            }
            let exit = match &result {
                Ok(code) => *code,
                Err(e) if e.downcast_ref::<UsageError>().is_some() => exit::USAGE,
                Err(_) => exit::FAILED,
            };
            hooks::after(
                &hooks,
                &JobOutcome {
                    exit,
                    url: summary.url.clone(),
                    bytes: summary.archive_size,
                },
            );
            let (files, bytes_in, archive_size) = (summary.files, summary.bytes_in, summary.archive_size.unwrap_or(0));
            progress.event(&Event::Summary {
                exit,
                files,
                bytes_in,
                archive_size,
                ratio: if bytes_in == 0 {
                    0.0
                } else {
                    archive_size as f64 / bytes_in as f64
                },
                duration_s: started.elapsed().as_secs_f64(),
                retries: summary.retries,
                url: summary.url,
            });
            result
        }
        Command::Config(cli::ConfigCommand::Check) => config_check(&cli.global, profile.as_ref()),
        Command::Status(args) => {
            let opts = args.options()?;
            let v = runtime()?.block_on(robusto::send::get::status(&opts))?;
            println!("{v}");
            Ok(exit::OK)
        }
        Command::Get(args) => {
            let opts = args.options()?;
            match runtime()?.block_on(robusto::send::get::get(&opts, &args.output)) {
                Ok(r) => {
                    tracing::info!(
                        "{}: {} bytes, md5 {}{}",
                        args.output.display(),
                        r.bytes,
                        r.md5,
                        if r.verified { " (verified)" } else { " (not verified)" }
                    );
                    println!("{}  {}", r.md5, args.output.display());
                    Ok(exit::OK)
                }
                Err(e) if e.is_resumable() => {
                    tracing::error!("{e}");
                    Ok(exit::RESUMABLE)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The reporter for sending: like [`reporter`], but without a TTY a log line every 10 s even
/// without `-v` (a long upload under cron or systemd should show signs of life).
fn send_reporter(global: &cli::GlobalArgs) -> Box<dyn Progress> {
    if global.json || global.quiet {
        reporter(global)
    } else {
        Box::new(Human::new(
            std::io::stderr().is_terminal(),
            Some(Duration::from_secs(10)),
        ))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `f` on a fresh runtime, then drops the runtime without waiting for blocking work still
/// running on it: after Ctrl-C or SIGTERM a file being fingerprinted or read must not hold up the
/// exit (and the hooks) for minutes.
fn block_on_then_drop<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = runtime()?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    Ok(out)
}

/// Sends to a URL, or to a local folder served in-process for the length of the job.
async fn send_to(dest: cli::Destination, mut opts: SendOptions, progress: &dyn Progress) -> anyhow::Result<Sent> {
    use anyhow::Context as _;
    match dest {
        cli::Destination::Url(_) => send(&opts, progress, None).await,
        cli::Destination::Dir(dir) => {
            let local = LocalServer::start(&dir)
                .await
                .with_context(|| format!("cannot serve --to {}", dir.display()))?;
            opts.target = local.endpoint.clone();
            opts.job_key = Some(robusto::send::local::job_key(&dir));
            let code = send(&opts, progress, Some(&local)).await;
            local.stop().await;
            code
        }
    }
}

/// Runs a send job, stopping cleanly (resumable) on Ctrl-C; prints the URL on success (for a
/// local folder, the path of the received file).
/// `robusto restore`: a local archive is checked against its manifest; an upload (by URL, or by
/// name on the `--from` server) is downloaded resumably and checked against the server's MD5.
fn restore(args: &cli::RestoreArgs) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let text = args.file.to_string_lossy().into_owned();
    let remote_url = if text.starts_with("http://") || text.starts_with("https://") {
        Some(text.clone())
    } else if args.remote.from.is_some() && !args.file.exists() {
        let opts = args.remote.options(None)?;
        let uploads = runtime()?.block_on(robusto::send::get::list(&opts))?;
        let found = uploads
            .iter()
            .rev()
            .find(|u| u.name == text)
            .or_else(|| uploads.iter().rev().find(|u| u.name.starts_with(&text)))
            .ok_or_else(|| anyhow::anyhow!("no completed upload named '{text}' at {}", opts.url))?;
        Some(upload_url(&opts.url, &found.id))
    } else {
        None
    };
    let (archive, downloaded, verify) = match remote_url {
        None => (args.file.clone(), false, !args.no_verify),
        Some(url) => {
            let opts = args.remote.options(Some(&url))?;
            let id = opts
                .url
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .unwrap_or_default();
            let dir = robusto::send::journal::default_state_dir().join("restore");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let file = dir.join(format!("{id}.download"));
            let report = runtime()?.block_on(robusto::send::get::get(&opts, &file))?;
            if !report.verified && !args.no_verify {
                anyhow::bail!(
                    "{url} carries no whole-file checksum to verify against (use --no-verify to extract anyway)"
                );
            }
            tracing::info!(
                "downloaded {url}: {} bytes, md5 {} (matches the server's record)",
                report.bytes,
                report.md5
            );
            (file, true, false)
        }
    };
    let opts = robusto::restore::RestoreOptions {
        archive: archive.clone(),
        into: args.into.clone(),
        dry_run: args.dry_run,
        verify,
    };
    let report = robusto::restore::restore(&opts)?;
    for e in &report.listing {
        println!("{}", listing_line(e));
    }
    if !args.dry_run {
        tracing::info!(
            "restored {} entries ({}) into {}",
            report.entries,
            robusto::units::format_bytes(report.bytes),
            args.into.display()
        );
    }
    if !report.left_out.is_empty() {
        tracing::warn!(
            "{} entries of kinds robusto does not restore (devices, fifos) were left out",
            report.left_out.len()
        );
    }
    if downloaded {
        let _ = std::fs::remove_file(&archive);
    }
    Ok(exit::OK)
}

/// The URL of upload `id` under `endpoint` (`…/files/`), kept relative to the endpoint so that a
/// server behind a path prefix (`https://host/backup/files/`) is addressed right.
fn upload_url(endpoint: &robusto::send::Url, id: &str) -> String {
    format!("{}/{id}", endpoint.as_str().trim_end_matches('/'))
}

/// What a push job did, for its hooks and its summary.
#[derive(Default)]
struct PushSummary {
    files: u64,
    bytes_in: u64,
    archive_size: Option<u64>,
    retries: u64,
    url: Option<String>,
}

/// `robusto push`: pack into the state dir (or reuse what a killed run packed), send, clean up.
fn push(
    global: &cli::GlobalArgs,
    args: &cli::PushArgs,
    progress: &dyn Progress,
    summary: &mut PushSummary,
) -> anyhow::Result<u8> {
    let dest = cli::destination(&args.send.to)?;
    let (pack_opts, mut opts) = args.options(dest.endpoint())?;
    let staged = match robusto::send::push::stage(&opts.state_dir, &pack_opts, &dest.key(), &args.name, progress) {
        Err(robusto::send::push::PushError::Pack(robusto::pack::PackError::Interrupted)) => {
            tracing::warn!("interrupted while packing: run the same command again to start over");
            return Ok(exit::INTERRUPTED);
        }
        staged => staged?,
    };
    summary.files = staged.manifest.source.files;
    summary.bytes_in = staged.manifest.source.bytes;
    summary.archive_size = Some(staged.manifest.archive.size);
    opts.file = staged.archive.clone();
    opts.name = Some(staged.name.clone());
    if robusto::stop::requested() {
        tracing::warn!("interrupted: the archive is packed; run the same command again to send it");
        return Ok(exit::INTERRUPTED);
    }
    let sending = send_reporter(global);
    let counting = Counting {
        inner: sending.as_ref(),
        retries: AtomicU64::new(0),
    };
    let sent = block_on_then_drop(send_to(dest, opts, &counting))??;
    summary.retries = counting.retries.load(Ordering::Relaxed);
    summary.url = sent.url;
    if sent.code != exit::OK {
        return Ok(sent.code);
    }
    let skipped = staged.skipped().len();
    if args.keep_staging {
        tracing::info!("kept the staging archive {}", staged.archive.display());
    } else {
        staged.remove()?;
    }
    if skipped > 0 {
        tracing::warn!("{skipped} file(s) were skipped while packing (named above)");
        Ok(exit::SKIPPED)
    } else {
        Ok(exit::OK)
    }
}

/// How a send ended: the exit code, and the upload's URL when known.
struct Sent {
    code: u8,
    url: Option<String>,
}

async fn send(opts: &SendOptions, progress: &dyn Progress, local: Option<&LocalServer>) -> anyhow::Result<Sent> {
    let stop = robusto::stop::signalled()?;
    let result = tokio::select! {
        r = robusto::send::send(opts, progress) => r,
        _ = stop => {
            progress.event(&Event::Error { message: "interrupted".into(), resumable: true });
            tracing::warn!("interrupted: run the same command again to continue");
            return Ok(Sent { code: exit::INTERRUPTED, url: None });
        }
    };
    match result {
        Ok(SendOutcome::Complete { url }) => {
            match local {
                Some(local) => match local.published(&url).await {
                    Some(path) => println!("{}", path.display()),
                    None => println!("{url}"),
                },
                None => println!("{url}"),
            }
            Ok(Sent {
                code: exit::OK,
                url: Some(url),
            })
        }
        Ok(SendOutcome::Paused { url }) => {
            let resume_url = url.clone();
            let message = format!(
                "--max-duration reached: stopped at a chunk boundary{}; run the same command again to continue",
                url.map(|u| format!(" (upload {u})")).unwrap_or_default()
            );
            progress.event(&Event::Error {
                message: message.clone(),
                resumable: true,
            });
            tracing::warn!("{message}");
            Ok(Sent {
                code: exit::RESUMABLE,
                url: resume_url,
            })
        }
        Err(e) => {
            progress.event(&Event::Error {
                message: e.to_string(),
                resumable: e.is_resumable(),
            });
            if e.is_resumable() {
                tracing::error!("{e}");
                Ok(Sent {
                    code: exit::RESUMABLE,
                    url: None,
                })
            } else {
                Err(e.into())
            }
        }
    }
}

/// One line of `restore --dry-run`: kind, mode, size, mtime, name (like `tar -tv`).
fn listing_line(e: &robusto::restore::Listed) -> String {
    use robusto::restore::EntryKind;
    let kind = match &e.kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink(_) => 'l',
        EntryKind::HardLink(_) => 'h',
    };
    let when = e
        .mtime
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into());
    let mode = e.mode.map(|m| format!("{m:04o}")).unwrap_or_else(|| "----".into());
    let target = match &e.kind {
        EntryKind::Symlink(t) => format!(" -> {t}"),
        EntryKind::HardLink(t) => format!(" link to {t}"),
        _ => String::new(),
    };
    format!("{kind} {mode} {:>12} {when} {}{target}", e.size, e.name)
}

/// `robusto serve`: bind, log the URL, serve until Ctrl-C or SIGTERM.
fn serve(args: &cli::ServeArgs) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let config = args.to_config()?;
    if config.tokens.is_empty() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "no --token-file: anyone who can reach {} can upload; keep an open server on 127.0.0.1",
            args.listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let state = robusto::serve::AppState::open(config.clone())
            .with_context(|| format!("cannot use --data {}", config.data.display()))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal()?;
        tracing::info!("listening on http://{addr}/files/ (data in {})", config.data.display());
        robusto::serve::run(listener, state, shutdown).await?;
        tracing::info!("stopped");
        Ok(exit::OK)
    })
}

/// Completes at Ctrl-C or SIGTERM. The handlers are installed before this returns, so a signal
/// that arrives once the server has said where it listens is never missed.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// The error and its causes on one line, leaving out a cause whose text the message already
/// carries (most of robusto's errors name their cause themselves).
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// The sender holds a few chunk-sized buffers at a time, allocated on whichever blocking thread
/// reads them. glibc gives each thread its own arena, and freed chunk buffers stranded in
/// several arenas took `send --parallel 4` from ~43 to ~69 MiB peak RSS; one arena keeps the
/// client within its bound (32 MiB + parallel × chunk). Its few large allocations do not contend.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    let (cli, profile) = match parse_command_line(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseFailure::Clap(e)) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
        Err(ParseFailure::Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if matches!(cli.command, Command::Pack(_) | Command::Push(_)) {
        PACKING.store(true, std::sync::atomic::Ordering::Relaxed);
        return_freed_memory_promptly();
    }
    if matches!(cli.command, Command::Send(_) | Command::Push(_) | Command::Get(_)) {
        one_malloc_arena();
    }
    let log_file = cli
        .global
        .log_file
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.log_file.clone()));
    init_logging(&cli.global, log_file.as_deref());
    match run(cli, profile) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = if e.downcast_ref::<UsageError>().is_some() {
                exit::USAGE
            } else {
                exit::FAILED
            };
            tracing::error!("{}", error_chain(&e));
            ExitCode::from(code)
        }
    }
}
