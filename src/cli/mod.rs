//! The command line: clap (derive) definitions, and their conversion into the typed, validated
//! options and jobs the library takes. This module and its children are the only code that sees
//! clap; a bad value becomes a [`UsageError`] (exit 2) before any work starts. [`profile`]
//! resolves the environment and a configuration profile into the command line, [`output`] is
//! what the commands show.

pub(crate) mod docs;
pub(crate) mod output;
pub(crate) mod profile;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use robusto::config::Profile;
use robusto::job::push::{self as push_job, Job, Plan};
use robusto::job::restore::{Origin, RestoreJob};
use robusto::job::send::Destination;
use robusto::pack::{self, Codec, Compression, Format, PackOptions, WalkOptions};
use robusto::units;

/// A flag or argument that makes no sense; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// robusto — get whole folders safely onto a server over bad links.
#[derive(Debug, Parser)]
#[command(name = "robusto", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes (listed apart from each command's own).
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// More detail in the log (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Progress as one JSON event per line on stderr instead of bars or log lines.
    #[arg(long, global = true)]
    pub json: bool,
    /// Also append the log to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// `--profile` before the command (`robusto --profile nightly push`); shown with the
    /// commands it applies to ([`ProfileArgs`]), refused with the others.
    #[arg(long, global = true, value_name = "NAME", hide = true)]
    pub profile: Option<String>,
    /// `--config` before the command; see [`ProfileArgs`].
    #[arg(long, global = true, value_name = "FILE", hide = true)]
    pub config: Option<PathBuf>,
}

/// Where a job's settings come from: a profile of the configuration file (`push`, `config
/// check`). Their own flags, which the hidden global ones of [`GlobalArgs`] give way to.
#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// Take settings from profile NAME of the configuration file.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The configuration file [default: $XDG_CONFIG_HOME/robusto/robusto.toml, then
    /// /etc/robusto/robusto.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Pack PATH… into FILE (zip or tar, compressed) and write FILE.manifest.json beside it.
    #[command(after_help = docs::examples::PACK)]
    Pack(PackArgs),
    /// Re-hash FILE against FILE.manifest.json (whole file and every chunk).
    #[command(after_help = docs::examples::VERIFY)]
    Verify(VerifyArgs),
    /// Upload FILE to a tus server (or a local folder), resumably; prints the upload URL.
    #[command(after_help = docs::examples::SEND)]
    Send(SendArgs),
    /// Print an upload's status as JSON.
    #[command(after_help = docs::examples::STATUS)]
    Status(StatusArgs),
    /// Download a completed upload, resumably, verifying its MD5.
    #[command(after_help = docs::examples::GET)]
    Get(GetArgs),
    /// Pack PATH… into a staging file and send it, in one resumable job; prints the upload URL.
    #[command(after_help = docs::examples::PUSH)]
    Push(PushArgs),
    /// Verify an archive against its manifest, then extract it into a folder.
    #[command(after_help = docs::examples::RESTORE)]
    Restore(RestoreArgs),
    /// Receive tus uploads: check every chunk and whole file, store durably, report status.
    #[command(after_help = docs::examples::SERVE)]
    Serve(ServeArgs),
    /// List the completed uploads on a robusto server (those of this token).
    #[command(after_help = docs::examples::LIST)]
    List(ListArgs),
    /// Delete older completed uploads, keeping the newest by a last/daily/weekly policy.
    #[command(after_help = docs::examples::PRUNE)]
    Prune(PruneArgs),
    /// Check the configuration file and show the settings a profile resolves to.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the completion script for a shell (bash: `robusto completions bash >
    /// /etc/bash_completion.d/robusto`).
    #[command(after_help = docs::examples::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the man page (roff): `robusto man > robusto.1`, `man -l robusto.1`.
    #[command(after_help = docs::examples::MAN)]
    Man,
}

/// `robusto completions SHELL`
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `robusto config …`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration file; with --profile, print what `push --profile` would use
    /// (tokens redacted) and where each value comes from.
    #[command(after_help = docs::examples::CONFIG_CHECK)]
    Check(ProfileArgs),
}

