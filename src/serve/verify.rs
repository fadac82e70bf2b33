//! Checks of a tus request against an upload (protocol version, offsets, lengths, headers), and
//! the streaming digests: a chunk against its `Upload-Checksum`, a whole file against its
//! `checksum` metadata.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use futures_util::{StreamExt as _, TryStreamExt as _};

use super::error::ServeError;
use super::store::{Append, BodyError, BodyStream, ByteStream, StoreError};
use crate::protocol::{self, Checksum, ChecksumAlgorithm, ChecksumHasher, Metadata, header};

/// Longest `Upload-Metadata` value accepted.
pub const MAX_METADATA_LEN: usize = 16 << 10;
/// Most partial uploads one final upload may name.
pub const MAX_CONCAT_PARTS: usize = 10_000;

/// The text value of a header, if present; a value that is not visible ASCII is a bad header,
/// and so is a header sent twice with different values (which one would count is a guess).
pub fn header_str<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ServeError> {
    let mut found: Option<&str> = None;
    for v in headers.get_all(name) {
        let text = v
            .to_str()
            .map(str::trim)
            .map_err(|_| ServeError::BadRequest(format!("{name} is not ASCII text")))?;
        match found {
            Some(first) if first != text => {
                return Err(ServeError::BadRequest(format!(
                    "{name} is sent twice with different values ('{first}', '{text}')"
                )));
            }
            _ => found = Some(text),
        }
    }
    Ok(found)
}

/// A request body must be sent as is or `chunked`: another transfer coding (`gzip, chunked`)
/// would be stored as its coded bytes (501). (A body framed both by `Content-Length` and by
/// `Transfer-Encoding` never gets here with both: hyper lets the coding win, as RFC 9112 §6.3
/// says, and drops the length.)
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ServeError> {
    for v in headers.get_all(axum::http::header::TRANSFER_ENCODING) {
        let text = v.to_str().unwrap_or("?");
        let codings: Vec<&str> = text.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        if codings.iter().any(|c| !c.eq_ignore_ascii_case("chunked")) {
            return Err(ServeError::NotImplemented(format!(
                "Transfer-Encoding '{text}' is not supported: send the body as is or chunked"
            )));
        }
    }
    Ok(())
}

/// A header that must be a non-negative integer (`Upload-Offset`, `Upload-Length`).
pub fn header_u64(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, ServeError> {
    let Some(s) = header_str(headers, name)? else {
        return Ok(None);
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ServeError::BadRequest(format!("{name} must be a non-negative integer")));
    }
    s.parse()
        .map(Some)
        .map_err(|_| ServeError::BadRequest(format!("{name} is too large")))
}

/// `Tus-Resumable` must be present and name the version we speak (else 412, not processed).
pub fn check_version(headers: &HeaderMap) -> Result<(), ServeError> {
    match headers.get(header::TUS_RESUMABLE).map(|v| v.to_str()) {
        Some(Ok(v)) if v.trim() == protocol::TUS_VERSION => Ok(()),
        _ => Err(ServeError::VersionUnsupported),
    }
}

/// A PATCH (or a POST with data) must carry `Content-Type: application/offset+octet-stream`.
pub fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(protocol::OFFSET_OCTET_STREAM))
}

/// `Upload-Checksum`, parsed; an unknown algorithm or a malformed value is a 400.
pub fn upload_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ServeError> {
    header_str(headers, header::UPLOAD_CHECKSUM)?
        .map(|v| Checksum::parse(v).map_err(|e| ServeError::BadRequest(e.to_string())))
        .transpose()
}

/// `Upload-Metadata` as sent, once it is known to be well-formed, bounded, and its `checksum`
/// (if any) parses.
pub fn upload_metadata(headers: &HeaderMap) -> Result<Option<String>, ServeError> {
    let Some(raw) = header_str(headers, header::UPLOAD_METADATA)? else {
        return Ok(None);
    };
    if raw.len() > MAX_METADATA_LEN {
        return Err(ServeError::BadRequest(format!(
            "Upload-Metadata is longer than {MAX_METADATA_LEN} bytes"
        )));
    }
    let meta = Metadata::parse(raw).map_err(|e| ServeError::BadRequest(e.to_string()))?;
    if let Some(v) = meta.0.get(protocol::meta::CHECKSUM) {
        whole_file_checksum(v.as_deref())?;
    }
    Ok(Some(raw.to_string()))
}

