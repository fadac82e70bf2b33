//! `send` and `push`: where and how to send, and how to reach a server (`ConnectFlags`).

use super::*;

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
            following: None,
        })
    }
}
