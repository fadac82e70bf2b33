//! The `robusto` binary: parse the command line, set up logging, dispatch to the library, and
//! turn the outcome into an exit code (0 done, 1 failed, 2 usage, 3 done with skipped files,
//! 75 resumable, 130 interrupted).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use cli::output::{self, listing_line, prune_line, upload_line};
use cli::profile::ParseFailure;
use cli::{Cli, Command, UsageError};
use robusto::config::Profile;
use robusto::job::{self, Exit};

/// Logs to stderr, and to `log_file` as well when given. A log file that cannot be opened is
/// reported and skipped: losing the file must not lose the night's backup (or its hooks).
fn init_logging(global: &cli::GlobalArgs, log_file: Option<&std::path::Path>) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // The certificate verifier logs each refusal itself; robusto's own error says it once, with
    // what to do.
    let directives = match level {
        "trace" => level.to_string(),
        _ => format!("{level},rustls_platform_verifier=off"),
    };
    let filter = || EnvFilter::try_from_env("ROBUSTO_LOG").unwrap_or_else(|_| EnvFilter::new(&directives));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let opened = log_file.map(|path| (path, std::fs::OpenOptions::new().create(true).append(true).open(path)));
    match opened {
        Some((_, Ok(file))) => {
            // the file gets timestamps (it outlives the run), and no colour codes
            let log = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr.and(std::sync::Mutex::new(file)))
                .with_ansi(false)
                .with_target(false);
            if global.json {
                log.json().flatten_event(true).init()
            } else {
                log.init()
            }
        }
        other => {
            let log = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(false)
                .without_time();
            // --json: every line of stderr is JSON, log records ({"level", "message", fields})
            // as well as the progress events ({"event", …})
            if global.json {
                log.json().flatten_event(true).init()
            } else {
                log.init()
            }
            if let Some((path, Err(e))) = other {
                tracing::warn!(
                    "cannot append to the log file {}: {e}; logging to stderr only",
                    path.display()
                );
            }
        }
    }
}