/// The `checksum` metadata value (`md5 <base64>`), parsed.
pub fn whole_file_checksum(value: Option<&[u8]>) -> Result<Option<Checksum>, ServeError> {
    let Some(v) = value else { return Ok(None) };
    let text =
        std::str::from_utf8(v).map_err(|_| ServeError::BadRequest("the checksum metadata is not text".to_string()))?;
    Checksum::parse(text)
        .map(Some)
        .map_err(|e| ServeError::BadRequest(format!("checksum metadata: {e}")))
}

/// The whole-file checksum an upload must match before it is published: its `checksum`
/// metadata, else the `Repr-Digest` it was sent late.
pub fn expected_whole_of(info: &crate::serve::store::UploadInfo) -> Option<Checksum> {
    expected_whole(info.metadata.as_deref()).or_else(|| Checksum::parse(info.repr_digest.as_deref()?).ok())
}

/// The algorithm an upload is hashed whole in as it arrives: that of its expected checksum, or
/// the one its late checksum will come in.
pub fn whole_algorithm(info: &crate::serve::store::UploadInfo) -> Option<protocol::ChecksumAlgorithm> {
    expected_whole_of(info).map(|c| c.algorithm).or(info.digest_wanted)
}

/// The whole-file checksum an upload's raw `Upload-Metadata` asks for, if any.
pub fn expected_whole(raw_metadata: Option<&str>) -> Option<Checksum> {
    let meta = Metadata::parse(raw_metadata?).ok()?;
    whole_file_checksum(meta.0.get(protocol::meta::CHECKSUM)?.as_deref())
        .ok()
        .flatten()
}

/// How long a body that was told to give up goes on taking bytes that keep arriving (what a
/// connection that broke had already delivered), at most.
const DRAIN_FOR: Duration = Duration::from_secs(2);
/// A body being given up stops at the first pause this long.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// Streams a request body, giving up when no byte arrives for `read_timeout` or when `cancel`
/// fires (a newer request for the same upload took over, or the server stops). Once `cancel`
/// fires the body still takes what is already on its way, for at most [`DRAIN_FOR`] and until
/// the first pause: when a client reconnects after a cut, the bytes its broken connection
/// delivered are kept (a checked chunk's are held) rather than left unread.
///
/// A body must also keep up `min_rate` bytes per second, measured over windows of
/// `read_timeout` (0 for no minimum): one trickling a byte now and then is given up like a
/// silent one, at the end of the first window it falls short in.
pub fn guarded_body(body: Body, read_timeout: Duration, min_rate: u64, lease: &super::live::Lease) -> BodyStream {
    let window = read_timeout;
    let mut window_start = tokio::time::Instant::now();
    let mut window_bytes = 0u64;
    let mut done = false;
    raw_guarded_body(body, read_timeout, lease)
        .map(move |item| {
            if let (Ok(bytes), true) = (&item, min_rate > 0) {
                window_bytes += bytes.len() as u64;
                let elapsed = window_start.elapsed();
                if elapsed >= window {
                    let wanted = min_rate.saturating_mul(elapsed.as_secs().max(1));
                    if window_bytes < wanted {
                        return Err(BodyError::TimedOut(format!(
                            "the body came at {} bytes/s, under the minimum of {min_rate} bytes/s",
                            window_bytes / elapsed.as_secs().max(1)
                        )));
                    }
                    window_start = tokio::time::Instant::now();
                    window_bytes = 0;
                }
            }
            item
        })
        .take_while(move |item| {
            let go = !done;
            done |= item.is_err();
            futures_util::future::ready(go)
        })
        .boxed()
}

