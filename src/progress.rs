//! Progress reporting: the library emits [`Event`]s through the [`Progress`] trait and never
//! prints; the command line picks a reporter — a bar on a TTY, a plain log line every few
//! seconds otherwise (cron, systemd), or one JSON object per line (`--json`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Something worth telling the person (or the log) about.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Packing began (the walk streams, so totals are not known up front).
    PackStarted {
        /// The paths being packed.
        paths: Vec<String>,
    },
    /// One file's content was stored in the archive.
    PackFile {
        /// Bytes of content.
        bytes: u64,
    },
    /// A file was left out.
    Skipped {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Packing finished.
    PackFinished {
        /// Files stored.
        files: u64,
        /// Content bytes stored.
        bytes_in: u64,
        /// Archive size.
        archive_size: u64,
        /// Archive MD5 (hex).
        md5: String,
    },
    /// Sending began.
    SendStarted {
        /// The file.
        file: String,
        /// Its size.
        total_bytes: u64,
        /// Its chunks.
        chunks: u64,
        /// Uploads sent at once.
        parallel: u32,
    },
    /// An upload from an earlier run was found on the server.
    UploadResumed {
        /// The upload URL.
        url: String,
        /// Bytes the server already holds.
        offset: u64,
    },
    /// The server acknowledged a chunk.
    ChunkSent {
        /// Chunk number.
        index: u64,
        /// First byte of the file sent.
        offset: u64,
        /// Bytes acknowledged.
        len: u64,
        /// Bytes the server holds, all uploads of the job together.
        sent_bytes: u64,
        /// The file's size.
        total_bytes: u64,
    },
    /// A request failed and will be tried again.
    Retry {
        /// Failures of this chunk so far.
        attempt: u32,
        /// The budget.
        retries: u32,
        /// Wait before the next attempt.
        delay_ms: u64,
        /// What failed.
        reason: String,
    },
    /// The server confirmed the whole upload.
    Complete {
        /// The upload URL.
        url: String,
        /// Its size.
        bytes: u64,
    },
    /// The end of a push job (`--json`): what went in, what went out, how long it took.
    Summary {
        /// The exit code.
        exit: u8,
        /// Files packed.
        files: u64,
        /// Bytes of file content packed.
        bytes_in: u64,
        /// Size of the archive uploaded.
        archive_size: u64,
        /// archive_size / bytes_in.
        ratio: f64,
        /// Seconds from start to end.
        duration_s: f64,
        /// Requests retried.
        retries: u64,
        /// The upload URL, when known.
        url: Option<String>,
        /// Files left out while packing (`PATH: REASON`), also named in the log as they happen.
        skipped: Vec<String>,
    },
    /// The job stopped with an error (emitted by the command line).
    Error {
        /// What went wrong.
        message: String,
        /// Whether running the same command again continues (exit 75).
        resumable: bool,
    },
}

/// Receives [`Event`]s. Implementations must be cheap: events arrive per file.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event);
}

/// Discards every event.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: &Event) {}
}

/// Prints each event as one JSON line on stderr (`--json`).
pub struct JsonLines;

impl Progress for JsonLines {
    fn event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            eprintln!("{line}");
        }
    }
}

#[derive(Default)]
struct Counters {
    files: u64,
    bytes: u64,
    total_bytes: u64,
    retries: u64,
}

/// A bar on a TTY, or (without a TTY) a plain `tracing` log line every `interval`.
pub struct Human {
    bar: Option<indicatif::ProgressBar>,
    interval: Option<Duration>,
    state: Mutex<(Counters, Instant, Instant)>,
}

impl Human {
    /// A reporter: a bar if `tty`, otherwise a log line every `interval` (none if `None`).
    pub fn new(tty: bool, interval: Option<Duration>) -> Self {
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            let style = indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let now = Instant::now();
        Human {
            bar,
            interval,
            state: Mutex::new((Counters::default(), now, now)),
        }
    }
}

