//! The tus 1.0.0 vocabulary, in one place: header names, the extensions and checksum algorithms
//! robusto speaks, and the codecs for `Upload-Checksum`, `Upload-Metadata` and the status JSON.
//! Client and server both use this module, so they speak exactly the same dialect.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::md5_engine::Md5State;

/// The protocol version robusto speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// A tus extension (or robusto's own), as named in `Tus-Extension`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// `creation`
    Creation,
    /// `creation-with-upload`
    CreationWithUpload,
    /// `creation-defer-length`
    CreationDeferLength,
    /// `termination`
    Termination,
    /// `expiration`
    Expiration,
    /// `checksum`
    Checksum,
    /// `concatenation`
    Concatenation,
    /// `concatenation-unfinished`
    ConcatenationUnfinished,
    /// `robusto-chunk-prefix`, robusto's own: a PATCH carrying `Upload-Checksum` that is cut
    /// off leaves its bytes held by the server (never counted in `Upload-Offset`), and the
    /// client completes the chunk instead of sending it again. `HEAD` reports the held bytes in
    /// [`header::CHUNK_PREFIX`] with the checksum of the chunk they begin in
    /// [`header::CHUNK_CHECKSUM`]; a PATCH carrying [`header::CHUNK_PREFIX`] sends only the
    /// rest, with the whole chunk's `Upload-Checksum`, and the offset advances only once the
    /// chunk is complete and matches. Other tus clients never see a difference.
    ChunkPrefix,
    /// `robusto-repr-digest`, robusto's own: an upload created with `Upload-Defer-Length: 1`
    /// and `Want-Repr-Digest` gets its whole-file checksum late, as `Repr-Digest` (RFC 9530,
    /// e.g. `md5=:<base64>:`) on the PATCH that sets `Upload-Length`. The server hashes the
    /// upload from its first byte and publishes it only if the digest matches, exactly as for
    /// a `checksum` given in `Upload-Metadata` at creation. Lets a client send an archive while
    /// it is still being written.
    ReprDigest,
}

impl Extension {
    /// Every extension, in the order `robusto serve` announces them.
    pub const ALL: [Extension; 10] = [
        Extension::Creation,
        Extension::CreationWithUpload,
        Extension::CreationDeferLength,
        Extension::Termination,
        Extension::Expiration,
        Extension::Checksum,
        Extension::Concatenation,
        Extension::ConcatenationUnfinished,
        Extension::ChunkPrefix,
        Extension::ReprDigest,
    ];

    /// Its name in `Tus-Extension`.
    pub const fn name(self) -> &'static str {
        match self {
            Extension::Creation => "creation",
            Extension::CreationWithUpload => "creation-with-upload",
            Extension::CreationDeferLength => "creation-defer-length",
            Extension::Termination => "termination",
            Extension::Expiration => "expiration",
            Extension::Checksum => "checksum",
            Extension::Concatenation => "concatenation",
            Extension::ConcatenationUnfinished => "concatenation-unfinished",
            Extension::ChunkPrefix => "robusto-chunk-prefix",
            Extension::ReprDigest => "robusto-repr-digest",
        }
    }

    /// The extension named `name` (case-insensitive), if robusto knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(name.trim()))
    }

    /// A `Tus-Extension` value listing `extensions`.
    pub fn header(extensions: impl IntoIterator<Item = Extension>) -> String {
        extensions
            .into_iter()
            .map(Extension::name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `Upload-Concat` (the concatenation extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concat {
    /// `partial`: an upload that becomes part of a final one.
    Partial,
    /// `final;<url> <url>…`: the concatenation of these partial uploads, in order (the URLs as
    /// sent, absolute or paths).
    Final(Vec<String>),
}

impl Concat {
    /// Parses an `Upload-Concat` value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "partial" {
            return Ok(Concat::Partial);
        }
        match value.strip_prefix("final;") {
            Some(list) => Ok(Concat::Final(list.split_whitespace().map(str::to_string).collect())),
            None => Err("Upload-Concat must be 'partial' or 'final;<urls>'".into()),
        }
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        match self {
            Concat::Partial => "partial".into(),
            Concat::Final(urls) => format!("final;{}", urls.join(" ")),
        }
    }
}

/// Kept as its header value (in an upload's info).
impl Serialize for Concat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_header())
    }
}

