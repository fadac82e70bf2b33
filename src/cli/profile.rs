//! The command line as a run resolves it: every long flag's `ROBUSTO_*` variable, a `--profile`
//! of the configuration file put in front of the user's own arguments (flags > environment >
//! profile > defaults), and `robusto config check`, which shows what a profile resolves to.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};

use robusto::config::{self, ConfigError, Flag, Profile};
use robusto::job::Exit;

use super::{Cli, Command, UsageError};

/// Why the command line could not be taken.
pub(crate) enum ParseFailure {
    /// clap's own error (or `--help`, `--version`), printed as clap prints it.
    Clap(clap::Error),
    /// A profile that cannot be used, or a bad value that came from one.
    Usage(String),
}

/// Gives every long flag of every subcommand its `ROBUSTO_*` environment variable (flags that
/// already name one keep theirs), and lets a later occurrence of a flag override an earlier one
/// (so the user's flags override the profile's).
pub(crate) fn with_env(cmd: clap::Command) -> clap::Command {
    fn add(cmd: clap::Command) -> clap::Command {
        cmd.args_override_self(true)
            .mut_args(|a| match (a.get_long(), a.get_env(), a.get_action()) {
                (Some("help" | "version"), _, _) | (_, Some(_), _) | (None, _, _) => a,
                (Some(long), None, action) if action.takes_values() => {
                    let name = config::env_name(long);
                    a.env(name)
                }
                // a switch: ROBUSTO_JSON=1 / =true sets it, =0 / =false / =no / =off leaves it off
                (Some(long), None, clap::ArgAction::SetTrue) => {
                    let name = config::env_name(long);
                    a.env(name).value_parser(clap::builder::FalseyValueParser::new())
                }
                _ => a,
            })
            .mut_subcommands(add)
    }
    add(cmd)
}

/// Flags that choose the profile: never keys of one.
const CHOOSING: [&str; 2] = ["profile", "config"];

/// The flags of `cmd`, as the profile reader knows them.
fn flags(cmd: &clap::Command) -> Vec<Flag> {
    cmd.get_arguments()
        .filter(|a| !CHOOSING.contains(&a.get_id().as_str()))
        .filter_map(|a| {
            a.get_long().map(|long| Flag {
                long: long.to_string(),
                id: a.get_id().as_str().to_string(),
                takes_values: a.get_action().takes_values(),
            })
        })
        .collect()
}

/// `push` with the profile's values as its defaults: a flag on the command line or its
/// environment variable still wins (flags > environment > profile > defaults).
pub(crate) fn apply(p: &Profile, push: clap::Command) -> clap::Command {
    let mut cmd = push;
    for (id, values) in &p.values {
        let values: Vec<clap::builder::OsStr> = values.iter().map(|v| v.clone().into()).collect();
        // a required flag is satisfied by the profile
        cmd = cmd.mut_arg(id, |a| a.required(false).default_values(values));
    }
    if !p.paths.is_empty() {
        let paths: Vec<clap::builder::OsStr> = p
            .paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned().into())
            .collect();
        cmd = cmd.mut_arg("paths", |a| a.required(false).default_values(paths));
    }
    cmd
}

/// The whole command line: robusto's commands, each flag with its environment variable.
pub(crate) fn command() -> clap::Command {
    with_env(Cli::command())
}

/// Reads profile `name` of `path` for `push` (whose flags are the profile's keys).
fn load(path: &std::path::Path, name: &str) -> Result<Profile, ConfigError> {
    let cmd = command();
    let push = cmd.find_subcommand("push").map(flags).unwrap_or_default();
    config::load_profile(path, name, &push)
}