/// `robusto push PATH… --to URL|DIR`
#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Files and folders to pack.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// How to pack.
    #[command(flatten)]
    pub pack: PackFlags,
    /// Where and how to send.
    #[command(flatten)]
    pub send: SendFlags,
    /// The upload's name: {host}, {date}, {time}, {label} (the first PATH's name) are replaced;
    /// the format's extension is added.
    #[arg(long, value_name = "TEMPLATE", default_value = robusto::job::staging::DEFAULT_NAME)]
    pub name: String,
    /// Keep the staging archive and its manifest after the upload completes.
    #[arg(long)]
    pub keep_staging: bool,
    /// Print what would be packed and left out and the archive's estimated size; pack and send
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send only what changed since the last push the server confirmed (GNU tar's incremental
    /// format; needs --format tar). The first push of a job is a full archive.
    #[arg(long)]
    pub incremental: bool,
    /// With --incremental: start a new full archive after N pushes in all (7: a full and six
    /// incrementals), or once the full is older than a DURATION (30d).
    #[arg(long, value_name = "N|DURATION", requires = "incremental")]
    pub full_every: Option<String>,
    /// The profile its settings come from.
    #[command(flatten)]
    pub settings: ProfileArgs,
}

impl PushArgs {
    /// The pack options (the output is chosen by the push job) and the send options (the file is
    /// the staging archive, known once packed).
    pub(crate) fn options(
        &self,
        target: robusto::client::Url,
    ) -> Result<(PackOptions, robusto::client::SendOptions), UsageError> {
        let chunk_size = parse_chunk_size(&self.send.chunk_size)?;
        let mut pack = self.pack.to_options(self.paths.clone(), PathBuf::new(), chunk_size)?;
        pack.keep_cached = true; // sent right after
        let send = self.send.options(PathBuf::new(), target, None)?;
        Ok((pack, send))
    }

    /// The validated plan of the push job.
    pub(crate) fn plan(&self) -> Result<Plan, UsageError> {
        let dest = destination(&self.send.to)?;
        let (pack, send) = self.options(dest.endpoint())?;
        let incremental = if self.incremental {
            if !matches!(self.pack.format, FormatArg::Tar) {
                return Err(UsageError(
                    "--incremental writes GNU tar's incremental format: add --format tar (and --compress zstd)".into(),
                ));
            }
            let full_every = match self.full_every.as_deref() {
                None => None,
                Some(text) => Some(match text.parse::<u32>() {
                    Ok(0) => return Err(UsageError("--full-every must be at least 1".into())),
                    Ok(n) => robusto::incremental::state::FullEvery::Pushes(n),
                    Err(_) => robusto::incremental::state::FullEvery::Age(duration("--full-every", text)?),
                }),
            };
            Some(push_job::IncrementalChoice { full_every })
        } else {
            None
        };
        Ok(Plan {
            dest,
            pack,
            send,
            name: self.name.clone(),
            keep_staging: self.keep_staging,
            incremental,
        })
    }

    /// The job around the push: a profile's hooks, and its lock in the state directory.
    pub(crate) fn job(&self, profile: Option<&Profile>) -> Job {
        let state = || {
            self.send
                .state_dir
                .clone()
                .unwrap_or_else(robusto::client::journal::default_state_dir)
        };
        Job {
            hooks: profile.map(|p| p.hooks.clone()).unwrap_or_default(),
            lock: profile.map(|p| push_job::lock_path(&state(), &p.name)),
        }
    }
}

/// `robusto verify FILE`
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The archive; its manifest is FILE.manifest.json.
    pub file: PathBuf,
}

/// `robusto send FILE --to URL|DIR`
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The file; with FILE.manifest.json beside it, its chunking and MD5s are used.
    pub file: PathBuf,
    /// Where to send it.
    #[command(flatten)]
    pub send: SendFlags,
    /// The upload's name (its `filename` metadata); default: the file's name.
    #[arg(long)]
    pub name: Option<String>,
}

