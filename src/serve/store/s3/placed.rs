//! Parallel uploads without a copy through the node: a final upload created before its parts
//! are complete (`concatenation-unfinished`) gets its multipart upload at once, and each part
//! that has no bytes yet writes its bytes straight into it as parts of its own.
//!
//! The final's part numbers are split into one block per part, in file order, when the first
//! part is linked (the plan, kept in the final's record). A part's bytes are cut into parts of
//! the final's part size (the last one merged with the one before when it would be under S3's
//! 5 MiB minimum), numbered within its block. A part that had bytes before it was linked is
//! copied into its block when the final completes. The final is then completed from the
//! blocks' parts, its bytes hashed once in order (a part may complete before the ones before
//! it), and published like any upload.
//!
//! A plan is made only when every part but the last holds at least 5 MiB and the blocks fit in
//! S3's 10,000 numbers; otherwise the parts are copied in at the end through the node.

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use super::{MAX_PART, Record, S3Store};
use crate::serve::digest::{DigestFeed, WholeMd5};
use crate::serve::store::{StoreError, StoreResult, UploadInfo};

/// S3's smallest part but the last.
const S3_MIN_PART: u64 = 5 << 20;

/// Where a placed partial upload's bytes go.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Placed {
    /// The final upload.
    pub(super) final_id: String,
    /// The final's multipart upload.
    pub(super) upload_id: String,
    /// One past the last number of the part's block.
    pub(super) end: u16,
    /// The lengths of the part's parts, in order.
    pub(super) layout: Vec<u64>,
}

/// The part numbers of one part of a final upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Block {
    /// The partial upload.
    pub(super) id: String,
    /// Its length.
    pub(super) len: u64,
    /// Its first number.
    pub(super) first: u16,
    /// One past its last number.
    pub(super) end: u16,
}

/// The lengths of the parts `len` bytes are cut into with parts of `part` bytes: all of
/// `part` but the last, which is merged with the one before when under S3's minimum.
pub(super) fn layout(len: u64, part: u64) -> Vec<u64> {
    if len <= part {
        return vec![len];
    }
    let mut lens = vec![part; (len / part) as usize];
    let rest = len % part;
    match lens.last_mut() {
        Some(last) if rest > 0 && rest < S3_MIN_PART => *last += rest,
        _ if rest > 0 => lens.push(rest),
        _ => {}
    }
    lens
}

/// The blocks of a final upload of parts `lens` (in order) with parts of `part` bytes, or
/// none when the parts cannot go straight into it.
pub(super) fn plan(ids: &[String], lens: &[u64], part: u64) -> Vec<Block> {
    let needs: Vec<usize> = lens.iter().map(|&l| layout(l, part).len()).collect();
    let total: usize = needs.iter().sum();
    let small = lens.iter().take(lens.len().saturating_sub(1)).any(|&l| l < S3_MIN_PART);
    let numbers = usize::from(MAX_PART);
    if small || total * 5 / 4 > numbers || ids.len() != lens.len() {
        return Vec::new();
    }
    // What is left over is shared by need: numbers for requests that lose a race.
    let spare = numbers - total;
    let mut blocks = Vec::with_capacity(ids.len());
    let mut first = 1usize;
    for ((id, &len), &need) in ids.iter().zip(lens).zip(&needs) {
        let size = need + spare * need / total.max(1);
        let end = (first + size).min(numbers + 1);
        blocks.push(Block {
            id: id.clone(),
            len,
            first: first as u16,
            end: end as u16,
        });
        first = end;
    }
    blocks
}