fn raw_guarded_body(body: Body, read_timeout: Duration, lease: &super::live::Lease) -> BodyStream {
    let (cancel, progress) = (lease.cancel.clone(), std::sync::Arc::clone(&lease.progress));
    let stream = body.into_data_stream().inspect(move |frame| {
        if frame.as_ref().is_ok_and(|b| !b.is_empty()) {
            progress.touch();
        }
    });
    let start: (_, _, Option<tokio::time::Instant>) = (stream, cancel, None);
    futures_util::stream::unfold(Some(start), move |state| async move {
        let (mut stream, cancel, draining) = state?;
        let mut draining = draining;
        if draining.is_none() {
            tokio::select! {
                _ = cancel.cancelled() => draining = Some(tokio::time::Instant::now() + DRAIN_FOR),
                r = tokio::time::timeout(read_timeout, stream.next()) => {
                    let next = match r {
                        Err(_) => Err(BodyError::TimedOut(format!("no data for {read_timeout:?}"))),
                        Ok(None) => return None,
                        Ok(Some(Ok(bytes))) => Ok(bytes),
                        Ok(Some(Err(e))) => Err(body_error(&e)),
                    };
                    return match next {
                        Ok(bytes) => Some((Ok(bytes), Some((stream, cancel, None)))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
            }
        }
        let deadline = draining.unwrap_or_else(tokio::time::Instant::now);
        let wait = DRAIN_IDLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => Err(BodyError::Superseded),
            Ok(None) => return None,
            Ok(Some(Ok(bytes))) => Ok(bytes),
            Ok(Some(Err(e))) => Err(body_error(&e)),
        };
        match next {
            Ok(bytes) => Some((Ok(bytes), Some((stream, cancel, draining)))),
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// What a failed body read means: broken framing (the HTTP layer found the body malformed:
/// an unparsable or overflowing chunk size) refuses the body; anything else is a cut.
fn body_error(e: &axum::Error) -> BodyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        {
            return BodyError::Malformed(crate::error_chain(e));
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_parse()
        {
            return BodyError::Malformed(crate::error_chain(e));
        }
        source = err.source();
    }
    BodyError::Interrupted(e.to_string())
}

/// Hashes a chunk while it is stored and decides, at its end, whether it may be committed.
pub struct ChunkVerifier {
    expected: Option<Checksum>,
    hasher: Option<ChecksumHasher>,
    received: u64,
    max_len: u64,
    /// The upload's whole-file digest, when it rides along ([`ChunkVerifier::carry`]), with
    /// the bytes fed to it.
    whole: Option<Box<(ChecksumHasher, u64)>>,
}

/// A chunk that may be committed.
pub struct Verdict {
    /// Bytes to commit.
    pub received: u64,
    /// Why the body ended early, if it did (only without a checksum).
    pub interrupted: Option<BodyError>,
}

impl ChunkVerifier {
    /// A verifier for `append`. One that continues a held prefix starts from the prefix's
    /// digest state when the append carries it (the prefix then counts as received); otherwise
    /// the store feeds the held bytes first ([`ChunkVerifier::needs_prefix`]).
    pub fn new(append: &Append) -> Self {
        let kept = append.continues.as_ref().and_then(|c| Some((c.len, c.hasher.clone()?)));
        let (received, hasher) = match kept {
            Some((len, hasher)) => (len, Some(hasher)),
            None => (0, append.checksum.as_ref().map(|c| c.algorithm.hasher())),
        };
        ChunkVerifier {
            hasher,
            expected: append.checksum.clone(),
            received,
            max_len: append.max_len,
            whole: None,
        }
    }

    /// Takes the upload's whole-file digest along: every byte fed from now on goes into the
    /// chunk's digest and `whole` in one pass ([`ChecksumHasher::update_both`]), instead of
    /// a second pass over the same bytes on another thread. Only a chunk that is checked and
    /// has no bytes yet (no continued prefix) takes it; otherwise `whole` comes back.
    pub fn carry(&mut self, whole: ChecksumHasher) -> Result<(), ChecksumHasher> {
        if self.hasher.is_none() || self.received > 0 || self.whole.is_some() {
            return Err(whole);
        }
        self.whole = Some(Box::new((whole, 0)));
        Ok(())
    }

    /// The whole-file digest taken along, and how many bytes it was fed here.
    pub fn take_whole(&mut self) -> Option<(ChecksumHasher, u64)> {
        self.whole.take().map(|w| *w)
    }

    /// How many held bytes the store must feed before the body: the prefix of a continued
    /// chunk whose digest state was not kept.
    pub fn needs_prefix(&self, append: &Append) -> u64 {
        append.prefix_len().saturating_sub(self.received)
    }

    /// Accepts the next bytes, or refuses them when they overrun the upload.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        let n = bytes.len() as u64;
        if self.received.saturating_add(n) > self.max_len {
            return Err(BodyError::TooLong);
        }
        match (&mut self.hasher, &mut self.whole) {
            (Some(h), Some(whole)) => {
                let (whole, fed) = &mut **whole;
                h.update_both(whole, bytes);
                *fed += n;
            }
            (Some(h), None) => h.update(bytes),
            (None, _) => {}
        }
        self.received += n;
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The verdict once the body ended (`ended` says why, if early). A checked chunk cut off
    /// after some bytes is held when `keep_prefix` is set; otherwise it is refused whole.
    pub fn finish(self, ended: Option<BodyError>, keep_prefix: bool) -> Result<Judged, StoreError> {
        let ChunkVerifier {
            expected,
            hasher,
            received,
            ..
        } = self;
        match (ended, expected, hasher) {
            (Some(BodyError::TooLong), _, _) => Err(BodyError::TooLong.into()),
            (Some(BodyError::Malformed(m)), _, _) => Err(BodyError::Malformed(m).into()),
            (Some(cut), Some(_), Some(hasher)) if keep_prefix && received > 0 => Ok(Judged::Hold {
                len: received,
                hasher,
                cut,
            }),
            (Some(cut), Some(_), _) => Err(cut.into()),
            (ended, Some(expected), Some(hasher)) => {
                let actual = hasher.finish();
                if actual != expected.digest {
                    let actual = Checksum {
                        algorithm: expected.algorithm,
                        digest: actual,
                    };
                    return Err(StoreError::ChecksumMismatch {
                        algorithm: expected.algorithm.name(),
                        expected: expected.to_header(),
                        actual: actual.to_header(),
                    });
                }
                Ok(Judged::Commit(Verdict {
                    received,
                    interrupted: ended,
                }))
            }
            (ended, _, _) => Ok(Judged::Commit(Verdict {
                received,
                interrupted: ended,
            })),
        }
    }
}

/// What a store does with an append's bytes once the body ended.
pub enum Judged {
    /// Commit them: the offset advances by [`Verdict::received`].
    Commit(Verdict),
    /// Hold them (a checked chunk cut off): `len` bytes past the offset, whose digest state
    /// is `hasher`, until a request completes the chunk.
    Hold {
        /// Bytes to hold (a continued prefix included).
        len: u64,
        /// The digest of those bytes so far.
        hasher: ChecksumHasher,
        /// Why the body ended.
        cut: BodyError,
    },
}

/// The digest of everything `stream` yields.
pub async fn digest_stream(mut stream: ByteStream, algorithm: ChecksumAlgorithm) -> std::io::Result<Vec<u8>> {
    let mut h = algorithm.hasher();
    while let Some(bytes) = stream.try_next().await? {
        h.update(&bytes);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Md5;
    use crate::serve::store::Continuation;
    use axum::http::HeaderValue;

    fn append(checksum: Option<Checksum>, max_len: u64) -> Append {
        Append {
            offset: 0,
            max_len,
            checksum,
            running: None,
            expires: None,
            yielding: false,
            complete_at: None,
            keep_prefix: true,
            continues: None,
            saved_digest: None,
        }
    }

    #[test]
    fn integers_are_strict() {
        let mut h = HeaderMap::new();
        h.insert(header::UPLOAD_OFFSET, HeaderValue::from_static("12"));
        assert_eq!(header_u64(&h, header::UPLOAD_OFFSET).unwrap(), Some(12));
        for bad in ["-1", "1.5", "", "0x10", "99999999999999999999999"] {
            h.insert(header::UPLOAD_OFFSET, HeaderValue::from_static(bad));
            assert!(header_u64(&h, header::UPLOAD_OFFSET).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_must_be_ours() {
        let mut h = HeaderMap::new();
        assert!(check_version(&h).is_err());
        h.insert(header::TUS_RESUMABLE, HeaderValue::from_static("0.2.2"));
        assert!(check_version(&h).is_err());
        h.insert(header::TUS_RESUMABLE, HeaderValue::from_static("1.0.0"));
        assert!(check_version(&h).is_ok());
    }

    #[test]
    fn verifier_commits_only_matching_whole_chunks() {
        let committed = |j: Judged| match j {
            Judged::Commit(v) => v,
            Judged::Hold { .. } => panic!("held, not committed"),
        };
        let good = Checksum::md5(Md5::of(b"hello"));
        let mut v = ChunkVerifier::new(&append(Some(good.clone()), 10));
        v.feed(b"hel").unwrap();
        v.feed(b"lo").unwrap();
        assert_eq!(committed(v.finish(None, true).unwrap()).received, 5);

        let mut v = ChunkVerifier::new(&append(Some(good.clone()), 10));
        v.feed(b"help!").unwrap();
        assert!(matches!(v.finish(None, true), Err(StoreError::ChecksumMismatch { .. })));

        let mut v = ChunkVerifier::new(&append(Some(good.clone()), 10));
        v.feed(b"hel").unwrap();
        assert!(v.finish(Some(BodyError::Interrupted("cut".into())), false).is_err());

        let mut v = ChunkVerifier::new(&append(None, 10));
        v.feed(b"hel").unwrap();
        let verdict = committed(v.finish(Some(BodyError::Interrupted("cut".into())), true).unwrap());
        assert_eq!(verdict.received, 3);
        assert!(verdict.interrupted.is_some());

        let mut v = ChunkVerifier::new(&append(None, 4));
        assert_eq!(v.feed(b"hello"), Err(BodyError::TooLong));
    }

    #[test]
    fn a_cut_checked_chunk_is_held_and_completed_by_its_rest() {
        let good = Checksum::md5(Md5::of(b"hello"));
        let mut v = ChunkVerifier::new(&append(Some(good.clone()), 10));
        v.feed(b"hel").unwrap();
        let Ok(Judged::Hold { len, hasher, .. }) = v.finish(Some(BodyError::Interrupted("cut".into())), true) else {
            panic!("a cut checked chunk is held");
        };
        assert_eq!(len, 3);
        let nothing = ChunkVerifier::new(&append(Some(good.clone()), 10));
        assert!(
            nothing
                .finish(Some(BodyError::Interrupted("cut".into())), true)
                .is_err(),
            "nothing arrived: nothing is held"
        );

        // The rest, from the kept digest state: the prefix counts as received.
        let mut rest = append(Some(good.clone()), 10);
        rest.continues = Some(Continuation {
            len,
            hasher: Some(hasher),
        });
        let mut v = ChunkVerifier::new(&rest);
        assert_eq!(v.needs_prefix(&rest), 0);
        v.feed(b"lo").unwrap();
        let Ok(Judged::Commit(verdict)) = v.finish(None, true) else {
            panic!("the completed chunk commits");
        };
        assert_eq!(verdict.received, 5);

        // Without the digest state the held bytes are fed again first; a wrong one is caught.
        rest.continues = Some(Continuation { len: 3, hasher: None });
        let mut v = ChunkVerifier::new(&rest);
        assert_eq!(v.needs_prefix(&rest), 3);
        v.feed(b"hal").unwrap();
        v.feed(b"lo").unwrap();
        assert!(matches!(v.finish(None, true), Err(StoreError::ChecksumMismatch { .. })));

        // The held bytes count against the upload's remaining length.
        let mut long = append(Some(good), 4);
        long.continues = Some(Continuation {
            len: 3,
            hasher: Some(ChecksumAlgorithm::Md5.hasher()),
        });
        let mut v = ChunkVerifier::new(&long);
        assert_eq!(v.feed(b"lo"), Err(BodyError::TooLong));
    }
}