/// Flags of every command that sends (`send`, `push`).
#[derive(Debug, Args)]
pub(crate) struct SendFlags {
    /// A tus upload endpoint (http://host:port/files/) or a local folder to receive into.
    #[arg(long, env = "ROBUSTO_URL", value_name = "URL|DIR")]
    pub to: String,
    /// Chunk size for a file without a manifest (one PATCH per chunk).
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub chunk_size: String,
    /// Partial uploads at once (the server must offer concatenation).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub parallel: usize,
    /// Bandwidth limit: a rate (2M) or a timetable ("08:00,512K 19:00,off").
    #[arg(long, value_name = "RATE|TIMETABLE")]
    pub bwlimit: Option<String>,
    /// Failed attempts allowed per chunk before giving up (exit 75, resumable).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// Stop cleanly at a chunk boundary after this long (exit 75, resumable).
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
    /// A request with no progress for this long is abandoned and retried.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub stall_timeout: String,
    /// The token and TLS trust for the server.
    #[command(flatten)]
    pub connect: ConnectFlags,
    /// Where resume journals and locks live (default: the platform's state directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `robusto status URL`
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The upload's URL.
    pub url: String,
    /// The token and TLS trust for the server.
    #[command(flatten)]
    pub connect: ConnectFlags,
}

/// `robusto get URL -o FILE`
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The upload's URL.
    pub url: String,
    /// Where to write it (through FILE.partial), or - for standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Failed attempts in a row allowed before giving up (exit 75, resumable).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// A request with no progress for this long is abandoned and retried.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub stall_timeout: String,
    /// The token and TLS trust for the server.
    #[command(flatten)]
    pub connect: ConnectFlags,
}

/// How to reach a server: its token, the authorities trusted for its certificate, and whether a
/// token may cross a network in clear.
#[derive(Debug, Args)]
pub(crate) struct ConnectFlags {
    /// Bearer token: the first line of this file (else $ROBUSTO_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Also trust the certificate authorities in this PEM file (repeatable), e.g. a private CA;
    /// the system's roots are always trusted.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Send the token over plain http:// to a host that is not this machine (it crosses the
    /// network in clear: only on a network you trust).
    #[arg(long)]
    pub allow_insecure_http: bool,
}

/// What [`ConnectFlags`] resolve to for one server URL.
pub(crate) struct Connect {
    /// The bearer token.
    pub token: Option<String>,
    /// Authorities trusted besides the system's.
    pub roots: robusto::client::transport::ExtraRoots,
}

impl ConnectFlags {
    /// The token and trust for `url`; refuses a token over plain http off loopback (exit 2).
    pub(crate) fn resolve(&self, url: &robusto::client::Url) -> Result<Connect, UsageError> {
        let token = token(self.token_file.as_ref())?;
        robusto::client::transport::check(url, token.is_some(), self.allow_insecure_http)
            .map_err(|e| UsageError(e.to_string()))?;
        let roots = robusto::client::transport::ExtraRoots::from_pem_files(&self.ca_cert)
            .map_err(|e| UsageError(e.to_string()))?;
        Ok(Connect { token, roots })
    }
}

/// Parses `--to`: a URL with a scheme, or a folder.
pub(crate) fn destination(to: &str) -> Result<Destination, UsageError> {
    Destination::parse(to).map_err(|e| UsageError(e.to_string()))
}

