//! The S3 requests the store makes, signed by `rusty-s3` (SigV4, presigned) and sent by reqwest:
//! objects with conditional writes, and multipart uploads with explicit part numbers.
//!
//! Conditional writes carry an ETag without its quotes: Ceph RGW only honours `If-Match` in that
//! form, and AWS and moto accept it too.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::{Method, StatusCode};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::super::{ByteStream, StoreError, StoreResult};

/// How long a signed URL stays valid: only for the request it is made for.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Attempts of a request that may be repeated safely (reads, deletes, parts, unconditional puts).
const ATTEMPTS: u32 = 4;

/// Where the store's bucket is and who it is.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// The S3 endpoint (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:7480`…);
    /// `None` for AWS in `region`.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// Key prefix under which everything of the store lives (`""` or ending in `/`).
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted buckets.
    pub path_style: bool,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

/// An object read with its version.
pub(super) struct Versioned {
    /// The object's bytes.
    pub(super) body: Bytes,
    /// Its ETag, unquoted: the version a conditional write names.
    pub(super) etag: String,
}

/// What a conditional write asks for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Condition<'a> {
    /// No condition.
    None,
    /// Only if no object has the key (`If-None-Match: *`).
    Create,
    /// Only if the object is still at this version (`If-Match`).
    Matches(&'a str),
}

/// A failed request, by what the store makes of it.
#[derive(Debug)]
pub(super) enum S3Error {
    /// 404: no such key or upload.
    NotFound,
    /// 412 or 409: a conditional write lost.
    Precondition,
    /// A conditional write whose outcome is unknown (a 5xx or a lost connection): Ceph RGW
    /// answers 500 to the loser of two conditional writes racing on one key.
    Unsure(String),
    /// Anything else, with the status and S3's message.
    Other(String),
}

impl From<S3Error> for StoreError {
    fn from(e: S3Error) -> Self {
        match e {
            S3Error::NotFound => StoreError::NotFound,
            S3Error::Precondition => StoreError::Conflict,
            S3Error::Other(m) | S3Error::Unsure(m) => StoreError::Io(std::io::Error::other(m)),
        }
    }
}

/// Result of one S3 request.
pub(super) type S3Result<T> = Result<T, S3Error>;