impl<'de> Deserialize<'de> for Concat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        Concat::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// The checksum algorithms `robusto serve` announces in `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "md5,sha1,sha256";
/// Content type of a PATCH body.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Status code for a checksum mismatch (tus checksum extension).
pub const STATUS_CHECKSUM_MISMATCH: u16 = 460;
/// Chunk size assumed for status reports when an upload carries no `chunk-size` metadata.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

/// Header names, lowercase (as `http::HeaderName::from_static` wants them).
pub mod header {
    /// `Tus-Resumable`
    pub const TUS_RESUMABLE: &str = "tus-resumable";
    /// `Tus-Version`
    pub const TUS_VERSION: &str = "tus-version";
    /// `Tus-Extension`
    pub const TUS_EXTENSION: &str = "tus-extension";
    /// `Tus-Max-Size`
    pub const TUS_MAX_SIZE: &str = "tus-max-size";
    /// `Tus-Checksum-Algorithm`
    pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
    /// `Upload-Offset`
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    /// `Upload-Length`
    pub const UPLOAD_LENGTH: &str = "upload-length";
    /// `Upload-Defer-Length`
    pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
    /// `Upload-Metadata`
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    /// `Upload-Checksum`
    pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
    /// `Upload-Expires`
    pub const UPLOAD_EXPIRES: &str = "upload-expires";
    /// `Upload-Concat`
    pub const UPLOAD_CONCAT: &str = "upload-concat";
    /// `X-HTTP-Method-Override`
    pub const METHOD_OVERRIDE: &str = "x-http-method-override";
    /// `Robusto-Chunk-Prefix` ([`super::Extension::ChunkPrefix`]): in a HEAD answer, the bytes of the
    /// chunk in progress the server holds past `Upload-Offset`; in a PATCH, the held bytes the
    /// body continues.
    pub const CHUNK_PREFIX: &str = "robusto-chunk-prefix";
    /// `Robusto-Chunk-Checksum` (HEAD answer): the `Upload-Checksum` of the chunk the held
    /// bytes begin.
    pub const CHUNK_CHECKSUM: &str = "robusto-chunk-checksum";
    /// `Repr-Digest` (RFC 9530): the whole upload's digest ([`super::Extension::ReprDigest`]).
    pub const REPR_DIGEST: &str = "repr-digest";
    /// `Want-Repr-Digest` (RFC 9530): at creation, the digest algorithms the client will send
    /// `Repr-Digest` in, by preference.
    pub const WANT_REPR_DIGEST: &str = "want-repr-digest";
}

/// Keys of `Upload-Metadata` that robusto gives meaning to.
pub mod meta {
    /// The file's name, used to publish a completed upload.
    pub const FILENAME: &str = "filename";
    /// The whole file's checksum, `md5 <base64>` (same form as `Upload-Checksum`).
    pub const CHECKSUM: &str = "checksum";
    /// The sender's chunk size in bytes, used by status reports.
    pub const CHUNK_SIZE: &str = "chunk-size";
}

/// A header value that does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// `Upload-Checksum` names an algorithm robusto does not support.
    #[error("unsupported checksum algorithm '{0}' (supported: md5, sha1, sha256)")]
    UnsupportedAlgorithm(String),
    /// A header is malformed.
    #[error("malformed {header}: {reason}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn malformed(header: &'static str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        header,
        reason: reason.into(),
    }
}

/// A checksum algorithm of the tus checksum extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgorithm {
    /// MD5, 16 bytes: what robusto uses for chunks and whole files.
    Md5,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
}