/// The bearer token: the first non-empty line of `--token-file`, else `$ROBUSTO_TOKEN`.
pub(crate) fn token(file: Option<&PathBuf>) -> Result<Option<String>, UsageError> {
    if let Some(f) = file {
        robusto::config::check_secret_file(f).map_err(|e| UsageError(format!("--token-file {e}")))?;
        let text = std::fs::read_to_string(f).map_err(|e| UsageError(format!("--token-file {}: {e}", f.display())))?;
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        return line
            .map(|l| Some(l.to_string()))
            .ok_or_else(|| UsageError(format!("--token-file {}: no token in it", f.display())));
    }
    Ok(std::env::var("ROBUSTO_TOKEN").ok().filter(|t| !t.trim().is_empty()))
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, UsageError> {
    robusto::units::parse_duration(text).map_err(|e| UsageError(format!("{flag}: {e}")))
}

impl SendFlags {
    /// Typed send options for `file` sent to the endpoint `target`.
    pub(crate) fn options(
        &self,
        file: PathBuf,
        target: robusto::client::Url,
        name: Option<String>,
    ) -> Result<robusto::client::SendOptions, UsageError> {
        let chunk_size =
            robusto::units::parse_size(&self.chunk_size).map_err(|e| UsageError(format!("--chunk-size: {e}")))?;
        if chunk_size == 0 {
            return Err(UsageError("--chunk-size must be more than 0".into()));
        }
        if self.parallel == 0 || self.parallel > 64 {
            return Err(UsageError("--parallel must be between 1 and 64".into()));
        }
        let bwlimit = self
            .bwlimit
            .as_deref()
            .map(robusto::client::throttle::Timetable::parse)
            .transpose()
            .map_err(|e| UsageError(format!("--bwlimit: {e}")))?;
        let stall_timeout = duration("--stall-timeout", &self.stall_timeout)?;
        if stall_timeout.is_zero() {
            return Err(UsageError("--stall-timeout must be more than 0".into()));
        }
        let max_duration = self
            .max_duration
            .as_deref()
            .map(|d| duration("--max-duration", d))
            .transpose()?;
        let connect = self.connect.resolve(&target)?;
        Ok(robusto::client::SendOptions {
            file,
            target,
            chunk_size,
            parallel: self.parallel,
            bwlimit,
            retry: robusto::client::retry::RetryPolicy {
                retries: self.retries,
                ..Default::default()
            },
            stall_timeout,
            max_duration,
            token: connect.token,
            roots: connect.roots,
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(robusto::client::journal::default_state_dir),
            name,
            job_key: None,
        })
    }
}

/// Archive container (`--format`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FormatArg {
    /// zip: entries compressed one by one, in parallel.
    Zip,
    /// tar: the whole stream compressed (.tar.gz, .tar.zst).
    Tar,
}

/// Compression codec (`--compress`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CompressArg {
    /// No compression.
    None,
    /// DEFLATE, levels 0–9 (default 6).
    #[value(alias = "gzip")]
    Deflate,
    /// Zstandard, levels 1–22 (default 3).
    Zstd,
}

/// The flags that decide how an archive is made (shared by `pack` and `push`).
#[derive(Debug, Args)]
pub(crate) struct PackFlags {
    /// Archive format.
    #[arg(long, value_enum, default_value = "zip")]
    pub format: FormatArg,
    /// Compression: none, deflate (alias gzip) or zstd.
    #[arg(long = "compress", value_enum, default_value = "deflate")]
    pub compress: CompressArg,
    /// Compression level: deflate 0–9 (default 6), zstd 1–22 (default 3).
    #[arg(short = 'l', long)]
    pub level: Option<i32>,
    /// Leave out paths matching GLOB (repeatable). Without '/' it matches a name at any depth;
    /// with '/' the path relative to the packed folder.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclude globs from FILE, one per line ('#' starts a comment).
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Like --exclude, without regard to case (repeatable).
    #[arg(long = "iexclude", value_name = "GLOB")]
    pub iexclude: Vec<String>,
    /// Leave out every folder that holds a file or folder of this NAME (repeatable), e.g. .nobackup.
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Leave out cache folders: those holding a CACHEDIR.TAG with its signature.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out files larger than SIZE, e.g. 2GiB.
    #[arg(long, value_name = "SIZE")]
    pub exclude_larger_than: Option<String>,
    /// Also pack the paths listed in FILE, one per line ('#' starts a comment).
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Do not descend into other file systems.
    #[arg(long)]
    pub one_file_system: bool,
    /// Store the files symlinks point to instead of the links (loops are detected).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Compression threads [default: all cores]; the output is the same for any count.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `robusto pack PATH… -o FILE`
#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// Files and folders to pack.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The archive to write (through FILE.partial), or - for standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print what would be packed (one name a line) and left out, the count of files and bytes,
    /// and an estimate of the archive's size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the manifest [default: FILE.manifest.json]; required with -o -.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Chunk size of the manifest (the upload's unit of retry), e.g. 8MiB, 512K.
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub chunk_size: String,
    /// How the archive is made.
    #[command(flatten)]
    pub flags: PackFlags,
}

/// Parses a chunk size: at least 1 KiB, at most 4 GiB.
pub(crate) fn parse_chunk_size(text: &str) -> Result<u64, UsageError> {
    let n = units::parse_size(text).map_err(|e| UsageError(format!("--chunk-size: {e}")))?;
    if !(1024..=(4u64 << 30)).contains(&n) {
        return Err(UsageError(format!(
            "--chunk-size must be between 1KiB and 4GiB, got {text}"
        )));
    }
    Ok(n)
}

