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
}

/// `robusto verify FILE`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The archive; its manifest is FILE.manifest.json.
    pub file: PathBuf,
}