/// Runs the command; what it prints on stdout is its result, the log goes to stderr.
fn run(cli: Cli, profile: Option<Profile>) -> anyhow::Result<Exit> {
    let progress = output::reporter(&cli.global);
    match cli.command {
        Command::Pack(args) if args.dry_run => {
            let opts = args.to_options()?;
            dry_run(&opts)
        }
        Command::Pack(args) => {
            let opts = args.to_options()?;
            // Ctrl-C or SIGTERM stops the packing before the next entry or write, and the
            // staging file is removed, as in push
            if let Err(e) = robusto::stop::watch_signals() {
                tracing::warn!("cannot watch for SIGINT/SIGTERM ({e}); a signal will leave FILE.partial behind");
            }
            let report = match robusto::pack::pack(&opts, progress.as_ref()) {
                Err(robusto::pack::PackError::Interrupted) => {
                    tracing::warn!("interrupted: no archive was written");
                    return Ok(Exit::Interrupted);
                }
                other => other?,
            };
            if opts.to_stdout {
                // stdout carries the archive itself
                let manifest = report.manifest_path.display();
                tracing::info!(
                    "md5 {} written to standard output; manifest {manifest}",
                    report.manifest.archive.md5
                );
            } else {
                println!("{}  {}", report.manifest.archive.md5, report.archive.display());
            }
            let skipped = report.skipped();
            if skipped.is_empty() {
                return Ok(Exit::Done);
            }
            let manifest = report.manifest_path.display();
            tracing::warn!("{} file(s) skipped; listed in {manifest}", skipped.len());
            Ok(Exit::Skipped)
        }
        Command::Restore(args) => {
            let restored = job::restore::run(&args.job()?)?;
            let report = restored.report;
            for e in &report.listing {
                println!("{}", listing_line(e));
            }
            if !args.dry_run {
                let bytes = robusto::units::format_bytes(report.bytes);
                tracing::info!(
                    "restored {} entries ({bytes}) into {}",
                    report.entries,
                    args.into.display()
                );
            }
            if !report.left_out.is_empty() {
                let n = report.left_out.len();
                tracing::warn!("{n} entries of kinds robusto does not restore (devices, fifos) were left out");
            }
            Ok(Exit::Done)
        }
        Command::List(args) => {
            let opts = args.remote.options(None)?;
            let uploads = job::runtime()?.block_on(robusto::client::get::list(&opts))?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&uploads)?);
            } else {
                for u in &uploads {
                    println!("{}", upload_line(u, &job::upload_url(&opts.url, &u.id), args.bytes));
                }
            }
            Ok(Exit::Done)
        }
        Command::Prune(args) => {
            let policy = args.policy()?;
            let opts = args.remote.options(None)?;
            let pruned = job::prune::run(&opts, policy, args.dry_run, &mut |d, action| {
                println!("{}", prune_line(d, action))
            })?;
            let dry = if args.dry_run { " (dry run)" } else { "" };
            tracing::info!("kept {}, removed {}{dry}", pruned.kept, pruned.removed);
            Ok(Exit::Done)
        }
        Command::Verify(args) => {
            let m = robusto::manifest::verify(&args.file)?;
            let (file, md5) = (args.file.display(), &m.archive.md5);
            tracing::info!(
                "{file}: {} bytes, {} chunks, md5 {md5} — all match",
                m.archive.size,
                m.chunks.len()
            );
            println!("{md5}  {file}");
            Ok(Exit::Done)
        }
        Command::Serve(args) => serve(&args),
        Command::Send(args) => {
            let dest = cli::destination(&args.send.to)?;
            let opts = args.send.options(args.file, dest.endpoint(), args.name)?;
            let sent = job::send::send_to(dest, opts, output::send_reporter(&cli.global).as_ref())?;
            if let Some(receipt) = &sent.receipt {
                println!("{receipt}");
            }
            Ok(sent.exit)
        }
        Command::Push(args) if args.dry_run => {
            let plan = args.plan()?;
            if plan.incremental.is_some() {
                tracing::info!("--dry-run counts the whole tree; --incremental would send only what changed");
            }
            dry_run(&plan.pack)
        }
        Command::Push(args) => {
            let plan = || args.plan().map_err(|e| job::push::Invalid(e.0));
            let sending = output::send_reporter(&cli.global);
            let job = args.job(profile.as_ref());
            let receipt = &mut |line: &str| println!("{line}");
            Ok(job::push::run(
                &job,
                plan,
                progress.as_ref(),
                sending.as_ref(),
                receipt,
            )?)
        }
        Command::Config(cli::ConfigCommand::Check(args)) => {
            let file = args.config.as_deref().or(cli.global.config.as_deref());
            cli::profile::check(file, profile.as_ref())
        }
        Command::Completions(args) => {
            cli::docs::completions(args.shell, &mut std::io::stdout().lock())?;
            Ok(Exit::Done)
        }
        Command::Man => {
            cli::docs::man_page(&mut std::io::stdout().lock())?;
            Ok(Exit::Done)
        }
        Command::Status(args) => {
            let opts = args.options()?;
            let v = job::runtime()?.block_on(robusto::client::get::status(&opts))?;
            println!("{v}");
            Ok(Exit::Done)
        }
        Command::Get(args) => {
            let opts = args.options()?;
            let target = args.target()?;
            match job::runtime()?.block_on(robusto::client::get::get_to(&opts, target)) {
                Ok(r) => {
                    let checked = if r.verified { "verified" } else { "not verified" };
                    match target {
                        robusto::client::get::Target::Stdout => {
                            tracing::info!("standard output: {} bytes, md5 {} ({checked})", r.bytes, r.md5)
                        }
                        robusto::client::get::Target::File(file) => {
                            let file = file.display();
                            tracing::info!("{file}: {} bytes, md5 {} ({checked})", r.bytes, r.md5);
                            println!("{}  {file}", r.md5);
                        }
                    }
                    Ok(Exit::Done)
                }
                Err(e) if e.is_resumable() => {
                    tracing::error!("{e}");
                    Ok(Exit::Resumable)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `robusto serve`: bind, log the URL, serve until Ctrl-C or SIGTERM.
fn serve(args: &cli::ServeArgs) -> anyhow::Result<Exit> {
    use anyhow::Context as _;
    // Before the caps are derived from it: the soft descriptor limit is often far below the hard.
    match robusto::serve::listen::raise_fd_limit() {
        Ok(n) => tracing::debug!("descriptor limit {n}"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let config = args.to_config()?;
    if config.tokens.is_empty() && !args.listen.ip().is_loopback() {
        let listen = args.listen;
        tracing::warn!("no --token-file: anyone who can reach {listen} can upload; keep an open server on 127.0.0.1");
    }
    let certificates = match args.tls_files() {
        Some(files) => Some(robusto::serve::tls::Certificates::load(&files).map_err(|e| UsageError(e.to_string()))?),
        None => None,
    };
    let scheme = if certificates.is_some() { "https" } else { "http" };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut state = robusto::serve::AppState::open(config.clone())
            .await
            .with_context(|| match &config.store {
                robusto::serve::StoreChoice::Fs => format!("cannot use --data {}", config.data.display()),
                robusto::serve::StoreChoice::S3(s3) => format!("cannot use --s3-bucket {}", s3.bucket),
            })?;
        if let Some(certificates) = certificates {
            reload_on_hangup(std::sync::Arc::clone(&certificates))?;
            state.tls = Some(certificates);
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = robusto::stop::shutdown_signal()?;
        match &config.store {
            robusto::serve::StoreChoice::Fs => {
                tracing::info!(
                    "listening on {scheme}://{addr}/files/ (data in {})",
                    config.data.display()
                )
            }
            robusto::serve::StoreChoice::S3(s3) => tracing::info!(
                "listening on {scheme}://{addr}/files/ (data in s3://{}/{})",
                s3.bucket,
                s3.prefix
            ),
        }
        robusto::serve::run(listener, state, shutdown).await?;
        tracing::info!("stopped");
        Ok(Exit::Done)
    })
}

/// `--dry-run` of pack and push: the names that would be stored on stdout, what would be left
/// out and the totals in the log.
fn dry_run(opts: &robusto::pack::PackOptions) -> anyhow::Result<Exit> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let est = robusto::pack::dry_run::estimate(opts, &mut |e| {
        let _ = writeln!(out, "{}", e.name);
    })?;
    for s in &est.left_out {
        tracing::warn!("would leave out {}: {}", s.path, s.reason);
    }
    let fmt = robusto::units::format_bytes;
    tracing::info!(
        "would pack {} files ({}) and {} folders and links; {} left out; the archive would be about {} \
         (estimated from {} of content)",
        est.files,
        fmt(est.bytes),
        est.others,
        est.left_out.len(),
        fmt(est.archive_size),
        fmt(est.sampled)
    );
    Ok(Exit::Done)
}

/// On every SIGHUP, reads the TLS certificate and key again; connections already open keep the
/// pair they began with, a pair that cannot be used is refused and the old one stays.
fn reload_on_hangup(certificates: std::sync::Arc<robusto::serve::tls::Certificates>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let cert = certificates.files().cert.display().to_string();
            match certificates.reload() {
                Ok(()) => tracing::info!("reloaded the TLS certificate from {cert}"),
                Err(e) => tracing::error!("kept the TLS certificate in use: {e}"),
            }
        }
    });
    Ok(())
}