impl PackFlags {
    /// The validated pack options for `paths` into `output`.
    pub(crate) fn to_options(
        &self,
        paths: Vec<PathBuf>,
        output: PathBuf,
        chunk_size: u64,
    ) -> Result<PackOptions, UsageError> {
        let format = match self.format {
            FormatArg::Zip => Format::Zip,
            FormatArg::Tar => Format::Tar,
        };
        let codec = match self.compress {
            CompressArg::None => Codec::None,
            CompressArg::Deflate => Codec::Deflate,
            CompressArg::Zstd => Codec::Zstd,
        };
        let compression = Compression::new(codec, self.level).map_err(|e| UsageError(e.to_string()))?;
        let threads = match self.threads {
            Some(0) => return Err(UsageError("--threads must be at least 1".into())),
            Some(n) => n,
            None => pack::default_threads(),
        };
        Ok(PackOptions {
            output,
            format,
            compression,
            chunk_size,
            threads,
            paths: {
                let mut paths = paths;
                for file in &self.files_from {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| UsageError(format!("--files-from {}: {e}", file.display())))?;
                    paths.extend(
                        text.lines()
                            .map(str::trim_end)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(PathBuf::from),
                    );
                }
                if paths.is_empty() {
                    return Err(UsageError("nothing to pack: name a PATH or --files-from FILE".into()));
                }
                paths
            },
            walk: WalkOptions {
                exclude: self.exclude.clone(),
                exclude_from: self.exclude_from.clone(),
                one_file_system: self.one_file_system,
                follow_symlinks: self.follow_symlinks,
                never: Vec::new(),
                iexclude: self.iexclude.clone(),
                exclude_if_present: self.exclude_if_present.clone(),
                exclude_caches: self.exclude_caches,
                exclude_larger_than: self
                    .exclude_larger_than
                    .as_deref()
                    .map(robusto::units::parse_size)
                    .transpose()
                    .map_err(|e| UsageError(format!("--exclude-larger-than: {e}")))?,
            },
            keep_cached: false,
            incremental: None,
            manifest: None,
            to_stdout: false,
        })
    }
}

impl GetArgs {
    /// Typed options.
    pub(crate) fn options(&self) -> Result<robusto::client::get::GetOptions, UsageError> {
        get_options(&self.url, &self.connect, self.retries, &self.stall_timeout)
    }

    /// Where the download goes: standard output for `-o -`, else a file (refused when
    /// something other than a regular file is there).
    pub(crate) fn target(&self) -> Result<robusto::client::get::Target<'_>, UsageError> {
        if is_stdout(&self.output) {
            stdout_not_a_terminal("the download")?;
            return Ok(robusto::client::get::Target::Stdout);
        }
        replaceable("-o", &self.output)?;
        replaceable("-o", &robusto::durable::partial_path(&self.output))?;
        Ok(robusto::client::get::Target::File(&self.output))
    }
}

impl StatusArgs {
    /// Typed options.
    pub(crate) fn options(&self) -> Result<robusto::client::get::GetOptions, UsageError> {
        get_options(&self.url, &self.connect, 3, "30s")
    }
}

fn get_options(
    url: &str,
    connect: &ConnectFlags,
    retries: u32,
    stall: &str,
) -> Result<robusto::client::get::GetOptions, UsageError> {
    let parsed = robusto::client::Url::parse(url).map_err(|e| e.to_string());
    let url = match parsed {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        // `localhost:1080/files/` parses, with `localhost` for its scheme
        _ if let Some(meant) = robusto::job::send::server_address(url) => {
            return Err(UsageError(format!(
                "{url} has no http:// or https://: did you mean {meant}?"
            )));
        }
        Ok(_) => return Err(UsageError(format!("{url}: only http and https URLs are supported"))),
        Err(e) => return Err(UsageError(format!("{url}: {e}"))),
    };
    let connect = connect.resolve(&url)?;
    Ok(robusto::client::get::GetOptions {
        url,
        retry: robusto::client::retry::RetryPolicy {
            retries,
            ..Default::default()
        },
        stall_timeout: duration("--stall-timeout", stall)?,
        token: connect.token,
        roots: connect.roots,
    })
}

