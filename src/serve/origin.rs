//! Where clients reach this server: the scheme and authority of the URLs the server hands out
//! (the status report's `url`) and accepts back (absolute URLs in `Upload-Concat`).
//!
//! Serving TLS itself, the scheme is `https`. Behind a TLS-terminating proxy (`--behind-proxy`)
//! the proxy's word is taken: the first element of `Forwarded` (RFC 7239, `proto=` and `host=`),
//! else `X-Forwarded-Proto` and `X-Forwarded-Host`; without a proxy those headers are ignored, as
//! any client could send them. The authority is otherwise the request's `Host`.

use axum::http::{HeaderMap, Uri};

/// A scheme and an authority, as in `https://backup.example.org:8443`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host and optional port.
    pub authority: String,
}

impl Origin {
    /// `scheme://authority`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// The origin a request was made to: `tls` when this server terminates TLS itself,
/// `behind_proxy` when a proxy in front says what the client used. The authority is the `Host`
/// header, else the request target's (HTTP/2's `:authority`). `None` when no authority is
/// known or the one given is not a plain host\[:port\].
pub fn of_request(uri: &Uri, headers: &HeaderMap, tls: bool, behind_proxy: bool) -> Option<Origin> {
    let mut scheme = if tls { "https" } else { "http" };
    let mut authority = header(headers, "host")
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
    if behind_proxy {
        let (proto, host) = forwarded(headers);
        let proto = proto.or_else(|| first_of_list(header(headers, "x-forwarded-proto")?).map(str::to_string));
        let host = host.or_else(|| first_of_list(header(headers, "x-forwarded-host")?).map(str::to_string));
        match proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => scheme = "https",
            Some("http") => scheme = "http",
            _ => {}
        }
        if let Some(host) = host {
            authority = Some(host);
        }
    }
    let authority = authority.filter(|a| is_authority(a))?;
    Some(Origin { scheme, authority })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first entry of a comma-separated header, trimmed; `None` if empty.
fn first_of_list(value: &str) -> Option<&str> {
    value.split(',').next().map(str::trim).filter(|v| !v.is_empty())
}

/// `proto` and `host` of the first element of `Forwarded`.
fn forwarded(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(first) = headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
    else {
        return (None, None);
    };
    let mut proto = None;
    let mut host = None;
    for pair in first.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = Some(value),
            "host" => host = Some(value),
            _ => {}
        }
    }
    (proto, host)
}

/// A host name, IPv4 address or bracketed IPv6 address, with an optional port: nothing that
/// could change a URL's meaning (no `/`, `@`, `?`, `#`, spaces).
fn is_authority(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn tls_and_host_make_the_origin() {
        let h = headers(&[("host", "backup.example.org:8443")]);
        assert_eq!(
            of_request(&Uri::default(), &h, true, false).unwrap().url(),
            "https://backup.example.org:8443"
        );
        assert_eq!(
            of_request(&Uri::default(), &h, false, false).unwrap().url(),
            "http://backup.example.org:8443"
        );
        assert_eq!(of_request(&Uri::default(), &HeaderMap::new(), true, false), None);
        let h2: Uri = "https://b.example:8443/files/x".parse().unwrap();
        assert_eq!(
            of_request(&h2, &HeaderMap::new(), true, false).unwrap().url(),
            "https://b.example:8443"
        );
    }

    #[test]
    fn forwarded_headers_count_only_behind_a_proxy() {
        let h = headers(&[
            ("host", "127.0.0.1:1080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "backup.example.org"),
        ]);
        assert_eq!(
            of_request(&Uri::default(), &h, false, false).unwrap().url(),
            "http://127.0.0.1:1080"
        );
        assert_eq!(
            of_request(&Uri::default(), &h, false, true).unwrap().url(),
            "https://backup.example.org"
        );
        let h = headers(&[
            ("host", "127.0.0.1:1080"),
            (
                "forwarded",
                "for=192.0.2.60;proto=https;host=\"b.example:443\", for=198.51.100.17",
            ),
            ("x-forwarded-proto", "http"),
        ]);
        assert_eq!(
            of_request(&Uri::default(), &h, false, true).unwrap().url(),
            "https://b.example:443"
        );
    }

    #[test]
    fn an_authority_that_would_change_the_url_is_refused() {
        for bad in ["evil.example/x", "a@b", "a b", "x?y", ""] {
            let h = headers(&[("host", "ok.example"), ("x-forwarded-host", bad)]);
            let got = of_request(&Uri::default(), &h, false, true);
            assert!(got.is_none() || bad.is_empty(), "{bad:?} gave {got:?}");
        }
    }
}
