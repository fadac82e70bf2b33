//! How the client reaches a server safely: which certificate authorities it trusts (the
//! system's, and any `--ca-cert`), and the rule that a bearer token never crosses a network in
//! clear (`http://` only to a loopback address, unless `--allow-insecure-http`).

use std::path::{Path, PathBuf};

use url::{Host, Url};

/// Certificate authorities trusted besides the system's roots (`--ca-cert`).
#[derive(Clone, Debug, Default)]
pub struct ExtraRoots(Vec<reqwest::Certificate>);

/// A `--ca-cert` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The file could not be read.
    #[error("--ca-cert {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or a damaged one.
    #[error("--ca-cert {}: no usable PEM certificate in it ({reason}); expected -----BEGIN CERTIFICATE-----", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
}

impl ExtraRoots {
    /// Every certificate of the PEM `files` (each may hold a bundle).
    pub fn from_pem_files(files: &[PathBuf]) -> Result<Self, RootsError> {
        let mut roots = Vec::new();
        for path in files {
            roots.extend(read_bundle(path)?);
        }
        Ok(ExtraRoots(roots))
    }

    /// Whether no extra authority is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The certificates, for the HTTP client.
    pub(crate) fn certificates(&self) -> &[reqwest::Certificate] {
        &self.0
    }
}

fn read_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, RootsError> {
    let pem = std::fs::read(path).map_err(|source| RootsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| RootsError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(bad("none found".into()));
    }
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(crate::error_chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("none found".into()));
    }
    Ok(certs)
}

/// A token that would cross a network in clear.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{url} is plain http to a host that is not this machine: the bearer token would cross the network in clear. \
     Use https://, or add --allow-insecure-http if the network is yours"
)]
pub struct InsecureTransport {
    /// The URL refused.
    pub url: String,
}

/// Whether `url` names this machine: `localhost` (and names under it), 127.0.0.0/8 or `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Refuses to send a token over plain `http://` to a host that is not loopback, unless
/// `allow_insecure_http`. Without a token, or over `https://`, anything goes.
pub fn check(url: &Url, has_token: bool, allow_insecure_http: bool) -> Result<(), InsecureTransport> {
    if has_token && url.scheme() == "http" && !is_loopback(url) && !allow_insecure_http {
        return Err(InsecureTransport { url: url.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_token_goes_in_clear_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:1080/files/",
            "http://127.9.9.9/files/",
            "http://[::1]:1080/files/",
            "http://localhost/files/",
            "http://LOCALHOST./files/",
            "http://api.localhost/files/",
            "https://backup.example.org/files/",
            "https://10.0.0.5/files/",
        ] {
            assert_eq!(check(&url(ok), true, false), Ok(()), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:1080/files/",
            "http://backup.example.org/files/",
            "http://localhost.example.org/files/",
            "http://[::ffff:10.0.0.1]/files/",
        ] {
            let e = check(&url(bad), true, false).unwrap_err();
            assert!(e.to_string().contains("--allow-insecure-http"), "{e}");
            assert_eq!(check(&url(bad), true, true), Ok(()), "allowed: {bad}");
            assert_eq!(check(&url(bad), false, false), Ok(()), "no token: {bad}");
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = ExtraRoots::from_pem_files(std::slice::from_ref(&f)).unwrap_err();
        assert!(e.to_string().contains("no usable PEM certificate"), "{e}");
        let e = ExtraRoots::from_pem_files(&[dir.path().join("missing.pem")]).unwrap_err();
        assert!(matches!(e, RootsError::Read { .. }), "{e}");
    }
}
