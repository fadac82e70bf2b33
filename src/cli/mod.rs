//! The command line: clap (derive) definitions, and their conversion into the typed, validated
//! options and jobs the library takes. This module and its children are the only code that sees
//! clap; a bad value becomes a [`UsageError`] (exit 2) before any work starts. [`profile`]
//! resolves the environment and a configuration profile into the command line, [`output`] is
//! what the commands show, [`docs`] the completions and the man page. Each group of commands has
//! its flags in a module of its own: `pack_args` (pack, verify, the archive flags), `send_args`
//! (send, push, how to reach a server), `remote_args` (status, get, list, prune, restore),
//! `serve_args` (serve); the imports below are theirs too.

pub(crate) mod docs;
pub(crate) mod output;
mod pack_args;
pub(crate) mod profile;
mod remote_args;
mod send_args;
mod serve_args;

pub(crate) use pack_args::*;
pub(crate) use remote_args::*;
pub(crate) use send_args::*;
pub(crate) use serve_args::*;

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

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, UsageError> {
    robusto::units::parse_duration(text).map_err(|e| UsageError(format!("{flag}: {e}")))
}