fn send_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress for Human {
    fn event(&self, event: &Event) {
        let Ok(mut guard) = self.state.lock() else { return };
        let (c, started, last) = &mut *guard;
        match event {
            Event::PackStarted { paths } => {
                if let Some(bar) = &self.bar {
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar.set_message(format!("packing {}", paths.join(" ")));
                }
            }
            Event::PackFile { bytes } => {
                c.files += 1;
                c.bytes += bytes;
                if let Some(bar) = &self.bar {
                    bar.set_position(c.bytes);
                    bar.set_message(format!("packed {} files", c.files));
                } else if self.interval.is_some_and(|i| last.elapsed() >= i) {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    tracing::info!(
                        "packed {} files, {} ({}/s)",
                        c.files,
                        crate::units::format_bytes(c.bytes),
                        crate::units::format_bytes((c.bytes as f64 / secs) as u64)
                    );
                }
            }
            Event::Skipped { path, reason } => {
                if let Some(bar) = &self.bar {
                    bar.suspend(|| tracing::warn!("skipped {path}: {reason}"));
                } else {
                    tracing::warn!("skipped {path}: {reason}");
                }
            }
            Event::PackFinished {
                files,
                bytes_in,
                archive_size,
                md5,
            } => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    "packed {files} files, {} into {} (md5 {md5}) in {secs:.1}s",
                    crate::units::format_bytes(*bytes_in),
                    crate::units::format_bytes(*archive_size)
                );
            }
            Event::SendStarted {
                file,
                total_bytes,
                chunks,
                parallel,
            } => {
                *c = Counters {
                    total_bytes: *total_bytes,
                    ..Counters::default()
                };
                *started = Instant::now();
                *last = Instant::now();
                if let Some(bar) = &self.bar {
                    bar.reset();
                    bar.set_style(send_style());
                    bar.set_length(*total_bytes);
                    bar.set_message("sending");
                }
                let line = format!(
                    "sending {file}: {} in {chunks} chunks over {parallel} connection(s)",
                    crate::units::format_bytes(*total_bytes)
                );
                match &self.bar {
                    Some(bar) => bar.suspend(|| tracing::info!("{line}")),
                    None => tracing::info!("{line}"),
                }
            }
            Event::UploadResumed { url, offset } => {
                let line = format!("resuming {url} at {}", crate::units::format_bytes(*offset));
                match &self.bar {
                    Some(bar) => bar.suspend(|| tracing::info!("{line}")),
                    None => tracing::info!("{line}"),
                }
            }
            Event::ChunkSent {
                sent_bytes,
                total_bytes,
                ..
            } => {
                c.bytes = *sent_bytes;
                c.total_bytes = *total_bytes;
                if let Some(bar) = &self.bar {
                    bar.set_position(*sent_bytes);
                } else if self.interval.is_some_and(|i| last.elapsed() >= i) {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let rate = c.bytes as f64 / secs;
                    let eta = (c.total_bytes.saturating_sub(c.bytes) as f64 / rate.max(1.0)) as u64;
                    tracing::info!(
                        "sent {} of {} ({}/s), eta {}m{:02}s, {} retries",
                        crate::units::format_bytes(c.bytes),
                        crate::units::format_bytes(c.total_bytes),
                        crate::units::format_bytes(rate as u64),
                        eta / 60,
                        eta % 60,
                        c.retries
                    );
                }
            }
            Event::Retry {
                attempt,
                retries,
                delay_ms,
                reason,
            } => {
                c.retries += 1;
                let line = format!(
                    "retry {attempt}/{retries} in {:.1}s: {reason}",
                    *delay_ms as f64 / 1000.0
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_message(format!("sending ({} retries)", c.retries));
                        bar.suspend(|| tracing::warn!("{line}"));
                    }
                    None => tracing::warn!("{line}"),
                }
            }
            Event::Complete { url, bytes } => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    "sent {} in {secs:.1}s, {} retries: {url}",
                    crate::units::format_bytes(*bytes),
                    c.retries
                );
            }
            Event::Error { .. } => {
                if let Some(bar) = &self.bar {
                    bar.abandon();
                }
            }
            // the summary is for machines (--json); people have had the log lines
            Event::Summary { .. } => {}
        }
    }
}