impl ChecksumAlgorithm {
    /// Parses an algorithm name as it appears on the wire.
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "md5" => Ok(Self::Md5),
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            other => Err(ProtocolError::UnsupportedAlgorithm(other.to_string())),
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// A streaming hasher for this algorithm.
    pub fn hasher(self) -> ChecksumHasher {
        use sha2::Digest as _;
        match self {
            Self::Md5 => ChecksumHasher::Md5(Md5State::new()),
            Self::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
            Self::Sha256 => ChecksumHasher::Sha256(sha2::Sha256::new()),
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running digest of one of the [`ChecksumAlgorithm`]s.
#[derive(Clone)]
pub enum ChecksumHasher {
    /// MD5 ([`crate::md5_engine`]).
    Md5(Md5State),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl ChecksumHasher {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            Self::Md5(h) => h.update(bytes),
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    /// Feeds the same bytes to `self` and `other`: two MD5s in one interleaved pass
    /// ([`crate::md5_engine::update_pair`]), any other pair one after the other.
    pub fn update_both(&mut self, other: &mut ChecksumHasher, bytes: &[u8]) {
        match (self, other) {
            (Self::Md5(a), Self::Md5(b)) => crate::md5_engine::update_pair(a, b, bytes),
            (a, b) => {
                a.update(bytes);
                b.update(bytes);
            }
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Self::Md5(h) => h.digest().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// The state of an MD5 (base64 of md-5 0.11's serialised state: the digest state, the
    /// block count and the partial block; [`Md5State::serialize`]), to resume it elsewhere or
    /// later; `None` for the others.
    pub fn saved_state(&self) -> Option<String> {
        match self {
            Self::Md5(h) => Some(BASE64.encode(h.serialize())),
            _ => None,
        }
    }

    /// An MD5 resumed from [`ChecksumHasher::saved_state`] (of this version or of one that
    /// hashed with md-5 0.11: the format is the same).
    pub fn resume_md5(state: &str) -> Result<Self, String> {
        let raw = BASE64.decode(state).map_err(|e| format!("digest state: {e}"))?;
        Md5State::deserialize(&raw)
            .map(Self::Md5)
            .map_err(|e| format!("digest state: {e}"))
    }
}

/// A checksum as carried by `Upload-Checksum` (and robusto's `checksum` metadata):
/// `<algorithm> <base64 digest>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// The raw digest bytes.
    pub digest: Vec<u8>,
}

impl Checksum {
    /// An MD5 checksum.
    pub fn md5(digest: crate::fingerprint::Md5) -> Self {
        Checksum {
            algorithm: ChecksumAlgorithm::Md5,
            digest: digest.0.to_vec(),
        }
    }

    /// Parses `md5 XUFAKrxLKna5cZ2REBfFkg==`.
    pub fn parse(value: &str) -> Result<Self, ProtocolError> {
        const H: &str = "Upload-Checksum";
        let value = value.trim();
        let (alg, b64) = value
            .split_once(' ')
            .ok_or_else(|| malformed(H, "expected '<algorithm> <base64>'"))?;
        let algorithm = ChecksumAlgorithm::parse(alg)?;
        Self::decoded(H, algorithm, b64.trim())
    }

    /// A digest in `algorithm` from its base64 text in `header`, checked for its length.
    fn decoded(header: &'static str, algorithm: ChecksumAlgorithm, b64: &str) -> Result<Self, ProtocolError> {
        let digest = BASE64
            .decode(b64)
            .map_err(|_| malformed(header, "the digest is not base64"))?;
        if digest.len() != algorithm.digest_len() {
            return Err(malformed(
                header,
                format!(
                    "a {algorithm} digest has {} bytes, got {}",
                    algorithm.digest_len(),
                    digest.len()
                ),
            ));
        }
        Ok(Checksum { algorithm, digest })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!("{} {}", self.algorithm.name(), BASE64.encode(&self.digest))
    }

    /// The `Repr-Digest` value (RFC 9530): `md5=:<base64>:`.
    pub fn to_repr_digest(&self) -> String {
        format!("{}=:{}:", repr_name(self.algorithm), BASE64.encode(&self.digest))
    }

    /// The first digest of a `Repr-Digest` value in an algorithm robusto knows (RFC 9530 names:
    /// `md5`, `sha`, `sha-256`); members in other algorithms are skipped.
    pub fn parse_repr_digest(value: &str) -> Result<Self, ProtocolError> {
        const H: &str = "Repr-Digest";
        for member in value.split(',') {
            let (key, item) = member
                .trim()
                .split_once('=')
                .ok_or_else(|| malformed(H, "expected '<algorithm>=:<base64>:'"))?;
            let Some(algorithm) = from_repr_name(key.trim()) else {
                continue;
            };
            let b64 = item
                .trim()
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix(':'))
                .ok_or_else(|| malformed(H, "a digest is a byte sequence, ':<base64>:'"))?;
            return Self::decoded(H, algorithm, b64);
        }
        Err(ProtocolError::UnsupportedAlgorithm(value.trim().to_string()))
    }
}

/// The algorithm's name in the RFC 9530 registry.
fn repr_name(algorithm: ChecksumAlgorithm) -> &'static str {
    match algorithm {
        ChecksumAlgorithm::Md5 => "md5",
        ChecksumAlgorithm::Sha1 => "sha",
        ChecksumAlgorithm::Sha256 => "sha-256",
    }
}

fn from_repr_name(name: &str) -> Option<ChecksumAlgorithm> {
    [
        ChecksumAlgorithm::Md5,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ]
    .into_iter()
    .find(|a| repr_name(*a).eq_ignore_ascii_case(name))
}

/// The algorithm a `Want-Repr-Digest` value prefers among those robusto knows (the highest
/// weight above 0; RFC 9530 weights are integers 0-10), if any.
pub fn wanted_repr_digest(value: &str) -> Option<ChecksumAlgorithm> {
    value
        .split(',')
        .filter_map(|member| {
            let (key, weight) = member.trim().split_once('=')?;
            let weight: u8 = weight.trim().parse().ok()?;
            Some((from_repr_name(key.trim())?, weight))
        })
        .filter(|(_, w)| *w > 0)
        .max_by_key(|(_, w)| *w)
        .map(|(a, _)| a)
}

/// The `Want-Repr-Digest` value asking for `algorithm`.
pub fn want_repr_digest(algorithm: ChecksumAlgorithm) -> String {
    format!("{}=10", repr_name(algorithm))
}

/// The decoded `Upload-Metadata` header: keys to (optional) byte values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata(pub BTreeMap<String, Option<Vec<u8>>>);

impl Metadata {
    /// Parses `key base64,key2 base64,key3`.
    pub fn parse(value: &str) -> Result<Self, ProtocolError> {
        const H: &str = "Upload-Metadata";
        let mut map = BTreeMap::new();
        for pair in value.split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let mut parts = pair.split(' ').filter(|s| !s.is_empty());
            let key = parts.next().ok_or_else(|| malformed(H, "empty key"))?;
            if !key.is_ascii() {
                return Err(malformed(H, format!("key '{key}' is not ASCII")));
            }
            let val = match parts.next() {
                Some(b64) => Some(
                    BASE64
                        .decode(b64)
                        .map_err(|_| malformed(H, format!("value of '{key}' is not base64")))?,
                ),
                None => None,
            };
            if parts.next().is_some() {
                return Err(malformed(H, format!("'{key}' has more than one value")));
            }
            if map.insert(key.to_string(), val).is_some() {
                return Err(malformed(H, format!("key '{key}' appears twice")));
            }
        }
        Ok(Metadata(map))
    }

    /// The header value (keys in sorted order).
    pub fn to_header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k} {}", BASE64.encode(v)),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets a text value.
    pub fn insert(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_string(), Some(value.as_bytes().to_vec()));
    }