impl PackArgs {
    /// The validated options.
    pub(crate) fn to_options(&self) -> Result<PackOptions, UsageError> {
        if self.dry_run {
            let chunk_size = parse_chunk_size(&self.chunk_size)?;
            return self
                .flags
                .to_options(self.paths.clone(), self.output.clone().unwrap_or_default(), chunk_size);
        }
        let Some(output) = self.output.clone() else {
            return Err(UsageError(
                "say where the archive goes: -o FILE (or -o - for standard output)".into(),
            ));
        };
        let chunk_size = parse_chunk_size(&self.chunk_size)?;
        let to_stdout = is_stdout(&output);
        if to_stdout && self.manifest.is_none() {
            return Err(UsageError(
                "-o - writes the archive to standard output: say where its manifest goes with --manifest FILE".into(),
            ));
        }
        if to_stdout {
            stdout_not_a_terminal("the archive")?;
        } else {
            replaceable("-o", &output)?;
            replaceable("-o", &robusto::durable::partial_path(&output))?;
        }
        let mut opts = self.flags.to_options(self.paths.clone(), output.clone(), chunk_size)?;
        opts.manifest = self.manifest.clone();
        opts.to_stdout = to_stdout;
        let manifest = opts.manifest_path();
        replaceable(if self.manifest.is_some() { "--manifest" } else { "-o" }, &manifest)?;
        if !to_stdout && manifest == output {
            return Err(UsageError(format!(
                "--manifest {} is the archive itself: name another file",
                manifest.display()
            )));
        }
        Ok(opts)
    }
}

/// Whether an output argument is `-`: standard output.
pub(crate) fn is_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// Refuses to write binary output to a terminal.
fn stdout_not_a_terminal(what: &str) -> Result<(), UsageError> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        return Err(UsageError(format!(
            "-o - would write {what} to the terminal: redirect standard output to a file or a pipe"
        )));
    }
    Ok(())
}

/// Refuses an output path where something other than a regular file is (exit 2).
fn replaceable(flag: &str, path: &std::path::Path) -> Result<(), UsageError> {
    robusto::durable::check_replaceable(path).map_err(|e| UsageError(format!("{flag}: {e}")))
}

/// A robusto server to talk to (list, prune, restore by name).
#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// The server's upload endpoint, e.g. https://backup.example.org/files/.
    #[arg(long = "from", value_name = "URL", env = "ROBUSTO_URL")]
    pub from: Option<String>,
    /// The token and TLS trust for the server.
    #[command(flatten)]
    pub connect: ConnectFlags,
    /// Failed attempts in a row allowed before giving up (exit 75).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// A request with no progress for this long is abandoned and retried.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub stall_timeout: String,
}

impl RemoteArgs {
    /// Options for requests to `url` (an upload, or the endpoint itself when `None`).
    pub(crate) fn options(&self, url: Option<&str>) -> Result<robusto::client::get::GetOptions, UsageError> {
        let url = match (url, &self.from) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => f.clone(),
            (None, None) => return Err(UsageError("--from URL is needed (or ROBUSTO_URL)".into())),
        };
        get_options(&url, &self.connect, self.retries, &self.stall_timeout)
    }
}

/// `robusto list --from URL`
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The server.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Sizes in bytes instead of KiB, MiB, GiB.
    #[arg(long)]
    pub bytes: bool,
}

/// `robusto prune --from URL --keep-…`
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// The server.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Keep the newest N uploads of each name group.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest upload of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest upload of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest upload of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
    /// Keep the newest upload of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every upload completed within DURATION of its group's newest (e.g. 14d).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Print what would be kept and removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl PruneArgs {
    /// The policy; at least one --keep-… is required.
    pub(crate) fn policy(&self) -> Result<robusto::retention::Policy, UsageError> {
        let within = self
            .keep_within
            .as_deref()
            .map(|d| duration("--keep-within", d).map(|d| d.as_secs()))
            .transpose()?;
        let counts = self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly + self.keep_yearly;
        if counts == 0 && within.is_none() {
            return Err(UsageError(
                "say what to keep: --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly \
                 and/or --keep-within"
                    .into(),
            ));
        }
        Ok(robusto::retention::Policy {
            last: self.keep_last,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within,
        })
    }
}

