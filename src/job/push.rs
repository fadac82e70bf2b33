//! The push job: `robusto push` as one unit — a profile's lock, its hooks around the work,
//! packing into the staging folder (or reusing what a killed run packed, see
//! [`crate::job::staging`]), sending, cleaning up, and the summary event. Ctrl-C or SIGTERM
//! (`systemctl stop`) ends the job at a point it resumes from, and the hooks still run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Exit;
use super::send::{Destination, SendJobError, send_to};
use crate::client::SendError;
use crate::client::SendOptions;
use crate::client::follow::Following;
use crate::client::journal::{self, JournalError};
use crate::config::Hooks;
use crate::growing::Growing;
use crate::hooks::{self, HookError, JobOutcome};
use crate::incremental::state::{self as inc_state, FullEvery, Head, StateError, Store};
use crate::job::staging::{PushError as StageError, prepare};
use crate::pack::{PackError, PackOptions};
use crate::progress::{Event, Progress};

/// The job around the work: what runs before and after it, and what keeps two runs apart.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The hooks to run around the work.
    pub hooks: Hooks,
    /// The lock a profile's job holds around its hooks too (see [`lock_path`]): an overlapping
    /// run must not run `run-before` (a dump, say) under the running one, nor its cleanup after.
    pub lock: Option<PathBuf>,
}

/// The lock file of profile `name`'s job in the state directory.
pub fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("profile-{name}.lock"))
}

/// What to push, once the job's settings are resolved.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where to send.
    pub dest: Destination,
    /// How to pack (the output is chosen by the job: the staging folder).
    pub pack: PackOptions,
    /// How to send (the file is the staging archive, known once packed).
    pub send: SendOptions,
    /// The upload's name template (`--name`).
    pub name: String,
    /// Keep the staging archive after the upload completes.
    pub keep_staging: bool,
    /// Push one link of an incremental chain (`--incremental`).
    pub incremental: Option<IncrementalChoice>,
}

/// `--incremental` and `--full-every`.
#[derive(Clone, Copy, Debug)]
pub struct IncrementalChoice {
    /// When a new full archive starts.
    pub full_every: Option<FullEvery>,
}

/// Settings that make no sense, found as the job resolves them (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Why a push job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The settings make no sense: fix them (exit 2).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Another run of the same profile holds its lock, or the state directory is unusable.
    #[error(transparent)]
    Lock(JournalError),
    /// `run-before` failed: the job did not start.
    #[error(transparent)]
    Before(HookError),
    /// Packing into the staging folder, or removing it after the upload, failed.
    #[error(transparent)]
    Stage(StageError),
    /// Sending failed in a way that running again does not fix.
    #[error(transparent)]
    Send(SendJobError),
    /// The incremental state could not be read or advanced.
    #[error(transparent)]
    State(StateError),
}

