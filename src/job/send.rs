//! A send job: one file to a tus endpoint or to a local folder (served in-process for the length
//! of the job), stopping cleanly and resumably on Ctrl-C or SIGTERM. Shared by `robusto send` and
//! the push job.

use std::path::PathBuf;

use super::Exit;
use crate::client::{self, SendError, SendOptions, SendOutcome, Url};
use crate::job::local::{self, LocalServer};
use crate::progress::{Event, Progress};

/// Where a send goes.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A tus endpoint.
    Url(Url),
    /// A local folder, served in-process.
    Dir(PathBuf),
}

/// A `--to` that names no usable destination.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Not a URL.
    #[error("--to {to}: {reason}")]
    Url {
        /// What was given.
        to: String,
        /// What the URL parser said.
        reason: String,
    },
    /// A URL of a scheme other than http or https.
    #[error("--to {0}: only http and https URLs are supported")]
    Scheme(String),
    /// A server's address without `http://` (taken for a folder, it would fill one named so).
    #[error("--to {to} looks like a server address, not a folder: did you mean {url}? write ./{to} for a local folder")]
    LooksLikeServer {
        /// What was given.
        to: String,
        /// The URL it probably means.
        url: String,
    },
}

/// The URL `text` probably means when it looks like a server's address written without a scheme:
/// `host:port…` (`127.0.0.1:1080/files/`, `backup:8443`), or a host name or IPv4 address followed
/// by a path (`backup.example.org/files/`). `None` for what reads as a path.
pub fn server_address(text: &str) -> Option<String> {
    let (host, path) = match text.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (text, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ipv4 = |h: &str| h.parse::<std::net::Ipv4Addr>().is_ok();
    let local = |h: &str| ipv4(h) || h == "localhost" || h.starts_with('[');
    if let Some((name, port)) = host.rsplit_once(':')
        && !port.is_empty()
        && port.len() <= 5
        && port.chars().all(|c| c.is_ascii_digit())
        && (name.split('.').all(label) || (name.starts_with('[') && name.ends_with(']')))
    {
        let scheme = if port == "443" { "https" } else { "http" };
        return Some(format!("{scheme}://{text}"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    let domain = labels.len() >= 2
        && labels.iter().all(|l| label(l))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    if path.is_some() && (domain || local(host)) {
        let scheme = if local(host) { "http" } else { "https" };
        return Some(format!("{scheme}://{text}"));
    }
    None
}

impl Destination {
    /// Parses `--to`: a URL with a scheme (http or https), or a folder. What looks like a
    /// server's address without its scheme ([`server_address`]) is refused, unless it is
    /// written as a path (`./NAME`, absolute) or a folder of that name exists.
    pub fn parse(to: &str) -> Result<Self, DestinationError> {
        if !to.contains("://") {
            let path = std::path::Path::new(to);
            let written_as_path = path.is_absolute() || path.starts_with(".") || path.starts_with("..");
            let first = to.split('/').next().unwrap_or(to);
            if !written_as_path
                && !std::path::Path::new(first).exists()
                && let Some(url) = server_address(to)
            {
                return Err(DestinationError::LooksLikeServer {
                    to: to.to_string(),
                    url,
                });
            }
            return Ok(Destination::Dir(PathBuf::from(to)));
        }
        let url = Url::parse(to).map_err(|e| DestinationError::Url {
            to: to.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DestinationError::Scheme(to.to_string()));
        }
        Ok(Destination::Url(url))
    }

    /// The tus endpoint (for a folder, a placeholder until its server is started).
    pub fn endpoint(&self) -> Url {
        match self {
            Destination::Url(u) => u.clone(),
            Destination::Dir(_) => {
                Url::parse("http://127.0.0.1/files/").unwrap_or_else(|_| unreachable!("a constant URL parses"))
            }
        }
    }

    /// What identifies the destination across runs.
    pub fn key(&self) -> String {
        match self {
            Destination::Url(u) => u.to_string(),
            Destination::Dir(d) => local::job_key(d),
        }
    }
}

/// Why a send job failed in a way that running it again does not fix.
#[derive(Debug, thiserror::Error)]
pub enum SendJobError {
    /// The runtime or the signal handlers could not be set up.
    #[error(transparent)]
    Setup(std::io::Error),
    /// The local folder could not be served.
    #[error("cannot serve --to {}: {source}", .dir.display())]
    Serve {
        /// The folder.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The sender gave up for good.
    #[error(transparent)]
    Send(SendError),
}

/// How a send ended.
#[derive(Debug)]
pub struct Sent {
    /// [`Exit::Done`], [`Exit::Resumable`] or [`Exit::Interrupted`].
    pub exit: Exit,
    /// The upload's URL, when known.
    pub url: Option<String>,
    /// What to show for a completed upload: its URL, or for a folder the received file's path.
    pub receipt: Option<String>,
}

/// Sends `opts.file` to `dest` on a fresh runtime that is dropped without waiting for blocking
/// work when the send ends (see [`super::block_on_then_drop`]).
pub fn send_to(dest: Destination, opts: SendOptions, progress: &dyn Progress) -> Result<Sent, SendJobError> {
    super::block_on_then_drop(send_async(dest, opts, progress)).map_err(SendJobError::Setup)?
}

async fn send_async(dest: Destination, mut opts: SendOptions, progress: &dyn Progress) -> Result<Sent, SendJobError> {
    match dest {
        Destination::Url(_) => send_stoppable(&opts, progress, None).await,
        Destination::Dir(dir) => {
            let local = LocalServer::start(&dir).await.map_err(|source| SendJobError::Serve {
                dir: dir.clone(),
                source,
            })?;
            opts.target = local.endpoint.clone();
            opts.job_key = Some(local::job_key(&dir));
            let sent = send_stoppable(&opts, progress, Some(&local)).await;
            local.stop().await;
            sent
        }
    }
}

/// One send, stopped cleanly (resumably) at Ctrl-C or SIGTERM.
async fn send_stoppable(
    opts: &SendOptions,
    progress: &dyn Progress,
    local: Option<&LocalServer>,
) -> Result<Sent, SendJobError> {
    let stop = crate::stop::signalled().map_err(SendJobError::Setup)?;
    let result = tokio::select! {
        r = client::send(opts, progress) => r,
        _ = stop => {
            progress.event(&Event::Error { message: "interrupted".into(), resumable: true });
            tracing::warn!("interrupted: run the same command again to continue");
            return Ok(Sent { exit: Exit::Interrupted, url: None, receipt: None });
        }
    };
    match result {
        Ok(SendOutcome::Complete { url }) => {
            let published = match local {
                Some(local) => local.published(&url).await,
                None => None,
            };
            let receipt = published.map_or_else(|| url.clone(), |path| path.display().to_string());
            Ok(Sent {
                exit: Exit::Done,
                url: Some(url),
                receipt: Some(receipt),
            })
        }
        Ok(SendOutcome::Paused { url }) => {
            let message = format!(
                "--max-duration reached: stopped at a chunk boundary{}; run the same command again to continue",
                url.as_ref().map(|u| format!(" (upload {u})")).unwrap_or_default()
            );
            progress.event(&Event::Error {
                message: message.clone(),
                resumable: true,
            });
            tracing::warn!("{message}");
            Ok(Sent {
                exit: Exit::Resumable,
                url,
                receipt: None,
            })
        }
        Err(e) => {
            progress.event(&Event::Error {
                message: e.to_string(),
                resumable: e.is_resumable(),
            });
            if e.is_resumable() {
                tracing::error!("{e}");
                Ok(Sent {
                    exit: Exit::Resumable,
                    url: None,
                    receipt: None,
                })
            } else {
                Err(SendJobError::Send(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_is_a_url_or_a_folder() {
        assert!(matches!(
            Destination::parse("http://h:1/files/"),
            Ok(Destination::Url(_))
        ));
        assert!(matches!(Destination::parse("backups/here"), Ok(Destination::Dir(_))));
        let e = Destination::parse("ftp://h/files/").unwrap_err().to_string();
        assert_eq!(e, "--to ftp://h/files/: only http and https URLs are supported");
        assert!(Destination::parse("http://").is_err());
        let e = Destination::parse("127.0.0.1:19100/files/").unwrap_err().to_string();
        assert_eq!(
            e,
            "--to 127.0.0.1:19100/files/ looks like a server address, not a folder: did you mean \
             http://127.0.0.1:19100/files/? write ./127.0.0.1:19100/files/ for a local folder"
        );
        assert!(matches!(
            Destination::parse("./127.0.0.1:19100/files/"),
            Ok(Destination::Dir(_))
        ));
        assert!(matches!(
            Destination::parse("/srv/backup.example.org/files/"),
            Ok(Destination::Dir(_))
        ));
    }

    #[test]
    fn server_addresses_without_a_scheme_are_recognised() {
        let said = |t: &str| server_address(t);
        assert_eq!(
            said("127.0.0.1:19100/files/").as_deref(),
            Some("http://127.0.0.1:19100/files/")
        );
        assert_eq!(said("backup:8080").as_deref(), Some("http://backup:8080"));
        assert_eq!(
            said("h.example.org:443/files/").as_deref(),
            Some("https://h.example.org:443/files/")
        );
        assert_eq!(said("[::1]:1080/files/").as_deref(), Some("http://[::1]:1080/files/"));
        assert_eq!(
            said("backup.example.org/files/").as_deref(),
            Some("https://backup.example.org/files/")
        );
        assert_eq!(said("10.0.0.5/files/").as_deref(), Some("http://10.0.0.5/files/"));
        assert_eq!(said("localhost/files/").as_deref(), Some("http://localhost/files/"));
        for path in [
            "received",
            "backups/here",
            "backup.example.org",
            "photos.2024/all",
            "out.d/x",
            "a:b/c",
            "notes:/x",
        ] {
            assert_eq!(said(path), None, "{path}");
        }
    }
}
