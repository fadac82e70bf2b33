//! The commands that ask a server: `status`, `get`, `list`, `prune`, `restore`.

use super::*;

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
