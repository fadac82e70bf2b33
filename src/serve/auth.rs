//! Bearer tokens (`--token-file`, one per line): with tokens set every request needs one, and an
//! upload belongs to the token that created it (recorded as a hash, never the token itself).

use std::collections::HashSet;
use std::io;
use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};

use super::error::ServeError;
use super::uploads::Owner;

/// The accepted tokens, by hash.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashSet<String>);

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Tokens from lines of text; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Self {
        Tokens(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(hash)
                .collect(),
        )
    }

    /// Reads a token file.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    /// Whether no token is configured (the server is open).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Who the request comes from: `Owner(None)` on an open server, the token's hash otherwise;
    /// 401 without a known token.
    pub fn check(&self, headers: &HeaderMap) -> Result<Owner, ServeError> {
        if self.is_empty() {
            return Ok(Owner(None));
        }
        // Two credentials are refused, not tried one by one.
        let mut all = headers.get_all(AUTHORIZATION).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(ServeError::Unauthorized);
        }
        let token = first
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ServeError::Unauthorized)?;
        let h = hash(token);
        if self.0.contains(&h) {
            Ok(Owner(Some(h)))
        } else {
            Err(ServeError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_gate_and_identify() {
        let t = Tokens::parse("# comment\nalpha\n\n beta \n");
        let mut h = HeaderMap::new();
        assert!(matches!(t.check(&h), Err(ServeError::Unauthorized)));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer gamma"));
        assert!(t.check(&h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer beta"));
        let beta = t.check(&h).unwrap();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer alpha"));
        assert_ne!(t.check(&h).unwrap(), beta);
        assert_eq!(Tokens::default().check(&HeaderMap::new()).unwrap(), Owner(None));
    }
}
