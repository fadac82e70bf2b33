//! Configuration: named profiles in `robusto.toml`, and the names of the `ROBUSTO_*` environment
//! variables. A profile is read into plain data (flag values by flag id, paths, hooks, log file)
//! that the command line takes as its defaults, so that one parser validates every value the same
//! way. Precedence: flags > environment > profile > defaults.
//!
//! ```toml
//! [profile.nightly]
//! paths = ["/etc", "/home"]
//! to = "https://backup.example.org/files/"
//! token-file = "/etc/robusto/token"
//! compress = "zstd"
//! level = 9
//! exclude = ["*.tmp", "node_modules"]
//! run-failed = "mail -s 'backup failed' root < /dev/null"
//! ```
//!
//! A key is the long name of a flag of the command (`chunk-size`, `bwlimit` …), `paths` is the
//! list of paths, and `run-before`, `run-after`, `run-failed`, `run-finally` and `log-file` belong
//! to the job itself. Anything else is an error naming the key and the file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The profile keys that are hooks, run by the job around its work.
pub const HOOK_KEYS: [&str; 4] = ["run-before", "run-after", "run-failed", "run-finally"];

/// A problem with the configuration file; exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No configuration file where one was looked for.
    #[error("no configuration file (looked at {})", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The profile is not in the file.
    #[error("{path}: no [profile.{name}] (profiles here: {known})")]
    NoProfile {
        /// The file.
        path: PathBuf,
        /// The profile asked for.
        name: String,
        /// The profiles the file has.
        known: String,
    },
    /// A key that names no flag of the command.
    #[error("{path}: [profile.{profile}] has an unknown key '{key}'")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The profile.
        profile: String,
        /// The key.
        key: String,
    },
    /// A value of the wrong kind.
    #[error("{path}: [profile.{profile}] key '{key}': {reason}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The profile.
        profile: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The hooks of a profile: shell commands run around a job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Runs first; if it fails the job does not start.
    pub before: Option<String>,
    /// Runs after a job that finished (exit 0 or 3).
    pub after: Option<String>,
    /// Runs after a job that failed or stopped unfinished (exit 1, 75, 130).
    pub failed: Option<String>,
    /// Runs last, whatever happened.
    pub finally: Option<String>,
}

/// A profile, ready to be put in front of the user's own arguments.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The file it came from.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// Flag values by flag id (`true`/`false` for switches), applied as the command's defaults
    /// so that flags and environment variables still win.
    pub values: BTreeMap<String, Vec<String>>,
    /// The `paths` key, if any.
    pub paths: Vec<OsString>,
    /// The hooks.
    pub hooks: Hooks,
    /// Where to write the log as well as stderr.
    pub log_file: Option<PathBuf>,
}

/// A file of tokens that its group or others may read or write: refused, as ssh refuses such a
/// key (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{} holds tokens but its group or others may read it (mode {mode:03o}): chmod 600 {}", .path.display(), .path.display())]
pub struct ExposedSecret {
    /// The file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

/// Refuses a file holding tokens that its group or others have any access to. A file that cannot
/// be examined passes: reading it reports why.
pub fn check_secret_file(path: &Path) -> Result<(), ExposedSecret> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(ExposedSecret {
            path: path.to_path_buf(),
            mode: m.permissions().mode() & 0o777,
        }),
        _ => Ok(()),
    }
}

/// The environment variable that sets the flag `--long`: `ROBUSTO_CHUNK_SIZE` for `chunk-size`.
pub fn env_name(long: &str) -> String {
    format!("ROBUSTO_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// A flag of the command a profile configures, as the profile reader needs to know it: a
/// profile's key is a flag's long name, and its value is stored under the flag's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// The long name (`chunk-size`), which is the key in the file.
    pub long: String,
    /// The id the command line knows the flag by.
    pub id: String,
    /// Whether it takes values; `false` for a switch (`true`/`false` in the file).
    pub takes_values: bool,
}

/// Where the configuration file is: `explicit`, else `$XDG_CONFIG_HOME/robusto/robusto.toml`
/// (or `~/.config/…`), else `/etc/robusto/robusto.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut tried = Vec::new();
    if let Some(dir) = dirs::config_dir() {
        tried.push(dir.join("robusto/robusto.toml"));
    }
    tried.push(PathBuf::from("/etc/robusto/robusto.toml"));
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(ConfigError::NotFound(tried))
}

