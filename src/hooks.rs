//! Hooks: shell commands a profile runs around a job (`run-before`, `run-after`, `run-failed`,
//! `run-finally`), told how the job went through environment variables: `ROBUSTO_RESULT`
//! (`ok`, `partial`, `unfinished`, `interrupted`, `failed`), `ROBUSTO_EXIT`, `ROBUSTO_URL` and
//! `ROBUSTO_BYTES`. Their output goes to stderr, so stdout keeps carrying only results.

use std::process::{Command, Stdio};

use crate::config::Hooks;

/// A hook that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The shell could not be started.
    #[error("{which} hook could not start: {source}")]
    Spawn {
        /// Which hook.
        which: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The command exited with a failure.
    #[error("{which} hook failed ({status}): {command}")]
    Failed {
        /// Which hook.
        which: &'static str,
        /// The command.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

/// How a job ended, as the hooks are told.
#[derive(Clone, Debug, Default)]
pub struct JobOutcome {
    /// The job's exit code.
    pub exit: u8,
    /// The upload's (or received file's) URL, if known.
    pub url: Option<String>,
    /// Bytes uploaded (the archive size), if known.
    pub bytes: Option<u64>,
    /// Files left out while packing, `PATH: REASON` (`ROBUSTO_SKIPPED`, one a line).
    pub skipped: Vec<String>,
}

impl JobOutcome {
    /// `ROBUSTO_RESULT` for this exit code.
    pub fn result(&self) -> &'static str {
        match self.exit {
            0 => "ok",
            3 => "partial",
            75 => "unfinished",
            130 => "interrupted",
            _ => "failed",
        }
    }

    /// Whether the job finished (0, or 3 with files skipped).
    pub fn finished(&self) -> bool {
        matches!(self.exit, 0 | 3)
    }
}

fn run(which: &'static str, command: &str, outcome: Option<&JobOutcome>) -> Result<(), HookError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null());
    // stdout of a hook goes to our stderr: stdout is for results only
    use std::os::fd::AsFd;
    let to_stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    cmd.stdout(to_stderr);
    if let Some(o) = outcome {
        cmd.env("ROBUSTO_RESULT", o.result())
            .env("ROBUSTO_EXIT", o.exit.to_string());
        cmd.env("ROBUSTO_URL", o.url.as_deref().unwrap_or(""));
        cmd.env("ROBUSTO_BYTES", o.bytes.map(|b| b.to_string()).unwrap_or_default());
        cmd.env("ROBUSTO_SKIPPED", o.skipped.join("\n"));
    }
    tracing::info!("running {which} hook: {command}");
    let status = cmd.status().map_err(|source| HookError::Spawn { which, source })?;
    if status.success() {
        Ok(())
    } else {
        Err(HookError::Failed {
            which,
            command: command.to_string(),
            status,
        })
    }
}

/// Runs `run-before`; its failure means the job must not start.
pub fn before(hooks: &Hooks) -> Result<(), HookError> {
    match &hooks.before {
        Some(c) => run("run-before", c, None),
        None => Ok(()),
    }
}

/// Runs `run-after` (finished) or `run-failed` (not), then `run-finally`. A failing hook here
/// is reported, not fatal: the job's own outcome stands.
pub fn after(hooks: &Hooks, outcome: &JobOutcome) {
    let first = if outcome.finished() {
        ("run-after", &hooks.after)
    } else {
        ("run-failed", &hooks.failed)
    };
    for (which, command) in [first, ("run-finally", &hooks.finally)] {
        if let Some(c) = command
            && let Err(e) = run(which, c, Some(outcome))
        {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_see_the_outcome_and_a_failing_before_stops_the_job() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let l = log.display();
        let hooks = Hooks {
            before: Some(format!("echo before >> {l}")),
            after: Some(format!(
                "echo \"after $ROBUSTO_RESULT $ROBUSTO_EXIT $ROBUSTO_URL $ROBUSTO_BYTES\" >> {l}"
            )),
            failed: Some(format!("echo \"failed $ROBUSTO_RESULT $ROBUSTO_EXIT\" >> {l}")),
            finally: Some(format!("echo finally >> {l}")),
        };
        before(&hooks).unwrap();
        after(
            &hooks,
            &JobOutcome {
                skipped: Vec::new(),
                exit: 0,
                url: Some("http://h/files/x".into()),
                bytes: Some(42),
            },
        );
        after(
            &hooks,
            &JobOutcome {
                skipped: Vec::new(),
                exit: 75,
                url: None,
                bytes: None,
            },
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            "before\nafter ok 0 http://h/files/x 42\nfinally\nfailed unfinished 75\nfinally\n"
        );
        let failing = Hooks {
            before: Some("exit 4".into()),
            ..Default::default()
        };
        let e = before(&failing).unwrap_err();
        assert!(e.to_string().contains("run-before hook failed"), "{e}");
    }
}