/// The bucket, the credentials and one HTTP client.
pub(super) struct S3Client {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

fn unquoted(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// Text between `<tag>` and `</tag>` in an S3 XML answer.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

impl S3Client {
    /// A client for `config`'s bucket.
    pub(super) fn new(config: &S3Config) -> StoreResult<Self> {
        let endpoint = match &config.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", config.region),
        };
        let url = endpoint
            .parse()
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("S3 endpoint '{endpoint}': {e}"))))?;
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, config.bucket.clone(), config.region.clone())
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("S3 bucket '{}': {e}", config.bucket))))?;
        let credentials = match &config.session_token {
            Some(t) => Credentials::new_with_token(config.access_key.clone(), config.secret_key.clone(), t.clone()),
            None => Credentials::new(config.access_key.clone(), config.secret_key.clone()),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("HTTP client: {e}"))))?;
        Ok(S3Client {
            bucket,
            credentials,
            http,
        })
    }

    /// Sends a signed request; `retry` repeats it on a connection error or a 5xx.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: &[(&'static str, String)],
        body: Option<Bytes>,
        retry: bool,
    ) -> S3Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), url.as_str());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(b) = &body {
                req = req.header("content-length", b.len()).body(b.clone());
            } else if method == Method::PUT || method == Method::POST {
                req = req.header("content-length", 0);
            }
            let failed = match req.send().await {
                Ok(resp) if resp.status().is_server_error() => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    format!("{method} {}: {status}: {}", url.path(), message(&text))
                }
                Ok(resp) => return Ok(resp),
                Err(e) => format!("{method} {}: {}", url.path(), crate::error_chain(&e)),
            };
            if !retry || attempt >= ATTEMPTS {
                return Err(S3Error::Other(failed));
            }
            tracing::debug!("S3 request failed ({failed}); trying again");
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }

    /// Turns an answer that is not a success into an [`S3Error`].
    async fn check(resp: reqwest::Response, what: &str) -> S3Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match status {
            StatusCode::NOT_FOUND => S3Error::NotFound,
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => S3Error::Precondition,
            _ => S3Error::Other(format!("{what}: {status}: {}", message(&text))),
        })
    }

    /// Reads an object whole, with its ETag.
    pub(super) async fn get(&self, key: &str) -> S3Result<Versioned> {
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let resp = Self::check(self.send(Method::GET, url, &[], None, true).await?, key).await?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(unquoted)
            .unwrap_or_default();
        let body = resp
            .bytes()
            .await
            .map_err(|e| S3Error::Other(format!("GET {key}: {}", crate::error_chain(&e))))?;
        Ok(Versioned { body, etag })
    }

    /// Streams bytes `range` of an object.
    pub(super) async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> S3Result<ByteStream> {
        if range.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let header = [("range", format!("bytes={}-{}", range.start, range.end - 1))];
        let resp = Self::check(self.send(Method::GET, url, &header, None, true).await?, key).await?;
        Ok(resp.bytes_stream().map_err(std::io::Error::other).boxed())
    }

    /// Whether an object exists.
    pub(super) async fn exists(&self, key: &str) -> S3Result<bool> {
        let url = self.bucket.head_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        match Self::check(self.send(Method::HEAD, url, &[], None, true).await?, key).await {
            Ok(_) => Ok(true),
            Err(S3Error::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes an object under `condition`; returns its new ETag (unquoted; may be empty).
    pub(super) async fn put(&self, key: &str, body: Bytes, condition: Condition<'_>) -> S3Result<String> {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        let header = match condition {
            Condition::None => None,
            Condition::Create => Some(("if-none-match", "*".to_string())),
            Condition::Matches(etag) => Some(("if-match", etag.to_string())),
        };
        if let Some((k, v)) = &header {
            action.headers_mut().insert(*k, v.clone());
        }
        let url = action.sign(SIGNED_FOR);
        let headers: Vec<_> = header.into_iter().collect();
        // A conditional write is not repeated: a lost answer would make its own success a 412.
        let retry = matches!(condition, Condition::None);
        let sent = self.send(Method::PUT, url, &headers, Some(body), retry).await;
        let resp = match (sent, retry) {
            (Err(S3Error::Other(m)), false) => return Err(S3Error::Unsure(m)),
            (sent, _) => Self::check(sent?, key).await?,
        };
        Ok(resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(unquoted)
            .unwrap_or_default())
    }

    /// Deletes an object (a missing one is no error).
    pub(super) async fn delete(&self, key: &str) -> S3Result<()> {
        let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        match Self::check(self.send(Method::DELETE, url, &[], None, true).await?, key).await {
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The keys under `prefix`, with their sizes, all pages.
    pub(super) async fn list(&self, prefix: &str) -> S3Result<Vec<(String, u64)>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(prefix.to_string());
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let resp = Self::check(self.send(Method::GET, url, &[], None, true).await?, prefix).await?;
            let text = resp
                .text()
                .await
                .map_err(|e| S3Error::Other(format!("list {prefix}: {e}")))?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| S3Error::Other(format!("list {prefix}: unreadable answer: {e}")))?;
            keys.extend(page.contents.into_iter().map(|c| (c.key, c.size.unwrap_or(0))));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(keys),
            }
        }
    }

    /// Starts a multipart upload to `key`; returns its upload id.
    pub(super) async fn create_multipart(&self, key: &str) -> S3Result<String> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let resp = Self::check(self.send(Method::POST, url, &[], None, true).await?, key).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| S3Error::Other(format!("create multipart {key}: {e}")))?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| S3Error::Other(format!("create multipart {key}: unreadable answer: {e}")))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads part `number` of a multipart upload; returns the part's ETag.
    pub(super) async fn upload_part(&self, key: &str, upload_id: &str, number: u16, body: Bytes) -> S3Result<String> {
        let url = self
            .bucket
            .upload_part(Some(&self.credentials), key, number, upload_id)
            .sign(SIGNED_FOR);
        let resp = Self::check(self.send(Method::PUT, url, &[], Some(body), true).await?, key).await?;
        Ok(resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim().to_string())
            .unwrap_or_default())
    }

    /// `x-amz-copy-source` for `key` of this bucket.
    fn copy_source(&self, key: &str) -> String {
        let mut out = format!("/{}/", self.bucket.name());
        for b in key.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// Copies object `from` to `to` inside the bucket (at most 5 GiB).
    pub(super) async fn copy(&self, from: &str, to: &str) -> S3Result<()> {
        let mut action = self.bucket.put_object(Some(&self.credentials), to);
        let source = self.copy_source(from);
        action.headers_mut().insert("x-amz-copy-source", source.clone());
        let url = action.sign(SIGNED_FOR);
        let headers = [("x-amz-copy-source", source)];
        let resp = Self::check(self.send(Method::PUT, url, &headers, None, true).await?, to).await?;
        // S3 may answer 200 with an error in the body.
        let text = resp.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            return Err(S3Error::Other(format!("copy {from} to {to}: {}", message(&text))));
        }
        Ok(())
    }

    /// Copies bytes `range` of object `from` as part `number` of a multipart upload to `to`.
    pub(super) async fn upload_part_copy(
        &self,
        to: &str,
        upload_id: &str,
        number: u16,
        from: &str,
        range: std::ops::Range<u64>,
    ) -> S3Result<String> {
        let mut action = self.bucket.upload_part(Some(&self.credentials), to, number, upload_id);
        let source = self.copy_source(from);
        let bytes = format!("bytes={}-{}", range.start, range.end - 1);
        action.headers_mut().insert("x-amz-copy-source", source.clone());
        action.headers_mut().insert("x-amz-copy-source-range", bytes.clone());
        let url = action.sign(SIGNED_FOR);
        let headers = [("x-amz-copy-source", source), ("x-amz-copy-source-range", bytes)];
        let resp = Self::check(self.send(Method::PUT, url, &headers, None, true).await?, to).await?;
        let text = resp.text().await.unwrap_or_default();
        match xml_field(&text, "ETag") {
            Some(etag) if !text.contains("<Error>") => Ok(etag.trim().replace("&quot;", "\"")),
            _ => Err(S3Error::Other(format!(
                "copy part {number} of {to}: {}",
                message(&text)
            ))),
        }
    }

    /// The parts of a multipart upload: number → (ETag, size).
    pub(super) async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> S3Result<std::collections::BTreeMap<u16, (String, u64)>> {
        let mut parts = std::collections::BTreeMap::new();
        let mut marker = None;
        loop {
            let mut action = self.bucket.list_parts(Some(&self.credentials), key, upload_id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGNED_FOR);
            let resp = Self::check(self.send(Method::GET, url, &[], None, true).await?, key).await?;
            let text = resp
                .text()
                .await
                .map_err(|e| S3Error::Other(format!("list parts {key}: {e}")))?;
            // Parsed by hand: engines differ in the root element's name (moto answers
            // ListPartsResponse), and only three fields per part are needed.
            for part in text.split("<Part>").skip(1) {
                let field = |tag| xml_field(part, tag).map(str::trim);
                let (Some(n), Some(etag)) = (field("PartNumber").and_then(|n| n.parse().ok()), field("ETag")) else {
                    return Err(S3Error::Other(format!(
                        "list parts {key}: a part without number or ETag"
                    )));
                };
                let size = field("Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                parts.insert(n, (etag.replace("&quot;", "\""), size));
            }
            let truncated = xml_field(&text, "IsTruncated").is_some_and(|t| t.trim() == "true");
            match xml_field(&text, "NextPartNumberMarker").and_then(|m| m.trim().parse::<u16>().ok()) {
                Some(m) if truncated && m > 0 => marker = Some(m),
                _ if truncated => {
                    return Err(S3Error::Other(format!("list parts {key}: truncated without a marker")));
                }
                _ => return Ok(parts),
            }
        }
    }

    /// Completes a multipart upload from exactly these parts, in order (numbers may have gaps).
    /// The answer's ETag is not used: Ceph RGW sends an empty one.
    pub(super) async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u16, String)]) -> S3Result<()> {
        let url = self
            .bucket
            .complete_multipart_upload(Some(&self.credentials), key, upload_id, std::iter::empty())
            .sign(SIGNED_FOR);
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let resp = self.send(Method::POST, url, &[], Some(Bytes::from(xml)), true).await?;
        let resp = Self::check(resp, key).await?;
        // S3 may answer 200 with an error in the body.
        let text = resp.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            return Err(match xml_field(&text, "Code") {
                Some("NoSuchUpload") => S3Error::NotFound,
                _ => S3Error::Other(format!("complete {key}: {}", message(&text))),
            });
        }
        Ok(())
    }

    /// Aborts a multipart upload (a missing one is no error).
    pub(super) async fn abort_multipart(&self, key: &str, upload_id: &str) -> S3Result<()> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(SIGNED_FOR);
        match Self::check(self.send(Method::DELETE, url, &[], None, true).await?, key).await {
            Ok(_) | Err(S3Error::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the bucket (an existing one of ours is no error): for tests and first runs.
    pub(super) async fn create_bucket(&self) -> S3Result<()> {
        let url = self.bucket.create_bucket(&self.credentials).sign(SIGNED_FOR);
        let resp = self.send(Method::PUT, url, &[], None, true).await?;
        if resp.status().is_success() || resp.status() == StatusCode::CONFLICT {
            return Ok(());
        }
        Self::check(resp, "create bucket").await.map(|_| ())
    }
}

/// S3's error message from an XML error body, or the body's start.
fn message(text: &str) -> String {
    match (xml_field(text, "Code"), xml_field(text, "Message")) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => text.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_from_xml() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>";
        assert_eq!(message(body), "NoSuchUpload: gone");
        assert_eq!(xml_field(body, "Code"), Some("NoSuchUpload"));
        assert_eq!(unquoted("\"abc\""), "abc");
    }
}