/// The file at `path`, parsed.
fn read_document(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// The `[profile.NAME]` tables of a document: `profile` and each entry of it must be a table
/// (`profile.x = "…"` is not a profile, and would otherwise be listed but never found).
fn profiles_of(path: &Path, doc: &toml::Table) -> Result<toml::Table, ConfigError> {
    let bad = |key: String, found: &toml::Value| ConfigError::BadValue {
        path: path.to_path_buf(),
        profile: "(top level)".into(),
        key,
        reason: format!("expected a table ([profile.NAME]), found {}", found.type_str()),
    };
    let profiles = match doc.get("profile") {
        None => return Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => t,
        Some(other) => return Err(bad("profile".into(), other)),
    };
    if let Some((name, v)) = profiles.iter().find(|(_, v)| !v.is_table()) {
        return Err(bad(format!("profile.{name}"), v));
    }
    Ok(profiles.clone())
}

/// The names of the profiles in the file at `path`, in the order of their names.
pub fn profile_names(path: &Path) -> Result<Vec<String>, ConfigError> {
    let doc = read_document(path)?;
    Ok(profiles_of(path, &doc)?.keys().cloned().collect())
}

/// Reads profile `name` of `path` for a command with the flags `flags` (which define the valid
/// keys).
pub fn load_profile(path: &Path, name: &str, flags: &[Flag]) -> Result<Profile, ConfigError> {
    let doc = read_document(path)?;
    let profiles = profiles_of(path, &doc)?;
    if let Some(key) = doc.keys().find(|k| *k != "profile") {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            profile: "(top level)".into(),
            key: key.clone(),
        });
    }
    let Some(toml::Value::Table(table)) = profiles.get(name) else {
        return Err(ConfigError::NoProfile {
            path: path.to_path_buf(),
            name: name.to_string(),
            known: profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let flags: BTreeMap<&str, &Flag> = flags.iter().map(|f| (f.long.as_str(), f)).collect();
    let bad = |key: &str, reason: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        profile: name.to_string(),
        key: key.to_string(),
        reason,
    };
    let text_of = |key: &str, v: &toml::Value| -> Result<String, ConfigError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(bad(
                key,
                format!("expected a string or a number, found {}", other.type_str()),
            )),
        }
    };
    let mut p = Profile {
        file: path.to_path_buf(),
        name: name.to_string(),
        ..Default::default()
    };
    for (key, value) in table {
        let hook = || text_of(key, value).map(Some);
        match key.as_str() {
            "run-before" => p.hooks.before = hook()?,
            "run-after" => p.hooks.after = hook()?,
            "run-failed" => p.hooks.failed = hook()?,
            "run-finally" => p.hooks.finally = hook()?,
            "log-file" => p.log_file = Some(PathBuf::from(text_of(key, value)?)),
            "paths" => match value {
                toml::Value::Array(items) => {
                    for item in items {
                        p.paths.push(text_of(key, item)?.into());
                    }
                }
                other => p.paths.push(text_of(key, other)?.into()),
            },
            _ => {
                let Some(flag) = flags.get(key.as_str()) else {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        profile: name.to_string(),
                        key: key.clone(),
                    });
                };
                let values = match value {
                    toml::Value::Boolean(b) if !flag.takes_values => vec![b.to_string()],
                    toml::Value::Boolean(_) => return Err(bad(key, "expected a value, not true/false".into())),
                    _ if !flag.takes_values => {
                        return Err(bad(key, "this is a switch: write true or false".into()));
                    }
                    toml::Value::Array(items) => items.iter().map(|i| text_of(key, i)).collect::<Result<_, _>>()?,
                    other => vec![text_of(key, other)?],
                };
                p.values.insert(flag.id.clone(), values);
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(long: &str, takes_values: bool) -> Flag {
        Flag {
            long: long.into(),
            id: long.into(),
            takes_values,
        }
    }

    fn push() -> Vec<Flag> {
        vec![
            flag("to", true),
            flag("level", true),
            flag("exclude", true),
            flag("one-file-system", false),
        ]
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("robusto.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn a_profile_becomes_flag_values_and_hooks() {
        let (_d, p) = write(
            "[profile.nightly]\npaths = [\"/etc\", \"/home\"]\nto = \"http://h/files/\"\nlevel = 9\n\
             exclude = [\"*.tmp\", \"cache\"]\none-file-system = true\nrun-failed = \"echo failed\"\nlog-file = \"/var/log/r.log\"\n",
        );
        let prof = load_profile(&p, "nightly", &push()).unwrap();
        assert_eq!(prof.values["exclude"], ["*.tmp", "cache"]);
        assert_eq!(prof.values["level"], ["9"]);
        assert_eq!(prof.values["one-file-system"], ["true"]);
        assert_eq!(prof.values["to"], ["http://h/files/"]);
        assert_eq!(prof.paths, [OsString::from("/etc"), OsString::from("/home")]);
        assert_eq!(prof.hooks.failed.as_deref(), Some("echo failed"));
        assert_eq!(prof.log_file, Some(PathBuf::from("/var/log/r.log")));
        assert_eq!(profile_names(&p).unwrap(), ["nightly"]);
    }

    #[test]
    fn a_profile_that_is_not_a_table_is_refused_not_listed() {
        // found by the config fuzz target: `profile.x = "…"` was listed, then not found
        for text in [
            "profile.x = \"prue\"\n",
            "profile = 5\n",
            "[profile]\nx = 1\n[profile.y]\nto = \"/a\"\n",
        ] {
            let (_d, p) = write(text);
            let e = profile_names(&p).unwrap_err();
            assert!(matches!(e, ConfigError::BadValue { .. }), "{text}: {e}");
            assert!(e.to_string().contains("expected a table"), "{e}");
            let e = load_profile(&p, "y", &push()).unwrap_err();
            assert!(matches!(e, ConfigError::BadValue { .. }), "{text}: {e}");
        }
        let (_d, p) = write("[profile]\n[profile.y]\nto = \"/a\"\n");
        assert_eq!(profile_names(&p).unwrap(), ["y"]);
        assert!(load_profile(&p, "y", &push()).is_ok());
    }

    #[test]
    fn values_are_stored_under_the_flag_id() {
        let (_d, p) = write("[profile.n]\nchunk-size = \"1MiB\"\n");
        let flags = [Flag {
            long: "chunk-size".into(),
            id: "chunk_size".into(),
            takes_values: true,
        }];
        let prof = load_profile(&p, "n", &flags).unwrap();
        assert_eq!(prof.values["chunk_size"], ["1MiB"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        let (_d, p) = write("[profile.n]\ncompresion = \"zstd\"\n");
        let e = load_profile(&p, "n", &push()).unwrap_err().to_string();
        assert!(
            e.contains("unknown key 'compresion'") && e.contains("robusto.toml"),
            "{e}"
        );
        let (_d, p) = write("[profile.n]\none-file-system = \"yes\"\n");
        let e = load_profile(&p, "n", &push()).unwrap_err().to_string();
        assert!(
            e.contains("key 'one-file-system'") && e.contains("true or false"),
            "{e}"
        );
        let (_d, p) = write("[profile.n]\nlevel = [[1]]\n");
        assert!(load_profile(&p, "n", &push()).is_err());
        let (_d, p) = write("[profile.a]\n");
        let e = load_profile(&p, "b", &push()).unwrap_err().to_string();
        assert!(e.contains("no [profile.b]") && e.contains("profiles here: a"), "{e}");
        let (_d, p) = write("[profile.a\n");
        assert!(matches!(load_profile(&p, "a", &push()), Err(ConfigError::Parse { .. })));
        assert!(matches!(profile_names(&p), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn token_files_others_may_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, p) = write("secret\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_secret_file(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds tokens but its group or others may read it (mode 644): chmod 600 {}",
                p.display(),
                p.display()
            )
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(check_secret_file(&p).unwrap_err().mode, 0o640);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_secret_file(&p).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(check_secret_file(&p).is_ok());
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("chunk-size"), "ROBUSTO_CHUNK_SIZE");
    }
}
