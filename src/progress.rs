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
        }
    }
}