impl JobError {
    /// The exit code this failure ends the job with.
    pub fn exit(&self) -> Exit {
        match self {
            JobError::Invalid(_) => Exit::Usage,
            JobError::Stage(StageError::Pack(e)) if e.is_usage() => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

/// What a push job did, for its hooks and its summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Files packed.
    pub files: u64,
    /// Bytes of file content packed.
    pub bytes_in: u64,
    /// The archive's size, once packed.
    pub archive_size: Option<u64>,
    /// Requests retried while sending.
    pub retries: u64,
    /// The upload's URL, when known.
    pub url: Option<String>,
    /// Files left out while packing, `PATH: REASON`.
    pub skipped: Vec<String>,
}

/// Counts retries on their way to the real reporter, for the job summary.
struct Counting<'a> {
    inner: &'a dyn Progress,
    retries: AtomicU64,
}

impl Progress for Counting<'_> {
    fn event(&self, event: &Event) {
        if matches!(event, Event::Retry { .. }) {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.event(event);
    }
}

/// Runs the push job: takes the lock, runs `run-before`, resolves `plan` (so that settings that
/// make no sense fail the job with its failure hooks), packs and sends, runs the after hooks and
/// emits [`Event::Summary`]. `progress` hears the packing, `sending` the upload; `receipt` gets
/// what to show for a completed upload (its URL, or the received file's path) as soon as the
/// server confirms it.
pub fn run(
    job: &Job,
    plan: impl FnOnce() -> Result<Plan, Invalid>,
    progress: &dyn Progress,
    sending: &dyn Progress,
    receipt: &mut dyn FnMut(&str),
) -> Result<Exit, JobError> {
    if let Err(e) = crate::stop::watch_signals() {
        tracing::warn!("cannot watch for SIGINT/SIGTERM ({e}); a signal will end the job without its hooks");
    }
    let _lock = job
        .lock
        .as_deref()
        .map(journal::lock)
        .transpose()
        .map_err(JobError::Lock)?;
    let started = Instant::now();
    if let Err(e) = hooks::before(&job.hooks) {
        // the job does not start; the failure hooks still run (a stop during run-before usually
        // ends the hook too: that is an interruption, not a failure)
        let stopped = crate::stop::requested();
        let exit = if stopped { Exit::Interrupted } else { Exit::Failed };
        hooks::after(
            &job.hooks,
            &JobOutcome {
                exit: exit.code(),
                url: None,
                bytes: None,
                skipped: Vec::new(),
            },
        );
        if stopped {
            tracing::warn!("interrupted during run-before ({e})");
            return Ok(Exit::Interrupted);
        }
        return Err(JobError::Before(e));
    }
    let mut summary = Summary::default();
    let mut result = plan()
        .map_err(JobError::from)
        .and_then(|plan| push(plan, progress, sending, &mut summary, receipt));
    if let Err(e) = &result
        && crate::stop::requested()
    {
        // whatever the stop cut short (a read, a write) reports itself as an error
        tracing::warn!("interrupted ({})", super::error_chain(e));
        result = Ok(Exit::Interrupted);
    }
    let exit = match &result {
        Ok(exit) => *exit,
        Err(e) => e.exit(),
    };
    hooks::after(
        &job.hooks,
        &JobOutcome {
            exit: exit.code(),
            url: summary.url.clone(),
            bytes: summary.archive_size,
            skipped: summary.skipped.clone(),
        },
    );
    let (files, bytes_in, archive_size) = (summary.files, summary.bytes_in, summary.archive_size.unwrap_or(0));
    progress.event(&Event::Summary {
        exit: exit.code(),
        files,
        bytes_in,
        archive_size,
        ratio: if bytes_in == 0 {
            0.0
        } else {
            archive_size as f64 / bytes_in as f64
        },
        duration_s: started.elapsed().as_secs_f64(),
        retries: summary.retries,
        url: summary.url,
        skipped: summary.skipped,
    });
    result
}

/// The link this push packs after `head`, with what the last confirmed push saw; records that
/// cannot be read make it a full archive (never a wrong incremental).
fn plan_link(store: &Store, head: Option<&Head>, full_every: Option<FullEvery>) -> crate::pack::Incremental {
    let link = inc_state::next_link(head, full_every);
    let previous = match (link.level, head) {
        (0, _) | (_, None) => None,
        (_, Some(h)) => match store.previous(h) {
            Ok(p) => Some(std::sync::Arc::new(p)),
            Err(e) => {
                tracing::warn!("{e}: this push is a full archive");
                return crate::pack::Incremental {
                    link: inc_state::next_link(None, None),
                    previous: None,
                };
            }
        },
    };
    match &link.parent {
        Some(p) => tracing::info!(
            "incremental level {} of chain {}, after {}",
            link.level,
            link.chain,
            p.name
        ),
        None => tracing::info!("a full archive: it starts a new chain"),
    }
    crate::pack::Incremental { link, previous }
}

/// The work: pack into the state dir (or reuse what a killed run packed), send, clean up.
fn push(
    plan: Plan,
    progress: &dyn Progress,
    sending: &dyn Progress,
    summary: &mut Summary,
    receipt: &mut dyn FnMut(&str),
) -> Result<Exit, JobError> {
    let Plan {
        dest,
        mut pack,
        send: mut opts,
        name,
        keep_staging,
        incremental,
    } = plan;
    let chain = incremental.map(|choice| {
        let store = Store::for_job(&opts.state_dir, &dest.key(), &pack.paths);
        let head = store.head();
        (store, head, choice)
    });
    if let Some((store, head, choice)) = &chain {
        pack.incremental = Some(plan_link(store, head.as_ref(), choice.full_every));
    }
    let prepared = prepare(&opts.state_dir, &pack, &dest.key(), &name).map_err(JobError::Stage)?;
    let mut pack_opts = prepared.options(&pack);
    opts.file = prepared.archive.clone();
    opts.name = Some(prepared.name.clone());
    // The sender follows the packer chunk by chunk (or, for a server that cannot take the
    // whole-file checksum at the end, sends once the archive is packed).
    let growing = Growing::new(pack_opts.chunk_size);
    pack_opts.growing = Some(growing.clone());
    pack_opts.keep_cached = true;
    opts.following = Some(Following {
        source: growing.clone(),
        incremental: pack_opts.incremental.as_ref().map(|i| i.link.clone()),
    });
    if let Some(m) = &prepared.finished {
        let file = std::fs::File::open(&prepared.archive).map_err(|source| {
            JobError::Stage(StageError::Io {
                path: prepared.archive.clone(),
                source,
            })
        })?;
        growing.fill(std::sync::Arc::new(file), m);
    }
    let counting = Counting {
        inner: sending,
        retries: AtomicU64::new(0),
    };
    let (staged, sent) = std::thread::scope(|scope| {
        let packer = std::thread::Builder::new()
            .name("pack".into())
            .spawn_scoped(scope, || prepared.pack(&pack_opts, progress));
        let packer = match packer {
            Ok(p) => p,
            Err(e) => {
                return (
                    Err(StageError::Io {
                        path: opts.file.clone(),
                        source: e,
                    }),
                    None,
                );
            }
        };
        let sent = send_to(dest, opts, &counting);
        if sent.is_err() {
            // a failure another run would not fix: packing on is pointless
            growing.cancel();
        }
        let staged = packer.join().unwrap_or_else(|_| {
            Err(StageError::Pack(PackError::Output {
                path: PathBuf::from("the archive"),
                source: std::io::Error::other("the packing thread panicked"),
            }))
        });
        (staged, Some(sent))
    });
    let staged = match staged {
        Err(StageError::Pack(PackError::Interrupted)) => {
            tracing::warn!("interrupted while packing: run the same command again to continue");
            return Ok(Exit::Interrupted);
        }
        staged => staged,
    };
    let sent = match sent {
        // the sender stopped because packing did: the packer's error says why
        Some(Err(SendJobError::Send(SendError::Packing(_)))) if staged.is_err() => {
            return Err(staged
                .err()
                .map_or(JobError::Invalid(Invalid("packing failed".into())), JobError::Stage));
        }
        Some(Err(e)) => return Err(JobError::Send(e)),
        Some(Ok(sent)) => sent,
        None => {
            return Err(staged.err().map_or(
                JobError::Invalid(Invalid("cannot start packing".into())),
                JobError::Stage,
            ));
        }
    };
    let staged = staged.map_err(JobError::Stage)?;
    summary.files = staged.manifest.source.files;
    summary.bytes_in = staged.manifest.source.bytes;
    summary.archive_size = Some(staged.manifest.archive.size);
    summary.skipped = staged
        .skipped()
        .iter()
        .map(|s| format!("{}: {}", s.path, s.reason))
        .collect();
    if let Some(r) = &sent.receipt {
        receipt(r);
    }
    summary.retries = counting.retries.load(Ordering::Relaxed);
    summary.url = sent.url;
    if sent.exit != Exit::Done {
        return Ok(sent.exit);
    }
    let skipped = staged.skipped().len();
    if let (Some((store, head, _)), Some(link)) = (&chain, &staged.manifest.incremental) {
        let pending = inc_state::pending_path(&staged.archive);
        let new = store
            .commit(&pending, link, &staged.name, staged.manifest.archive.md5, head.as_ref())
            .map_err(JobError::State)?;
        tracing::info!("chain {}: level {} is the newest link", new.chain, new.level);
    }
    if keep_staging {
        tracing::info!("kept the staging archive {}", staged.archive.display());
    } else {
        staged.remove().map_err(JobError::Stage)?;
    }
    if skipped > 0 {
        tracing::warn!("{skipped} file(s) were skipped while packing (named above)");
        Ok(Exit::Skipped)
    } else {
        Ok(Exit::Done)
    }
}
