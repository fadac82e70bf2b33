//! What the command line shows: the progress reporter the flags and the terminal call for, and
//! the result lines commands print on stdout (listings, prune decisions). Logs go to stderr.

use std::io::IsTerminal;
use std::time::Duration;

use robusto::job::prune::Action;
use robusto::progress::{Human, JsonLines, Progress};
use robusto::protocol::Listed as Upload;
use robusto::restore::{EntryKind, Listed};
use robusto::retention::Decision;

use super::GlobalArgs;

/// The progress reporter the flags and the terminal call for.
pub(crate) fn reporter(global: &GlobalArgs) -> Box<dyn Progress> {
    if global.json {
        Box::new(JsonLines)
    } else if global.quiet {
        // no bar, no progress lines: only what is logged at warning level (a skipped file)
        Box::new(Human::new(false, None))
    } else {
        let tty = std::io::stderr().is_terminal();
        let interval = (global.verbose > 0).then(|| Duration::from_secs(10));
        Box::new(Human::new(tty, interval))
    }
}

/// The reporter for sending: like [`reporter`], but without a TTY a log line every 10 s even
/// without `-v` (a long upload under cron or systemd should show signs of life).
pub(crate) fn send_reporter(global: &GlobalArgs) -> Box<dyn Progress> {
    if global.json || global.quiet {
        reporter(global)
    } else {
        Box::new(Human::new(
            std::io::stderr().is_terminal(),
            Some(Duration::from_secs(10)),
        ))
    }
}

/// One line of `robusto list`: completion time, size, MD5, name, URL.
pub(crate) fn upload_line(u: &Upload, url: &str, exact: bool) -> String {
    let size = if exact {
        u.size.to_string()
    } else {
        robusto::units::format_bytes(u.size)
    };
    let chain = match robusto::incremental::Link::from_metadata(&u.metadata) {
        None => String::new(),
        Some(l) => match &l.parent {
            None => "  (full: starts a chain)".to_string(),
            Some(p) => format!("  (incremental level {} after {})", l.level, p.name),
        },
    };
    format!(
        "{}  {:>12}  {}  {}  {}{chain}",
        u.completed_at.as_deref().unwrap_or("-"),
        size,
        u.md5.as_deref().unwrap_or("-"),
        u.name,
        url
    )
}

/// One line of `robusto prune`: what became of an upload, and why it is kept.
pub(crate) fn prune_line(d: &Decision, action: Action) -> String {
    let when = d.upload.completed_at.as_deref().unwrap_or("-");
    match action {
        Action::Kept => format!("keep    {when}  {}  ({})", d.upload.name, d.reasons.join(", ")),
        Action::WouldRemove => format!("would remove  {when}  {}", d.upload.name),
        Action::Removed => format!("removed {when}  {}", d.upload.name),
    }
}

/// One line of `restore --dry-run`: kind, mode, size, mtime, name (like `tar -tv`).
pub(crate) fn listing_line(e: &Listed) -> String {
    let kind = match &e.kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink(_) => 'l',
        EntryKind::HardLink(_) => 'h',
    };
    let when = e
        .mtime
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into());
    let mode = e.mode.map(|m| format!("{m:04o}")).unwrap_or_else(|| "----".into());
    let target = match &e.kind {
        EntryKind::Symlink(t) => format!(" -> {t}"),
        EntryKind::HardLink(t) => format!(" link to {t}"),
        _ => String::new(),
    };
    format!("{kind} {mode} {:>12} {when} {}{target}", e.size, e.name)
}