/// `robusto restore FILE|URL|NAME --into DIR`
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// A local archive (checked against FILE.manifest.json), an upload's URL, or the name of an
    /// upload on the server named by --from (the newest of that name, or starting with it).
    pub file: PathBuf,
    /// Where to fetch uploads from.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The folder to extract into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// List what would be extracted, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Extract even without a manifest to check the archive against.
    #[arg(long)]
    pub no_verify: bool,
    /// With a NAME: the tree as of the newest upload completed at or before TIME (RFC 3339, e.g.
    /// 2026-12-01T02:30:00Z; a date alone means the end of that day, UTC; or seconds since the
    /// epoch). An incremental's whole chain is fetched and applied.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// Parses `--at`: RFC 3339, `YYYY-MM-DD` (the end of that day, UTC), or seconds since the epoch.
fn point_in_time(text: &str) -> Result<u64, UsageError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        UsageError(format!(
            "--at {text}: not a time (examples: 2026-12-01T02:30:00Z, 2026-12-01, 1796176200)"
        ))
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return u64::try_from(t.unix_timestamp()).map_err(|_| bad());
    }
    let day = time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]")).map_err(|_| bad())?;
    let end = day.with_hms(23, 59, 59).map_err(|_| bad())?.assume_utc();
    u64::try_from(end.unix_timestamp()).map_err(|_| bad())
}

impl RestoreArgs {
    /// The restore job: an upload's URL, an upload's name on the `--from` server (when no such
    /// file exists here), or a local archive.
    pub(crate) fn job(&self) -> Result<RestoreJob, UsageError> {
        let text = self.file.to_string_lossy();
        let origin = if robusto::job::restore::is_url(&text) {
            Origin::Upload(self.remote.options(Some(&text))?)
        } else if self.remote.from.is_some() && !self.file.exists() {
            Origin::Named {
                server: self.remote.options(None)?,
                name: text.into_owned(),
            }
        } else {
            Origin::File(self.file.clone())
        };
        Ok(RestoreJob {
            origin,
            into: self.into.clone(),
            dry_run: self.dry_run,
            no_verify: self.no_verify,
            at: self.at.as_deref().map(point_in_time).transpose()?,
        })
    }
}

/// `robusto serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Without --token-file, keep it on 127.0.0.1; with it, on any other
    /// address, serve TLS (--tls-cert, --tls-key) or sit behind a TLS proxy (--behind-proxy).
    #[arg(long, default_value = "127.0.0.1:1080", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); reloaded
    /// with the key on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A TLS-terminating reverse proxy is in front: allow --token-file off loopback without
    /// --tls-cert, and take the proxy's Forwarded / X-Forwarded-Proto / X-Forwarded-Host for the
    /// URLs handed out.
    #[arg(long)]
    pub behind_proxy: bool,
    /// Where uploads are kept (DIR/uploads) and completed files published (DIR/files).
    #[arg(long, default_value = "robusto-data", value_name = "DIR")]
    pub data: PathBuf,
    /// Largest upload accepted, e.g. 50GiB (default: no limit).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Bearer tokens, one per line; every request must carry one.
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Unfinished uploads are removed this long after their last chunk.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub expire_after: String,
    /// A request body that sends nothing for this long is given up.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub read_timeout: String,
    /// A request body slower than this per second, over a --read-timeout, is given up too
    /// (0 for no minimum).
    #[arg(long, default_value = "1KiB", value_name = "SIZE")]
    pub min_rate: String,
    /// A connection must send a request's headers within this time; an idle keep-alive
    /// connection is closed after it too.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub header_timeout: String,
    /// Connections open at once; more are answered 503 (default: what the descriptor limit
    /// leaves room for, (limit - 64) / 3, at most 8192).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address; more are answered 503 (default: 64,
    /// or a quarter of --max-connections if less).
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Let browsers at this origin upload (repeatable; * for any).
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Drop what arrived of a checked chunk whose connection was cut, instead of holding it
    /// for the client to complete (the robusto-chunk-prefix extension; plain tus then).
    #[arg(long)]
    pub no_chunk_prefix: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: none).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Where uploads are stored: fs (under --data) or s3 (a bucket several nodes share).
    #[arg(long, value_enum, default_value_t = StoreKind::Fs)]
    pub store: StoreKind,
    /// With --store s3: the bucket. Credentials come from AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY or the AWS profile files (AWS_PROFILE).
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// With --store s3: the endpoint, e.g. http://ceph-rgw:7480 (default: AWS in --s3-region).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// With --store s3: keep everything under this key prefix, e.g. backups/.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// With --store s3: the region (default: AWS_REGION, the profile's region, us-east-1).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// With --store s3: address the bucket as ENDPOINT/BUCKET (always so for an IP address).
    #[arg(long)]
    pub s3_path_style: bool,
}