    /// A value as text, if present and UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_deref().and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The state of an upload as the status endpoint reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, no byte received.
    New,
    /// Some bytes received.
    Partial,
    /// All bytes received and verified; published.
    Complete,
    /// Failed verification (or another fatal error); not published.
    Error,
}

/// `GET {upload-url}/status` body: `{"status": "partial", "value": "0,1,2"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The state.
    pub status: Status,
    /// `""` (new), the comma-separated chunk numbers received (partial), the file's URL
    /// (complete), or the error message (error).
    pub value: String,
}

/// One completed upload in the `GET /files` listing (robusto's API, not tus).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The upload id.
    pub id: String,
    /// Its URL path, `/files/{id}`.
    pub url: String,
    /// Its name: the `filename` metadata, else the published name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of the whole upload (hex), when the server computed it.
    pub md5: Option<String>,
    /// When it completed, seconds since the Unix epoch.
    pub completed: Option<u64>,
    /// The same instant in nanoseconds since the Unix epoch, when the server kept it (servers
    /// before it was kept send `completed` only): orders uploads completed within one second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ns: Option<u64>,
    /// The same as RFC 3339.
    pub completed_at: Option<String>,
    /// Its metadata, values as text.
    pub metadata: BTreeMap<String, String>,
}

/// The comma-separated numbers of the whole chunks received in `offset` bytes (a final short
/// chunk counts once the upload is complete, which the caller reports as `complete`).
pub fn chunks_received(offset: u64, chunk_size: u64) -> String {
    let n = offset / chunk_size.max(1);
    (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn repr_digests_follow_rfc_9530() {
        let c = super::Checksum::md5(crate::fingerprint::Md5::of(b"abc"));
        let v = c.to_repr_digest();
        assert_eq!(v, "md5=:kAFQmDzST7DWlj99KOF/cg==:");
        assert_eq!(super::Checksum::parse_repr_digest(&v).unwrap(), c);
        let both = format!("unixsum=:AAA=:, {v}");
        assert_eq!(
            super::Checksum::parse_repr_digest(&both).unwrap(),
            c,
            "unknown members are skipped"
        );
        assert!(super::Checksum::parse_repr_digest("md5=kAFQ").is_err());
        assert!(
            super::Checksum::parse_repr_digest("md5=:AAAA:").is_err(),
            "wrong length"
        );
        assert!(super::Checksum::parse_repr_digest("crc32c=:AAAAAA==:").is_err());
        assert_eq!(
            super::wanted_repr_digest("sha-256=3, md5=9"),
            Some(super::ChecksumAlgorithm::Md5)
        );
        assert_eq!(super::wanted_repr_digest("md5=0"), None);
        assert_eq!(super::wanted_repr_digest("crc32c=9"), None);
        assert_eq!(super::want_repr_digest(super::ChecksumAlgorithm::Md5), "md5=10");
    }

    use super::*;
    use crate::fingerprint::Md5;

    #[test]
    fn checksum_round_trip_and_errors() {
        let c = Checksum::md5(Md5::of(b"hello"));
        assert_eq!(c.to_header(), "md5 XUFAKrxLKna5cZ2REBfFkg==");
        assert_eq!(Checksum::parse("md5 XUFAKrxLKna5cZ2REBfFkg==").unwrap(), c);
        assert_eq!(
            Checksum::parse("crc32 AAAA"),
            Err(ProtocolError::UnsupportedAlgorithm("crc32".into()))
        );
        assert!(Checksum::parse("md5").is_err());
        assert!(Checksum::parse("md5 !!!").is_err());
        assert!(
            Checksum::parse("sha1 XUFAKrxLKna5cZ2REBfFkg==").is_err(),
            "wrong length for sha1"
        );
    }

    #[test]
    fn metadata_round_trip_and_errors() {
        let m = Metadata::parse("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
        assert_eq!(m.get_str("filename"), Some("world_domination_plan.pdf"));
        assert_eq!(m.0.get("is_confidential"), Some(&None));
        assert_eq!(Metadata::parse(&m.to_header()).unwrap(), m);
        assert!(Metadata::parse("a !!!").is_err());
        assert!(Metadata::parse("a YQ==,a YQ==").is_err());
        assert!(Metadata::parse("a YQ== YQ==").is_err());
        assert_eq!(Metadata::parse("").unwrap(), Metadata::default());
    }

    #[test]
    fn status_json_shape() {
        let s = StatusReport {
            status: Status::Partial,
            value: chunks_received(5 * 8 + 3, 8),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"status":"partial","value":"0,1,2,3,4"}"#
        );
        assert_eq!(chunks_received(3, 8), "");
    }

    #[test]
    fn hashers_match_known_digests() {
        let mut h = ChecksumAlgorithm::Sha256.hasher();
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = ChecksumAlgorithm::Sha1.hasher();
        h.update(b"abc");
        assert_eq!(hex::encode(h.finish()), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn extensions_and_concat_round_trip() {
        for e in Extension::ALL {
            assert_eq!(Extension::parse(e.name()), Some(e));
        }
        assert_eq!(Extension::parse(" Checksum "), Some(Extension::Checksum));
        assert_eq!(Extension::parse("creation-with-everything"), None);
        assert_eq!(Concat::parse("partial"), Ok(Concat::Partial));
        let f = Concat::parse("final;/files/a http://h/files/b").unwrap();
        assert_eq!(f, Concat::Final(vec!["/files/a".into(), "http://h/files/b".into()]));
        assert_eq!(f.to_header(), "final;/files/a http://h/files/b");
        assert!(Concat::parse("final").is_err() && Concat::parse("whole").is_err());
    }
}
