//! The command line: clap (derive) definitions, and their conversion into the typed, validated
//! options the library takes. This is the only module that sees clap; a bad value becomes a
//! [`UsageError`] (exit 2) before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A flag or argument that makes no sense; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// robusto — get whole folders safely onto a server over bad links.
#[derive(Debug, Parser)]
#[command(name = "robusto", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More detail in the log (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Progress as one JSON event per line on stderr instead of bars or log lines.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Re-hash FILE against FILE.manifest.json (whole file and every chunk).
    Verify(VerifyArgs),
    /// Receive tus uploads: check every chunk and whole file, store durably, report status.
    Serve(ServeArgs),
}

/// `robusto verify FILE`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The archive; its manifest is FILE.manifest.json.
    pub file: PathBuf,
}

/// `robusto serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --token-file, keep it on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:1080", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
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
    /// Let browsers at this origin upload (repeatable; * for any).
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
}

impl ServeArgs {
    /// The validated server options.
    pub fn to_config(&self) -> Result<robusto::serve::Config, UsageError> {
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
        if config.read_timeout.is_zero() {
            return Err(UsageError("--read-timeout must be more than 0".into()));
        }
        if let Some(f) = &self.token_file {
            config.tokens = robusto::serve::auth::Tokens::from_file(f)
                .map_err(|e| usage("--token-file", &format!("{}: {e}", f.display())))?;
            if config.tokens.is_empty() {
                return Err(UsageError(format!("--token-file: {} holds no token", f.display())));
            }
        }
        config.cors_origins = self.cors_origin.clone();
        Ok(config)
    }
}
