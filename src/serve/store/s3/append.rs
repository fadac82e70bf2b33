//! The S3 store's append: the chunk is checked as it arrives and kept in memory (a checked one
//! whole, at most [`MAX_BUFFER`]; an unchecked body is committed every [`MAX_BUFFER`]), then
//! placed (a pending object, or parts) and counted by a conditional write of the record. A
//! checked chunk cut off is held as an object of its own.

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::client::Condition;
use super::{MAX_BUFFER, Pending, Record, S3Store, bad_record, concat};
use crate::serve::digest::WholeMd5;
use crate::serve::store::{Append, Appended, BodyStream, HeldPrefix, StoreError, StoreResult};
use crate::serve::verify::{ChunkVerifier, Judged};

impl S3Store {
    pub(super) async fn append_chunk(&self, id: &str, append: Append, mut body: BodyStream) -> StoreResult<Appended> {
        let (mut rec, mut etag) = self.load(id).await?;
        if rec.info.offset != append.offset {
            return Err(StoreError::OffsetMismatch {
                expected: append.offset,
                actual: rec.info.offset,
            });
        }
        append.check_continues(&rec.info)?;
        let prefix = append.prefix_len();
        let old_held = rec.bytes.held.clone();
        if prefix == 0 && old_held.is_some() {
            // A chunk sent anew replaces the held bytes.
            rec.bytes.held = None;
            rec.info.held = None;
            self.save(&mut rec, &mut etag).await?;
            let old: Vec<String> = old_held.as_ref().map(|h| h.key.clone()).into_iter().collect();
            self.delete_all(old).await;
        }
        let checked = append.checksum.is_some();
        let mut verifier = ChunkVerifier::new(&append);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut buffered = 0u64;
        let mut held_frames = 0usize;
        if prefix > 0 {
            let held = old_held.clone().ok_or(StoreError::PrefixMismatch {
                held: 0,
                continues: prefix,
            })?;
            let bytes = self.read_pending(std::slice::from_ref(&held)).await?;
            if verifier.needs_prefix(&append) > 0 {
                for b in &bytes {
                    verifier.feed(b)?;
                }
            }
            buffered = prefix;
            held_frames = bytes.len();
            frames = bytes;
        }
        let mut whole = (!rec.info.is_partial())
            .then(|| WholeMd5::resume(rec.info.whole_md5.as_deref()))
            .transpose()
            .map_err(|e| bad_record(id, e))?;
        let mut committed_now = 0u64;
        let mut consumed_all = Vec::new();
        let mut ended = None;
        loop {
            let next = body.next().await;
            let bytes = match next {
                None => break,
                Some(Err(e)) => {
                    ended = Some(e);
                    break;
                }
                Some(Ok(b)) => b,
            };
            if let Err(e) = verifier.feed(&bytes) {
                ended = Some(e);
                break;
            }
            buffered += bytes.len() as u64;
            frames.push(bytes);
            if buffered > MAX_BUFFER {
                if checked {
                    self.forget_continued(&mut rec, &mut etag, prefix).await;
                    return Err(StoreError::ChunkTooLarge { max: MAX_BUFFER });
                }
                // An unchecked body is committed as it goes (tus keeps what arrives).
                let n = buffered;
                let data = std::mem::take(&mut frames);
                buffered = 0;
                let skip = std::mem::take(&mut held_frames);
                consumed_all.extend(
                    self.commit(&mut rec, &mut etag, data, n, &append, &mut whole, false, skip)
                        .await?,
                );
                committed_now += n;
            }
        }
        let judged = match verifier.finish(ended, append.keep_prefix) {
            Ok(j) => j,
            Err(e) => {
                self.forget_continued(&mut rec, &mut etag, prefix).await;
                return Err(e);
            }
        };
        match judged {
            Judged::Hold { len, hasher, cut } => {
                let key = self.pending_key(id, "held");
                self.s3.put(&key, concat(&frames), Condition::None).await?;
                rec.bytes.held = Some(Pending { key, len });
                rec.info.held = append.checksum.as_ref().map(|c| HeldPrefix {
                    len,
                    checksum: c.to_header(),
                });
                rec.info.expires = append.expires;
                self.save(&mut rec, &mut etag).await?;
                if let Some(old) = old_held {
                    self.delete_all(vec![old.key]).await;
                }
                Ok(Appended {
                    info: rec.info,
                    interrupted: Some(cut),
                    held: Some(hasher),
                })
            }
            Judged::Commit(verdict) => {
                let n = verdict.received - committed_now;
                consumed_all.extend(
                    self.commit(&mut rec, &mut etag, frames, n, &append, &mut whole, true, held_frames)
                        .await?,
                );
                if let Some(old) = old_held.filter(|_| prefix > 0) {
                    consumed_all.push(old.key);
                }
                self.delete_all(consumed_all).await;
                Ok(Appended {
                    info: rec.info,
                    interrupted: verdict.interrupted,
                    held: None,
                })
            }
        }
    }

    /// Drops the held bytes an append continued, after it failed.
    async fn forget_continued(&self, rec: &mut Record, etag: &mut String, prefix: u64) {
        if prefix == 0 {
            return;
        }
        if let Some(h) = rec.bytes.held.take() {
            rec.info.held = None;
            if self.save(rec, etag).await.is_ok() {
                self.delete_all(vec![h.key]).await;
            }
        }
    }

    /// Places `n` bytes and writes the record that counts them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        rec: &mut Record,
        etag: &mut String,
        data: Vec<Bytes>,
        n: u64,
        append: &Append,
        whole: &mut Option<WholeMd5>,
        last: bool,
        skip_frames: usize,
    ) -> StoreResult<Vec<String>> {
        if let Some(w) = whole.as_mut() {
            for b in &data {
                w.update(b);
            }
        }
        // The running digest was fed the held bytes when they arrived: it gets the body only.
        let fed = append
            .running
            .as_ref()
            .map(|_| data[skip_frames.min(data.len())..].to_vec());
        let consumed = self.place(rec, etag, data).await?;
        if let Some(w) = whole.as_ref() {
            rec.info.whole_md5 = Some(w.state());
        }
        rec.bytes.held = None;
        if last {
            append.commit(&mut rec.info, n);
        } else {
            rec.info.offset += n;
            rec.info.expires = append.expires;
            rec.info.held = None;
        }
        self.save(rec, etag).await?;
        if let (Some(feed), Some(frames)) = (&append.running, fed) {
            feed.feed(frames).await;
        }
        Ok(consumed)
    }
}