/// The sender holds a few chunk-sized buffers at a time, allocated on whichever blocking thread
/// reads them; with glibc's arena per thread, buffers freed into several arenas stay mapped and
/// take the client past its bound (32 MiB + parallel × chunk). One arena keeps it within; its
/// few large allocations do not contend (bench/pack-results.md has the figures).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    let (cli, profile) = match cli::profile::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseFailure::Clap(e)) => {
            let _ = e.print();
            let exit = if e.use_stderr() { Exit::Usage } else { Exit::Done };
            return ExitCode::from(exit.code());
        }
        Err(ParseFailure::Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(Exit::Usage.code());
        }
    };
    if matches!(cli.command, Command::Send(_) | Command::Push(_) | Command::Get(_)) {
        one_malloc_arena();
    }
    let log_file = cli
        .global
        .log_file
        .clone()
        .or_else(|| profile.as_ref().and_then(|p| p.log_file.clone()));
    init_logging(&cli.global, log_file.as_deref());
    let exit = run(cli, profile).unwrap_or_else(|e| {
        if let Some(job::restore::RestoreJobError::Interrupted) = e.downcast_ref::<job::restore::RestoreJobError>() {
            tracing::warn!("{e}");
            return Exit::Interrupted;
        }
        tracing::error!("{}", job::error_chain(e.as_ref()));
        // the server stayed out of reach: the message says to run the command again, and so
        // does the exit code, as for send
        let resumable = e
            .downcast_ref::<robusto::client::get::GetError>()
            .is_some_and(|g| g.is_resumable())
            || e.downcast_ref::<job::prune::PruneError>()
                .is_some_and(|p| p.is_resumable())
            || e.downcast_ref::<job::restore::RestoreJobError>()
                .is_some_and(|r| r.is_resumable());
        if resumable {
            return Exit::Resumable;
        }
        let usage = e.downcast_ref::<UsageError>().is_some()
            || e.downcast_ref::<robusto::pack::PackError>()
                .is_some_and(|p| p.is_usage())
            || e.downcast_ref::<job::push::JobError>()
                .is_some_and(|j| j.exit() == Exit::Usage);
        if usage { Exit::Usage } else { Exit::Failed }
    });
    ExitCode::from(exit.code())
}
