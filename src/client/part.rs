//! One part of a send job (the whole file, or one partial upload of a parallel send): create
//! its upload, then one PATCH per chunk until the server holds all of it, resyncing with HEAD
//! after every fault. A cut costs only the bytes in flight: a server that holds cut chunks
//! (`robusto-chunk-prefix`) gets the rest of the chunk; one that checks chunks but cannot hold
//! them gets the rest in smaller checked pieces.

use super::*;

impl Job<'_> {
    /// Creates the upload of part `index` (with its first chunk when it is the only one and the
    /// server offers creation-with-upload); the caller records its URL.
    pub(super) async fn create(
        &self,
        index: usize,
        part: &Part,
        retry: &mut Retrier<'_>,
    ) -> Result<(Url, u64), SendError> {
        // Sent while packing, the length is known only at the end: until then the upload is
        // created with a deferred length, its checksum to come with the last chunk.
        let len = self.part_len(part);
        let with_upload = !self.multi
            && len.is_some_and(|l| l > 0 && l <= self.chunk_size())
            && self.caps.has(crate::protocol::Extension::CreationWithUpload)
            && !self.past_deadline();
        loop {
            let body = match len.filter(|_| with_upload) {
                Some(len) => {
                    let data = self.read(0, len).await?;
                    let sum = match self.chunk_now(0) {
                        Some(c) => self.checksum_for(&c, 0, &data).await,
                        None => None,
                    };
                    if let (Some(c), Some(sent)) = (self.chunk_now(0), &self.following) {
                        sent.lock().await.record(0, c.md5)?;
                    }
                    Some((data, sum))
                }
                None => None,
            };
            let creation = Creation {
                length: len,
                metadata: self.metadata(!self.multi),
                concat: self.multi.then(|| crate::protocol::Concat::Partial.to_header()),
                body,
                deferred: len.is_none().then_some(ChecksumAlgorithm::Md5),
            };
            match self.session.create(&self.opts.target, creation).await {
                Ok(created) => {
                    tracing::debug!("created {}", created.url);
                    if created.offset > 0 {
                        retry.progressed();
                        self.set_acked(index, created.offset);
                        self.progress.event(&Event::ChunkSent {
                            index: 0,
                            offset: 0,
                            len: created.offset,
                            sent_bytes: self.total_acked(),
                            total_bytes: self.size_so_far(),
                        });
                    }
                    return Ok((created.url, created.offset));
                }
                Err(e) if e.is_transient() => self.backoff(retry, None, e.reason()).await?,
                Err(SessionError::ChecksumMismatch) => {
                    return Err(SendError::Damaged {
                        index: 0,
                        offset: 0,
                        end: len.unwrap_or(0),
                        file: self.opts.file.display().to_string(),
                    });
                }
                Err(e) => return Err(Self::fatal(&self.opts.target, e)),
            }
        }
    }

    /// Sends part `index` until the server holds all of it (or the deadline passes).
    pub(super) async fn run_part(&self, index: usize, part: Part) -> Result<PartEnd, SendError> {
        let mut retry = self.retrier();
        let mut checksum_failures = 0u32;
        let mut known: Option<(Url, Option<u64>)> = self.part_url(index).await.map(|u| (u, None));
        // The next chunk, read from disk while this one is on the wire.
        let mut ahead: Option<ReadAhead> = None;
        // What the server holds of the chunk at the offset (robusto-chunk-prefix), by HEAD.
        let mut held: Option<(u64, Checksum)> = None;
        // Where the server stood (offset and held bytes) before a request whose connection
        // broke: the HEAD after it tells whether the attempt made progress.
        let mut cut_at: Option<u64> = None;
        // Whether the HEAD after that cut was already asked again.
        let mut asked_again = false;
        // Smaller checked pieces after a cut, for a server that cannot hold a cut chunk.
        let mut pieces = Pieces::new(self.chunk_size());
        // Sent while packing: what the server held when this run first asked is checked against
        // the chunks packed again, once.
        let mut checked_sent = self.following.is_none();
        // The length a deferred upload already has on the server (an earlier run's).
        let mut server_len: Option<u64> = None;
        let shrink = self.caps.checksum.is_some() && !self.holds_prefixes();
        loop {
            if self.past_deadline() {
                return Ok(PartEnd::Paused);
            }
            let len = self.part_len(&part);
            let (url, offset) = match known.take() {
                None => {
                    let (url, offset) = self.create(index, &part, &mut retry).await?;
                    let recorded = url.to_string();
                    self.record(|s| s.parts[index].url = Some(recorded)).await?;
                    (url, offset)
                }
                Some((url, Some(offset))) => (url, offset),
                Some((url, None)) => match self.session.head(&url).await {
                    Ok(state) => match (state.offset, state.length) {
                        (Some(offset), l) if self.describes(l, len) && l.or(len).is_none_or(|l| offset <= l) => {
                            server_len = l;
                            if !checked_sent && offset > 0 {
                                if !self.packed_again_as_sent(offset).await? {
                                    tracing::warn!(
                                        "the archive packed again differs from the one {url} holds the first {offset} bytes of (the files changed): starting a fresh upload"
                                    );
                                    self.abandon(index, &url).await?;
                                    continue;
                                }
                                checked_sent = true;
                            }
                            self.set_acked(index, offset);
                            held = state.held.filter(|_| self.holds_prefixes());
                            let position = offset + held.as_ref().map_or(0, |h| h.0);
                            match cut_at.take() {
                                // The server kept some of what the broken request carried:
                                // progress, so the budget starts afresh.
                                Some(before) if position > before => retry.progressed(),
                                // A server that holds cut chunks may not have taken up the
                                // broken request yet when this HEAD came: ask once more.
                                Some(before) if self.holds_prefixes() && !asked_again => {
                                    asked_again = true;
                                    cut_at = Some(before);
                                    tokio::time::sleep(RECHECK_AFTER_CUT).await;
                                    known = Some((url, None));
                                    continue;
                                }
                                Some(_) => retry
                                    .wait_out(
                                        "the connection broke and the server kept nothing of the request".into(),
                                        true,
                                    )
                                    .await
                                    .map_err(|e| exhausted(e, Some(&url)))?,
                                None if offset > 0 => self.progress.event(&Event::UploadResumed {
                                    url: url.to_string(),
                                    offset,
                                }),
                                None => {}
                            }
                            (url, offset)
                        }
                        _ => {
                            tracing::warn!(
                                "{url} does not describe this upload (offset {:?}, length {:?}); starting a fresh one",
                                state.offset,
                                state.length
                            );
                            self.forget_part(index).await?;
                            continue;
                        }
                    },
                    Err(SessionError::Gone(status)) => {
                        tracing::warn!("the server lost {url} ({status}); starting a fresh upload");
                        self.forget_part(index).await?;
                        continue;
                    }
                    Err(e @ SessionError::Transient(_)) => {
                        self.backoff(&mut retry, Some(&url), e.reason()).await?;
                        known = Some((url, None));
                        continue;
                    }
                    Err(e) => return Err(Self::fatal(&url, e)),
                },
            };
            checked_sent = true;
            if let Some(len) = len
                && offset >= len
            {
                self.set_acked(index, len);
                return Ok(PartEnd::Done);
            }
            if let (Some(ours), Some(theirs)) = (len, server_len)
                && ours != theirs
            {
                tracing::warn!(
                    "{url} has a length of {theirs} bytes, the archive packed again {ours}: starting a fresh upload"
                );
                self.abandon(index, &url).await?;
                continue;
            }
            if self.past_deadline() {
                return Ok(PartEnd::Paused);
            }
            let abs = part.start + offset;
            let Some((chunk_index, ready)) = self.chunk_at(abs).await? else {
                return Err(SendError::Server {
                    url: url.to_string(),
                    source: SessionError::Protocol(format!("offset {abs} is past the end of the file")),
                });
            };
            let chunk = ready.chunk;
            let part_end = self.part_end(&part);
            let chunk_end = (chunk.offset + chunk.len).min(part_end);
            let end = match pieces.size().filter(|_| shrink) {
                Some(piece) => chunk_end.min(abs + piece),
                None => chunk_end,
            };
            let data = match ahead.take() {
                Some(a) if a.offset == abs && a.len == end - abs => self.read_done(a).await?,
                _ => self.read(abs, end - abs).await?,
            };
            // One part reads ahead (one more chunk in memory); parallel parts already keep the
            // link busy. Memory stays within 32 MiB + parallel × chunk: chunks larger than
            // READ_AHEAD_MAX are not read ahead.
            if !self.multi
                && self.chunk_size() <= READ_AHEAD_MAX
                && end == chunk_end
                && end < part_end
                && let Some(next) = self.chunk_now(end)
            {
                let next_end = (next.offset + next.len).min(part_end);
                ahead = Some(self.start_read(end, next_end - end));
            }
            let sum = self.checksum_for(&chunk, abs, &data).await;
            if let Some(sent) = &self.following {
                // Recorded before any byte of it leaves: a rerun knows what the server may hold.
                sent.lock().await.record(chunk_index, chunk.md5)?;
            }
            // The last chunk of an upload created before the end was known brings its length
            // and whole-file checksum.
            let whole = match (self.following.is_some() && ready.last, self.source.end()) {
                (true, Some(e)) => Some((e.size, Checksum::md5(e.md5))),
                _ => None,
            };
            // The server holds the first bytes of this very chunk: send only the rest.
            let prefix = match (held.take(), &sum) {
                (Some((n, c)), Some(s)) if &c == s && n <= data.len() as u64 => n,
                _ => 0,
            };
            let body = data.slice(prefix as usize..);
            let body_len = body.len() as u64;
            let end_headers = whole.as_ref().map(|(size, c)| (*size, c));
            match self
                .session
                .patch(&url, offset, body, sum.as_ref(), prefix, end_headers)
                .await
            {
                Ok(new) if new > offset && len.is_none_or(|l| new <= l) => {
                    retry.progressed();
                    pieces.carried(body_len);
                    checksum_failures = 0;
                    self.set_acked(index, new);
                    self.progress.event(&Event::ChunkSent {
                        index: chunk_index as u64,
                        offset: abs,
                        len: new - offset,
                        sent_bytes: self.total_acked(),
                        total_bytes: self.size_so_far(),
                    });
                    known = Some((url, Some(new)));
                }
                Ok(new) => {
                    self.backoff(
                        &mut retry,
                        Some(&url),
                        format!("PATCH at {offset} answered offset {new}"),
                    )
                    .await?;
                    known = Some((url, None));
                }
                Err(SessionError::ChecksumMismatch) => {
                    checksum_failures += 1;
                    if checksum_failures >= CHECKSUM_FAILURES {
                        if self.caps.has(crate::protocol::Extension::Termination) {
                            let _ = self.session.terminate(&url).await;
                            let _ = self.forget_part(index).await;
                        }
                        return Err(SendError::Damaged {
                            index: chunk_index,
                            offset: chunk.offset,
                            end: chunk.offset + chunk.len,
                            file: self.opts.file.display().to_string(),
                        });
                    }
                    self.progress.event(&Event::Retry {
                        attempt: checksum_failures,
                        retries: CHECKSUM_FAILURES - 1,
                        delay_ms: 0,
                        reason: format!("chunk {chunk_index} failed the server's checksum; reading it again"),
                    });
                    known = Some((url, Some(offset)));
                }
                Err(SessionError::OffsetConflict) => {
                    self.backoff(&mut retry, Some(&url), "offset conflict (409)".into())
                        .await?;
                    known = Some((url, None));
                }
                Err(SessionError::Gone(status)) => {
                    tracing::warn!("the server lost {url} ({status}); starting a fresh upload");
                    self.forget_part(index).await?;
                }
                Err(SessionError::Cut { sent, reason }) => {
                    // Resumed at once: the HEAD says whether the server kept anything, and only
                    // an attempt that made no progress counts against the budget.
                    tracing::debug!("{url}: {reason} after {sent} bytes at offset {offset}; resuming");
                    pieces.cut(sent);
                    cut_at = Some(offset + prefix);
                    asked_again = false;
                    known = Some((url, None));
                }
                Err(e @ SessionError::Transient(_)) => {
                    self.backoff(&mut retry, Some(&url), e.reason()).await?;
                    known = Some((url, None));
                }
                Err(e) => return Err(Self::fatal(&url, e)),
            }
        }
    }

    /// Whether the server's length `theirs` (from HEAD) fits an upload of `ours` bytes: equal, or
    /// while sending an archive being packed, one of them not known yet.
    fn describes(&self, theirs: Option<u64>, ours: Option<u64>) -> bool {
        match (theirs, ours) {
            (Some(t), Some(o)) => t == o,
            _ => self.following.is_some(),
        }
    }

    /// Whether the archive packed again begins with the chunks an earlier run began sending, up
    /// to byte `offset` (which the server holds): waits for them to be packed. Chunks never
    /// recorded cannot be vouched for.
    async fn packed_again_as_sent(&self, offset: u64) -> Result<bool, SendError> {
        let Some(sent) = &self.following else {
            return Ok(true);
        };
        let mut at = 0u64;
        let mut i = 0usize;
        while at < offset {
            let Some(ready) = self.source.chunk(i).await.map_err(|e| SendError::Packing(e.0))? else {
                return Ok(false);
            };
            if sent.lock().await.get(i) != Some(ready.chunk.md5) {
                return Ok(false);
            }
            at = ready.chunk.offset + ready.chunk.len;
            i += 1;
        }
        Ok(true)
    }

    /// Leaves an upload that is not this archive's: terminated (where the server allows it) and
    /// forgotten with the chunks recorded for it; the next round creates a fresh one.
    async fn abandon(&self, index: usize, url: &Url) -> Result<(), SendError> {
        if self.caps.has(crate::protocol::Extension::Termination)
            && let Err(e) = self.session.terminate(url).await
        {
            tracing::debug!("could not terminate {url}: {e}");
        }
        if let Some(sent) = &self.following {
            sent.lock().await.clear()?;
        }
        self.forget_part(index).await
    }

    /// Forgets a part's upload (the server lost it) and the final upload naming it, if one was
    /// created early: a fresh final is created once every part is in.
    pub(super) async fn forget_part(&self, index: usize) -> Result<(), SendError> {
        self.set_acked(index, 0);
        self.record(|s| {
            s.parts[index].url = None;
            s.final_url = None;
        })
        .await
    }
}