impl S3Store {
    /// [`crate::serve::store::Store::link`] for the S3 store: makes the final's plan if it has
    /// none, then links the part, placing it when it has no bytes yet.
    pub(super) async fn link_part(&self, part: &str, final_id: &str, base: u64) -> StoreResult<UploadInfo> {
        // A part keeps its first final.
        let (now, _) = self.load(part).await?;
        if now.info.final_upload.is_some() {
            return Ok(now.info);
        }
        let blocks = self.final_plan(final_id).await?;
        for _ in 0..8 {
            let (mut rec, mut etag) = self.load(part).await?;
            if rec.info.final_upload.is_some() {
                return Ok(rec.info);
            }
            rec.info.final_upload = Some(final_id.to_string());
            let empty = rec.info.offset == 0
                && rec.bytes.pending.is_empty()
                && rec.bytes.upload_id.is_none()
                && rec.bytes.held.is_none();
            let (final_rec, _) = self.load(final_id).await?;
            if let (true, Some(block), Some(upload_id)) = (
                empty,
                blocks.iter().find(|b| b.id == part),
                final_rec.bytes.upload_id.clone(),
            ) {
                rec.bytes.placed = Some(Placed {
                    final_id: final_id.to_string(),
                    upload_id,
                    end: block.end,
                    layout: layout(block.len, final_rec.bytes.part_size),
                });
                rec.bytes.next_part = block.first - 1;
                rec.info.placed_at = Some(base);
            }
            match self.save(&mut rec, &mut etag).await {
                Ok(()) => return Ok(rec.info),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// The final's plan: made (with its multipart upload) the first time, read afterwards.
    async fn final_plan(&self, final_id: &str) -> StoreResult<Vec<Block>> {
        for _ in 0..8 {
            let (mut f, mut etag) = self.load(final_id).await?;
            if let Some(plan) = &f.bytes.plan {
                return Ok(plan.clone());
            }
            let ids = crate::serve::uploads::parts_of(&f.info)
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
            let mut lens = Vec::with_capacity(ids.len());
            for id in &ids {
                lens.push(self.load(id).await?.0.info.length.unwrap_or(0));
            }
            f.bytes.part_size = Self::part_size(&f.info);
            let blocks = plan(&ids, &lens, f.bytes.part_size);
            let key = self.data_key(final_id);
            let mut started = None;
            if !blocks.is_empty() {
                let upload_id = self.s3.create_multipart(&key).await?;
                f.bytes.upload_id = Some(upload_id.clone());
                started = Some(upload_id);
            }
            f.bytes.plan = Some(blocks.clone());
            match self.save(&mut f, &mut etag).await {
                Ok(()) => return Ok(blocks),
                Err(e) => {
                    if let Some(upload_id) = started {
                        let _ = self.s3.abort_multipart(&key, &upload_id).await;
                    }
                    if !matches!(e, StoreError::Conflict) {
                        return Err(e);
                    }
                }
            }
        }
        Err(StoreError::Conflict)
    }

    /// Completes a final upload that has a plan: the placed parts' parts are its parts, the
    /// others are copied into their blocks; then it is assembled and hashed once, in order.
    pub(super) async fn complete_planned(
        &self,
        mut f: Record,
        mut etag: String,
        running: Option<DigestFeed>,
    ) -> StoreResult<UploadInfo> {
        let Some(plan) = f.bytes.plan.clone() else {
            return Err(StoreError::Io(std::io::Error::other("no plan")));
        };
        let Some(upload_id) = f.bytes.upload_id.clone() else {
            return Err(StoreError::Io(std::io::Error::other(
                "the final has no multipart upload",
            )));
        };
        let id = f.info.id.clone();
        let key = self.data_key(&id);
        let mut numbers = Vec::new();
        let mut total = 0u64;
        for block in &plan {
            let (mut part, mut part_etag) = self.load(&block.id).await?;
            let placed_here = part.bytes.placed.as_ref().is_some_and(|p| p.final_id == id);
            if part.info.offset != block.len {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "partial upload {} holds {} of its {} bytes",
                    block.id, part.info.offset, block.len
                ))));
            }
            if placed_here {
                numbers.extend(part.bytes.parts.iter().copied());
            } else {
                // Copied into its block; the same bytes whoever does it, so two nodes doing it
                // at once write the same parts.
                if !part.bytes.parts.is_empty() {
                    self.assemble(&mut part, &mut part_etag).await?;
                }
                let mut stream = self.stream(&part, 0..block.len).await?;
                let mut carry = Bytes::new();
                for (number, len) in (block.first..).zip(layout(block.len, f.bytes.part_size)) {
                    let len = len as usize;
                    let mut buf = BytesMut::with_capacity(len);
                    while buf.len() < len {
                        if carry.is_empty() {
                            carry = stream
                                .try_next()
                                .await?
                                .ok_or_else(|| StoreError::Io(std::io::Error::other("a partial upload ended early")))?;
                        }
                        let take = (len - buf.len()).min(carry.len());
                        buf.extend_from_slice(&carry.split_to(take));
                    }
                    self.s3.upload_part(&key, &upload_id, number, buf.freeze()).await?;
                    numbers.push(number);
                }
            }
            total += block.len;
        }
        f.bytes.parts = numbers;
        f.bytes.parts_len = total;
        f.info.length = Some(total);
        f.info.offset = total;
        self.assemble(&mut f, &mut etag).await?;
        // One pass over the assembled bytes, in order, for the whole-file digest.
        let mut whole = WholeMd5::resume(None).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let mut stream = self.stream(&f, 0..total).await?;
        while let Some(b) = stream.try_next().await? {
            whole.update(&b);
            if let Some(feed) = &running {
                feed.feed(vec![b]).await;
            }
        }
        f.info.whole_md5 = Some(whole.state());
        self.save(&mut f, &mut etag).await?;
        Ok(f.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn layouts_keep_every_part_but_the_last_at_5_mib_or_more() {
        assert_eq!(layout(10 * MIB, 8 * MIB), vec![10 * MIB]);
        assert_eq!(layout(8 * MIB, 8 * MIB), vec![8 * MIB]);
        assert_eq!(layout(20 * MIB, 8 * MIB), vec![8 * MIB, 12 * MIB]);
        assert_eq!(layout(22 * MIB, 8 * MIB), vec![8 * MIB, 8 * MIB, 6 * MIB]);
        assert_eq!(layout(3, 8 * MIB), vec![3]);
        assert_eq!(layout(0, 8 * MIB), vec![0]);
    }

    #[test]
    fn plans_split_the_numbers_in_file_order_or_give_up() {
        let ids: Vec<String> = (0..4).map(|i| i.to_string()).collect();
        let blocks = plan(&ids, &[10 * MIB; 4], 8 * MIB);
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[0].first, 1);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].end, pair[1].first);
        }
        assert!(blocks.last().unwrap().end <= MAX_PART + 1);
        // A part under 5 MiB that is not the last: no plan (copied at the end instead).
        assert!(plan(&ids, &[10 * MIB, MIB, 10 * MIB, 10 * MIB], 8 * MIB).is_empty());
        assert_eq!(plan(&ids, &[10 * MIB, 10 * MIB, 10 * MIB, MIB], 8 * MIB).len(), 4);
    }
}