/// `--store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// Local disk under --data.
    Fs,
    /// An S3-compatible bucket.
    S3,
}

impl ServeArgs {
    /// The TLS certificate and key files, when both are given.
    pub(crate) fn tls_files(&self) -> Option<robusto::serve::tls::TlsFiles> {
        Some(robusto::serve::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The validated server options.
    pub(crate) fn to_config(&self) -> Result<robusto::serve::Config, UsageError> {
        use robusto::units::{parse_duration, parse_size};
        let usage = |flag: &str, e: &dyn std::fmt::Display| UsageError(format!("{flag}: {e}"));
        let mut config = robusto::serve::Config::new(self.data.clone());
        config.max_size = self
            .max_size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| usage("--max-size", &e))?;
        config.expire_after = parse_duration(&self.expire_after).map_err(|e| usage("--expire-after", &e))?;
        config.read_timeout = parse_duration(&self.read_timeout).map_err(|e| usage("--read-timeout", &e))?;
        config.min_rate = parse_size(&self.min_rate).map_err(|e| usage("--min-rate", &e))?;
        if config.read_timeout.is_zero() {
            return Err(UsageError("--read-timeout must be more than 0".into()));
        }
        config.limits.header_timeout =
            parse_duration(&self.header_timeout).map_err(|e| usage("--header-timeout", &e))?;
        if config.limits.header_timeout.is_zero() {
            return Err(UsageError("--header-timeout must be more than 0".into()));
        }
        if let Some(n) = self.max_connections {
            config.limits.max_connections = n;
        }
        config.limits.max_per_address = self
            .max_connections_per_ip
            .unwrap_or_else(|| robusto::serve::listen::default_per_address(config.limits.max_connections));
        if config.limits.max_connections == 0 || config.limits.max_per_address == 0 {
            return Err(UsageError(
                "--max-connections and --max-connections-per-ip must be at least 1".into(),
            ));
        }
        if let Some(f) = &self.token_file {
            robusto::config::check_secret_file(f).map_err(|e| UsageError(format!("--token-file {e}")))?;
            config.tokens = robusto::serve::auth::Tokens::from_file(f)
                .map_err(|e| usage("--token-file", &format!("{}: {e}", f.display())))?;
            if config.tokens.is_empty() {
                return Err(UsageError(format!("--token-file: {} holds no token", f.display())));
            }
        }
        if !config.tokens.is_empty() && !self.listen.ip().is_loopback() && self.tls_cert.is_none() && !self.behind_proxy
        {
            return Err(UsageError(format!(
                "--token-file on {} without TLS would send every token in clear: add --tls-cert FILE --tls-key FILE, \
                 or --behind-proxy if a TLS-terminating proxy is in front",
                self.listen
            )));
        }
        config.behind_proxy = self.behind_proxy;
        config.cors_origins = self.cors_origin.clone();
        config.keep_prefixes = !self.no_chunk_prefix;
        config.metrics = self.metrics;
        config.store = match (self.store, &self.s3_bucket) {
            (StoreKind::Fs, None) => robusto::serve::StoreChoice::Fs,
            (StoreKind::Fs, Some(_)) => {
                return Err(UsageError("--s3-bucket needs --store s3".into()));
            }
            (StoreKind::S3, None) => return Err(UsageError("--store s3 needs --s3-bucket".into())),
            (StoreKind::S3, Some(bucket)) => {
                let s3 = robusto::serve::store::s3::S3Config::from_env(
                    bucket.clone(),
                    self.s3_endpoint.clone(),
                    self.s3_prefix.clone(),
                    self.s3_region.clone(),
                    self.s3_path_style,
                )
                .map_err(|e| usage("--store s3", &e))?;
                robusto::serve::StoreChoice::S3(s3)
            }
        };
        Ok(config)
    }
}