/// The command line, with a `--profile` of the configuration file put in front of the user's own
/// arguments, and every flag's `ROBUSTO_*` variable.
pub(crate) fn parse(argv: Vec<OsString>) -> Result<(Cli, Option<Profile>), ParseFailure> {
    let mut cmd = command();
    let lenient = cmd.clone().ignore_errors(true).try_get_matches_from(&argv).ok();
    let name = lenient.as_ref().and_then(|m| chosen::<String>(m, "profile"));
    let file = lenient.as_ref().and_then(|m| chosen::<PathBuf>(m, "config"));
    let sub = lenient.as_ref().and_then(|m| m.subcommand_name().map(str::to_string));
    let mut profile = None;
    if let Some(name) = name {
        if !matches!(sub.as_deref(), Some("push" | "config")) {
            return Err(ParseFailure::Usage("--profile applies to push and config check".into()));
        }
        let usage = |e: ConfigError| ParseFailure::Usage(e.to_string());
        let path = config::locate(file.as_deref()).map_err(usage)?;
        let mut p = load(&path, &name).map_err(usage)?;
        // the environment's token wins over the profile's token file
        if std::env::var_os("ROBUSTO_TOKEN").is_some() {
            p.values.remove("token_file");
        }
        cmd = cmd.mut_subcommand("push", |s| apply(&p, s));
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

/// The value of `id` where the command line gave it: before the command (the hidden global flag)
/// or after it (the command's own).
fn chosen<T: Clone + Send + Sync + 'static>(m: &clap::ArgMatches, id: &str) -> Option<T> {
    if let Ok(Some(v)) = m.try_get_one::<T>(id) {
        return Some(v.clone());
    }
    m.subcommand().and_then(|(_, sub)| chosen(sub, id))
}

/// `robusto config check`: the resolved settings of `push --profile P`, with their sources; with
/// no profile named, every profile in the file must resolve to a valid push: each one that does
/// not is reported with its reason, then the check fails (exit 2).
pub(crate) fn check(file: Option<&std::path::Path>, profile: Option<&Profile>) -> anyhow::Result<Exit> {
    let Some(p) = profile else {
        let usage = |e: ConfigError| UsageError(e.to_string());
        let path = config::locate(file).map_err(usage)?;
        let names = config::profile_names(&path).map_err(usage)?;
        let mut bad = 0;
        let mut said = std::collections::BTreeSet::new();
        for name in &names {
            match load(&path, name).map_err(|e| usage(e).into()).and_then(|p| resolve(&p)) {
                Ok(_) => println!("[profile.{name}]: valid"),
                Err(e) => {
                    bad += 1;
                    // a fault of the whole file (a key outside any profile) is said once
                    let reason = robusto::error_chain(e.as_ref());
                    if said.insert(reason.clone()) {
                        tracing::error!("{reason}");
                    }
                }
            }
        }
        if bad > 0 {
            return Err(UsageError(format!(
                "{}: {bad} of {} profile(s) are not valid",
                path.display(),
                names.len()
            ))
            .into());
        }
        println!(
            "{}: valid, {} profile(s) (name one with --profile to see its settings)",
            path.display(),
            names.len()
        );
        return Ok(Exit::Done);
    };
    let (cmd, matches) = resolve(p)?;
    let Some(push) = matches.subcommand_matches("push") else {
        return Ok(Exit::Failed);
    };
    let push_cmd = cmd
        .find_subcommand("push")
        .ok_or_else(|| anyhow::anyhow!("no push command"))?;
    println!("# {} [profile.{}]", p.file.display(), p.name);
    for arg in push_cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if CHOOSING.contains(&id) {
            continue;
        }
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
    Ok(Exit::Done)
}

/// `push --profile P` as it would run: parsed with the profile's values as defaults and the
/// environment over them, then validated the way `push` validates its options (sizes, rates,
/// durations, the destination). Errors name the profile and its file.
fn resolve(p: &Profile) -> anyhow::Result<(clap::Command, clap::ArgMatches)> {
    let in_profile = |what: String| UsageError(format!("{}: [profile.{}]: {what}", p.file.display(), p.name));
    let cmd = command().mut_subcommand("push", |s| apply(p, s));
    let matches = cmd
        .clone()
        .try_get_matches_from(["robusto", "push"])
        .map_err(|e| in_profile(e.render().to_string().trim().trim_start_matches("error: ").to_string()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| in_profile(e.to_string()))?;
    if let Command::Push(args) = &cli.command {
        args.plan().map_err(|e| in_profile(e.to_string()))?;
    }
    Ok((cmd, matches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn push() -> clap::Command {
        clap::Command::new("push")
            .arg(Arg::new("paths").num_args(1..))
            .arg(Arg::new("to").long("to"))
            .arg(Arg::new("level").long("level").short('l'))
            .arg(Arg::new("exclude").long("exclude").action(ArgAction::Append))
            .arg(
                Arg::new("one-file-system")
                    .long("one-file-system")
                    .action(ArgAction::SetTrue),
            )
    }

    #[test]
    fn a_profile_becomes_defaults_that_flags_override() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("robusto.toml");
        std::fs::write(
            &path,
            "[profile.nightly]\npaths = [\"/etc\", \"/home\"]\nto = \"http://h/files/\"\nlevel = 9\n\
             exclude = [\"*.tmp\", \"cache\"]\none-file-system = true\n",
        )
        .unwrap();
        let prof = config::load_profile(&path, "nightly", &flags(&push())).unwrap();
        assert_eq!(prof.values["one-file-system"], ["true"]);
        // the profile's values are defaults: flags and the environment win
        let cmd = apply(&prof, push());
        let m = cmd.clone().try_get_matches_from(["push"]).unwrap();
        assert_eq!(m.get_one::<String>("level").map(String::as_str), Some("9"));
        assert_eq!(
            m.get_many::<String>("paths").unwrap().collect::<Vec<_>>(),
            ["/etc", "/home"]
        );
        let m = cmd
            .try_get_matches_from(["push", "--level", "3", "--exclude", "x", "/srv"])
            .unwrap();
        assert_eq!(m.get_one::<String>("level").map(String::as_str), Some("3"));
        assert_eq!(m.get_many::<String>("exclude").unwrap().collect::<Vec<_>>(), ["x"]);
        assert_eq!(m.get_many::<String>("paths").unwrap().collect::<Vec<_>>(), ["/srv"]);
    }

    #[test]
    fn the_later_flag_wins() {
        let cmd = with_env(clap::Command::new("r").subcommand(push()));
        let m = cmd
            .try_get_matches_from(["r", "push", "--level", "3", "--level", "7", "x"])
            .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(
            sub.get_one::<String>("level").map(String::as_str),
            Some("7"),
            "the later flag wins"
        );
    }

    #[test]
    fn switches_and_flag_ids_reach_the_profile_reader() {
        let flags = flags(&Cli::command().find_subcommand("push").unwrap().clone());
        let chunk = flags.iter().find(|f| f.long == "chunk-size").unwrap();
        assert_eq!((chunk.id.as_str(), chunk.takes_values), ("chunk_size", true));
        let keep = flags.iter().find(|f| f.long == "keep-staging").unwrap();
        assert!(!keep.takes_values);
    }
}
