//! The S3 store: uploads in an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, R2…) that any
//! number of `robusto serve` nodes share, with no other shared state.
//!
//! Layout under the store's prefix `P`:
//!
//! | key | what |
//! |---|---|
//! | `P<name>` | a completed upload, one plain object under its sanitised `filename` |
//! | `P.robusto/uploads/<id>.json` | the upload's record: its [`UploadInfo`] and where its bytes are |
//! | `P.robusto/data/<id>` | the upload's multipart upload, then (completed) its object until it is published |
//! | `P.robusto/pending/<id>/…` | committed bytes not yet in a multipart part (less than a part), held bytes of a cut chunk |
//! | `P.robusto/names/<name>` | the claim on a name, made once (create-only) |
//!
//! **The record's conditional write is the lock.** Every change reads the record with its ETag
//! and writes it back only if it is still at that version (`If-Match`; a new record
//! `If-None-Match: *`). Two nodes can never both advance one offset: the loser's write fails and
//! it answers 409, and the client asks again. Nothing is counted before the record that counts
//! it is written, and what a record counts never changes afterwards.
//!
//! **Bytes.** One multipart upload per tus upload, its part size chosen from `Upload-Length` so
//! that the upload fits in 8,000 parts (at least 8 MiB; 64 MiB while the length is deferred).
//! A chunk that does not fill a part is kept as a small pending object of its own (a key no
//! other request uses) until the bytes after the last part make a whole part; that part is then
//! assembled from them and uploaded. Part numbers are handed out by a conditional write of the
//! record before a part is uploaded, so two racing requests never write the same part number
//! and a loser's part never replaces a winner's. The upload is completed from every part
//! uploaded up to its last counted one (Ceph RGW accepts no other list); the record knows which
//! ranges of that object are the upload's, and publication copies just those to the name,
//! inside S3 — so a part that a request uploaded and then could not record (it lost a race, its
//! node died) never reaches a published byte. Names are claimed at publication, create-only.
//!
//! **The whole-file MD5** is carried in the record ([`UploadInfo::whole_md5`], the digest's
//! serialised state), so whichever node receives the last byte checks the whole file without
//! reading anything back.

mod append;
mod client;
pub mod credentials;
mod placed;

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};

pub use client::S3Config;

impl S3Config {
    /// A bucket's config with credentials from the environment or the AWS profile files
    /// ([`credentials`]); the region too unless given. Path-style addressing is used when
    /// asked for, or when the endpoint is an IP address (which has no bucket subdomains).
    pub fn from_env(
        bucket: String,
        endpoint: Option<String>,
        prefix: String,
        region: Option<String>,
        path_style: bool,
    ) -> Result<Self, String> {
        let keys = credentials::keys()?;
        let ip_host = endpoint
            .as_deref()
            .and_then(|e| url::Url::parse(e).ok())
            .is_some_and(|u| matches!(u.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))));
        Ok(S3Config {
            bucket,
            endpoint,
            region: region.unwrap_or_else(credentials::region),
            prefix,
            path_style: path_style || ip_host,
            access_key: keys.access_key,
            secret_key: keys.secret_key,
            session_token: keys.session_token,
        })
    }
}
use client::{Condition, S3Client};

use super::{Append, Appended, BodyStream, ByteStream, Store, StoreError, StoreResult, UploadInfo, UploadState};
use crate::serve::digest::{DigestFeed, WholeMd5};

/// Smallest part this store writes (S3's minimum is 5 MiB for every part but the last).
const MIN_PART: u64 = 8 << 20;
/// The part size while the length is deferred (uploads up to 625 GiB).
const DEFERRED_PART: u64 = 64 << 20;
/// Parts the part size aims at, leaving room below S3's 10,000 for numbers handed out to
/// requests that lost a race or were refused.
const TARGET_PARTS: u64 = 8_000;
/// S3's last part number.
const MAX_PART: u16 = 10_000;
/// Most bytes of one request kept in memory: a checked chunk must fit whole; an unchecked body
/// is committed in pieces of this size.
pub const MAX_BUFFER: u64 = 64 << 20;
/// The largest object S3 copies in one request (larger ones are copied part by part).
const COPY_MAX: u64 = 5 << 30;

/// A committed run of bytes in an object of its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    key: String,
    len: u64,
}

/// Where an upload's bytes are.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Placement {
    /// The name claimed for it when it was published.
    #[serde(default)]
    name: Option<String>,
    /// The multipart upload.
    #[serde(default)]
    upload_id: Option<String>,
    /// The size of every part but the last.
    #[serde(default)]
    part_size: u64,
    /// The last part number handed out.
    #[serde(default)]
    next_part: u16,
    /// The counted parts' numbers, in file order.
    #[serde(default)]
    parts: Vec<u16>,
    /// Bytes in the counted parts.
    #[serde(default)]
    parts_len: u64,
    /// The counted bytes after the parts, in order.
    #[serde(default)]
    pending: Vec<Pending>,
    /// The held bytes of a cut checked chunk.
    #[serde(default)]
    held: Option<Pending>,
    /// For a partial upload whose bytes go straight into its final upload's multipart upload.
    #[serde(default)]
    placed: Option<placed::Placed>,
    /// For a final upload created before its parts were complete: the part numbers each part
    /// has in it (empty when its parts are copied in at the end instead).
    #[serde(default)]
    plan: Option<Vec<placed::Block>>,
    /// Whether the bytes are one object at the data key now, the upload's bytes being the
    /// `ranges` of it.
    #[serde(default)]
    assembled: bool,
    /// `(start, len)` in the assembled object of the upload's bytes, in order: all of it, or
    /// less when parts no record counts had to be assembled with the others (Ceph RGW
    /// completes a multipart upload only from every part uploaded before the last one named).
    #[serde(default)]
    ranges: Vec<(u64, u64)>,
    /// Whether the bytes were copied to the published name (and the data object removed).
    #[serde(default)]
    published: bool,
}

/// The record object of one upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    info: UploadInfo,
    #[serde(default)]
    bytes: Placement,
    /// New with every write: no two writes of a record are the same bytes, so a write whose
    /// answer was lost is recognised by reading the record back.
    #[serde(default)]
    write: String,
}

impl Record {
    fn pending_len(&self) -> u64 {
        self.bytes.pending.iter().map(|p| p.len).sum()
    }

    /// The length of the upload's part number `index` (from 0) in file order.
    fn next_part_len(&self, index: usize) -> u64 {
        match &self.bytes.placed {
            Some(p) => p.layout.get(index).copied().unwrap_or(0),
            None => self.bytes.part_size,
        }
    }
}

/// Uploads in an S3 bucket.
pub struct S3Store {
    s3: S3Client,
    prefix: String,
}

fn bad_record(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("the record {key} is unreadable: {e}")))
}

fn concat(frames: &[Bytes]) -> Bytes {
    match frames {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for f in many {
                b.extend_from_slice(f);
            }
            b.freeze()
        }
    }
}

impl S3Store {
    /// A store in `config`'s bucket under its prefix. Checks that the bucket answers.
    pub async fn open(config: &S3Config) -> StoreResult<Self> {
        let mut prefix = config.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = S3Store {
            s3: S3Client::new(config)?,
            prefix,
        };
        store.s3.list(&store.meta("uploads/")).await.map_err(|e| {
            StoreError::Io(std::io::Error::other(format!(
                "the bucket '{}' does not answer: {}",
                config.bucket,
                StoreError::from(e)
            )))
        })?;
        Ok(store)
    }

    /// Creates the bucket if it does not exist (tests, first runs).
    pub async fn create_bucket(config: &S3Config) -> StoreResult<()> {
        Ok(S3Client::new(config)?.create_bucket().await?)
    }

    fn meta(&self, rest: &str) -> String {
        format!("{}.robusto/{rest}", self.prefix)
    }

    fn record_key(&self, id: &str) -> StoreResult<String> {
        if !crate::serve::uploads::is_valid_id(id) {
            return Err(StoreError::NotFound);
        }
        Ok(self.meta(&format!("uploads/{id}.json")))
    }

    fn pending_key(&self, id: &str, what: &str) -> String {
        let nonce = hex::encode(rand::random::<[u8; 8]>());
        self.meta(&format!("pending/{id}/{what}-{nonce}"))
    }

    async fn load(&self, id: &str) -> StoreResult<(Record, String)> {
        let key = self.record_key(id)?;
        let got = self.s3.get(&key).await?;
        let rec: Record = serde_json::from_slice(&got.body).map_err(|e| bad_record(&key, e))?;
        Ok((rec, got.etag))
    }

    /// Writes the record if it is still at `etag`; `etag` becomes the new version.
    async fn save(&self, rec: &mut Record, etag: &mut String) -> StoreResult<()> {
        let key = self.record_key(&rec.info.id)?;
        rec.write = hex::encode(rand::random::<[u8; 8]>());
        let body = Bytes::from(serde_json::to_vec(rec).map_err(|e| bad_record(&key, e))?);
        let new = match self.s3.put(&key, body.clone(), Condition::Matches(etag)).await {
            Ok(new) => new,
            // Whether it was written is read back: no two writes are the same bytes.
            Err(client::S3Error::Unsure(why)) => {
                let now = self.s3.get(&key).await?;
                if now.body != body {
                    tracing::debug!(
                        key,
                        "a conditional write of the record failed ({why}): another request won"
                    );
                    return Err(StoreError::Conflict);
                }
                now.etag
            }
            Err(e) => return Err(e.into()),
        };
        *etag = if new.is_empty() {
            self.load(&rec.info.id).await?.1
        } else {
            new
        };
        Ok(())
    }

    /// Deletes objects, best effort: what is left is found again by prefix when the upload ends.
    async fn delete_all(&self, keys: Vec<String>) {
        for key in keys {
            if let Err(e) = self.s3.delete(&key).await {
                tracing::debug!(key, "could not delete: {}", StoreError::from(e));
            }
        }
    }

    async fn read_pending(&self, pending: &[Pending]) -> StoreResult<Vec<Bytes>> {
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            let got = self.s3.get(&p.key).await?;
            if got.body.len() as u64 != p.len {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "{} holds {} bytes, its record says {}",
                    p.key,
                    got.body.len(),
                    p.len
                ))));
            }
            out.push(got.body);
        }
        Ok(out)
    }

    /// Claims a free name derived from `name` for upload `id`: never one another upload
    /// claimed, nor the key of an object already in the bucket.
    async fn claim(&self, id: &str, name: &str) -> StoreResult<String> {
        for n in 0..10_000 {
            let candidate = super::suffixed(name, n);
            if self.s3.exists(&format!("{}{candidate}", self.prefix)).await? {
                continue;
            }
            let claim = self.meta(&format!("names/{candidate}"));
            match self
                .s3
                .put(&claim, Bytes::from(id.to_string()), Condition::Create)
                .await
            {
                Ok(_) => return Ok(candidate),
                Err(client::S3Error::Precondition) => {
                    // Ours already, from an attempt that did not get to record it.
                    if self.s3.get(&claim).await.is_ok_and(|c| c.body == id.as_bytes()) {
                        return Ok(candidate);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Exists)
    }

    /// Where an upload's bytes are assembled (its multipart upload, or its one object).
    fn data_key(&self, id: &str) -> String {
        self.meta(&format!("data/{id}"))
    }

    fn part_size(info: &UploadInfo) -> u64 {
        match info.length {
            Some(len) => {
                let per = len.div_ceil(TARGET_PARTS).div_ceil(1 << 20) << 20;
                per.max(MIN_PART)
            }
            None => DEFERRED_PART,
        }
    }

    /// Makes `data` (the next bytes after the record's offset) durable and counts them in the
    /// record (not yet written): as parts once a part's worth is there, else as a pending
    /// object. Writes the record only to start the multipart upload and to hand out part
    /// numbers. Returns the pending objects the record no longer counts.
    async fn place(&self, rec: &mut Record, etag: &mut String, data: Vec<Bytes>) -> StoreResult<Vec<String>> {
        let n: u64 = data.iter().map(|b| b.len() as u64).sum();
        let id = rec.info.id.clone();
        if rec.bytes.part_size == 0 {
            rec.bytes.part_size = Self::part_size(&rec.info);
        }
        let tail = rec.pending_len() + n;
        let full_after = rec.info.length == Some(rec.info.offset + n);
        // The parts these bytes complete: of the part size (a placed partial: of its layout).
        let mut lens = Vec::new();
        let mut rest = tail;
        loop {
            let want = rec.next_part_len(rec.bytes.parts.len() + lens.len());
            if want == 0 || rest < want {
                break;
            }
            lens.push(want);
            rest -= want;
        }
        // At the end, the bytes after the last part become the last part, unless the upload
        // has no parts at all (it is then written as one object when it is assembled).
        if full_after && rest > 0 && (!lens.is_empty() || !rec.bytes.parts.is_empty() || rec.bytes.placed.is_some()) {
            lens.push(rest);
        }
        let count = lens.len() as u64;
        if count == 0 {
            if n > 0 {
                let key = self.pending_key(&id, &format!("{:020}", rec.info.offset));
                self.s3.put(&key, concat(&data), Condition::None).await?;
                rec.bytes.pending.push(Pending { key, len: n });
            }
            return Ok(Vec::new());
        }
        let (key, upload_id, last_number) = match &rec.bytes.placed {
            Some(p) => (self.data_key(&p.final_id), p.upload_id.clone(), p.end - 1),
            None => {
                let key = self.data_key(&id);
                let upload_id = match rec.bytes.upload_id.clone() {
                    Some(u) => u,
                    None => {
                        let upload_id = self.s3.create_multipart(&key).await?;
                        rec.bytes.upload_id = Some(upload_id.clone());
                        if let Err(e) = self.save(rec, etag).await {
                            let _ = self.s3.abort_multipart(&key, &upload_id).await;
                            return Err(e);
                        }
                        upload_id
                    }
                };
                (key, upload_id, MAX_PART)
            }
        };
        let first = rec.bytes.next_part;
        if u64::from(first) + count > u64::from(last_number) {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "upload {id} has no part numbers left (last {last_number})"
            ))));
        }
        // The numbers are ours once the record says so.
        rec.bytes.next_part = first + count as u16;
        self.save(rec, etag).await?;
        let mut frames = self.read_pending(&rec.bytes.pending).await?;
        frames.extend(data);
        let all = concat(&frames);
        drop(frames);
        let mut at = 0usize;
        for (i, len) in lens.into_iter().enumerate() {
            let len = len as usize;
            let number = first + 1 + i as u16;
            self.s3
                .upload_part(&key, &upload_id, number, all.slice(at..at + len))
                .await?;
            rec.bytes.parts.push(number);
            rec.bytes.parts_len += len as u64;
            at += len;
        }
        let consumed = std::mem::take(&mut rec.bytes.pending)
            .into_iter()
            .map(|p| p.key)
            .collect();
        if at < all.len() {
            let offset_of_rest = rec.bytes.parts_len;
            let key = self.pending_key(&id, &format!("{offset_of_rest:020}"));
            let len = (all.len() - at) as u64;
            self.s3.put(&key, all.slice(at..), Condition::None).await?;
            rec.bytes.pending.push(Pending { key, len });
        }
        Ok(consumed)
    }

    /// Puts the counted bytes together as one object at the data key. Idempotent.
    async fn assemble(&self, rec: &mut Record, etag: &mut String) -> StoreResult<()> {
        if rec.bytes.assembled {
            return Ok(());
        }
        let key = self.data_key(&rec.info.id);
        match rec.bytes.upload_id.clone() {
            Some(upload_id) => {
                let listed = match self.s3.list_parts(&key, &upload_id).await {
                    Ok(l) => l,
                    // Completed already by a request that did not get to record it: it
                    // completed it from the same list.
                    Err(client::S3Error::NotFound) if self.s3.exists(&key).await? => {
                        let (_, ranges) = Self::completion(rec, &Default::default())?;
                        return self.record_assembled(rec, etag, ranges).await;
                    }
                    Err(e) => return Err(e.into()),
                };
                let (parts, ranges) = Self::completion(rec, &listed)?;
                self.s3.complete_multipart(&key, &upload_id, &parts).await?;
                self.record_assembled(rec, etag, ranges).await
            }
            None => {
                let frames = self.read_pending(&rec.bytes.pending).await?;
                self.s3.put(&key, concat(&frames), Condition::None).await?;
                let ranges = vec![(0, rec.info.offset)];
                self.record_assembled(rec, etag, ranges).await
            }
        }
    }

    /// The parts to complete a multipart upload from, and where the counted bytes will be in
    /// the object: every part uploaded up to the last counted one, in order (Ceph RGW refuses
    /// a list that leaves one out), the counted ones making the ranges.
    #[allow(clippy::type_complexity)]
    fn completion(
        rec: &Record,
        listed: &std::collections::BTreeMap<u16, (String, u64)>,
    ) -> StoreResult<(Vec<(u16, String)>, Vec<(u64, u64)>)> {
        let counted: std::collections::BTreeSet<u16> = rec.bytes.parts.iter().copied().collect();
        let last = rec.bytes.parts.last().copied().unwrap_or(0);
        for n in &counted {
            if !listed.is_empty() && !listed.contains_key(n) {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "part {n} of upload {} is missing",
                    rec.info.id
                ))));
            }
        }
        if listed.is_empty() {
            // Known only from the record: the counted parts alone were assembled.
            return Ok((Vec::new(), vec![(0, rec.info.offset)]));
        }
        let mut parts = Vec::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut at = 0u64;
        for (n, (etag, size)) in listed.range(..=last) {
            parts.push((*n, etag.clone()));
            if counted.contains(n) {
                match ranges.last_mut() {
                    Some((start, len)) if *start + *len == at => *len += size,
                    _ => ranges.push((at, *size)),
                }
            }
            at += size;
        }
        Ok((parts, ranges))
    }

    async fn record_assembled(&self, rec: &mut Record, etag: &mut String, ranges: Vec<(u64, u64)>) -> StoreResult<()> {
        let leftovers: Vec<String> = rec.bytes.pending.drain(..).map(|p| p.key).collect();
        rec.bytes.assembled = true;
        rec.bytes.ranges = ranges;
        self.save(rec, etag).await?;
        self.delete_all(leftovers).await;
        self.sweep_pending(&rec.info.id, &[]).await;
        Ok(())
    }

    /// Copies the upload's bytes to its published name, inside S3: one copy, or a multipart
    /// upload of ranges copied part by part (more than 5 GiB, or parts left out).
    async fn copy_out(&self, rec: &Record, to: &str) -> StoreResult<()> {
        let from = self.data_key(&rec.info.id);
        let whole = rec.bytes.ranges.len() == 1 && rec.bytes.ranges[0].0 == 0;
        if rec.bytes.ranges.is_empty() || (whole && rec.bytes.ranges[0].1 <= COPY_MAX) {
            return Ok(self.s3.copy(&from, to).await?);
        }
        let upload_id = self.s3.create_multipart(to).await?;
        let mut parts = Vec::new();
        let copied = async {
            for &(start, len) in &rec.bytes.ranges {
                let pieces = len.div_ceil(COPY_MAX).max(1);
                let piece = len.div_ceil(pieces);
                let mut at = start;
                while at < start + len {
                    let n = piece.min(start + len - at);
                    let number = parts.len() as u16 + 1;
                    let etag = self
                        .s3
                        .upload_part_copy(to, &upload_id, number, &from, at..at + n)
                        .await?;
                    parts.push((number, etag));
                    at += n;
                }
            }
            self.s3.complete_multipart(to, &upload_id, &parts).await
        };
        if let Err(e) = copied.await {
            let _ = self.s3.abort_multipart(to, &upload_id).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Deletes the pending objects of `id` that are not in `keep` (those of requests that lost).
    async fn sweep_pending(&self, id: &str, keep: &[&str]) {
        let prefix = self.meta(&format!("pending/{id}/"));
        if let Ok(keys) = self.s3.list(&prefix).await {
            let mut stale = Vec::with_capacity(keys.len());
            for (k, _) in keys {
                if !keep.contains(&k.as_str()) {
                    stale.push(k);
                }
            }
            self.delete_all(stale).await;
        }
    }

    /// Streams an upload's counted bytes `range`, as they are now (assembled, or pending only).
    async fn stream(&self, rec: &Record, range: Range<u64>) -> StoreResult<ByteStream> {
        let end = range.end.min(rec.info.offset);
        let start = range.start.min(end);
        if rec.bytes.published {
            let key = format!("{}{}", self.prefix, rec.bytes.name.as_deref().unwrap_or_default());
            return Ok(self.s3.get_range(&key, start..end).await?);
        }
        if rec.bytes.assembled {
            // The logical range, through the ranges of the object that hold the upload's bytes.
            let key = self.data_key(&rec.info.id);
            let mut pieces = Vec::new();
            let mut logical = 0u64;
            for &(at, len) in &rec.bytes.ranges {
                let (from, to) = (start.max(logical), end.min(logical + len));
                if from < to {
                    pieces.push(at + (from - logical)..at + (to - logical));
                }
                logical += len;
            }
            let mut streams = Vec::with_capacity(pieces.len());
            for piece in pieces {
                streams.push(self.s3.get_range(&key, piece).await?);
            }
            return Ok(futures_util::stream::iter(streams).flatten().boxed());
        }
        if !rec.bytes.parts.is_empty() {
            return Err(StoreError::Io(std::io::Error::other(
                "the bytes of an unfinished upload in multipart parts cannot be read before it completes",
            )));
        }
        let frames = self.read_pending(&rec.bytes.pending).await?;
        let all = concat(&frames);
        Ok(futures_util::stream::iter([Ok(all.slice(start as usize..end as usize))]).boxed())
    }

    async fn concatenate_parts(
        &self,
        info: UploadInfo,
        parts: &[String],
        running: Option<DigestFeed>,
    ) -> StoreResult<UploadInfo> {
        // A final whose parts went straight into it: completed from their parts.
        if let Ok((f, etag)) = self.load(&info.id).await
            && f.bytes.plan.as_ref().is_some_and(|p| !p.is_empty())
            && f.info.offset == 0
        {
            return self.complete_planned(f, etag, running).await;
        }
        // The bytes of every part, in order, as they are complete now.
        let mut sources = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for p in parts {
            let (mut part, mut part_etag) = self.load(p).await?;
            if !part.bytes.parts.is_empty() {
                self.assemble(&mut part, &mut part_etag).await?;
            }
            total += part.info.offset;
            sources.push(part);
        }
        let id = info.id.clone();
        let (mut rec, mut etag) = match self.load(&id).await {
            Ok((rec, etag)) => (rec, etag),
            Err(StoreError::NotFound) => {
                let mut fresh = info.clone();
                fresh.length = Some(total);
                self.create(fresh).await?;
                self.load(&id).await?
            }
            Err(e) => return Err(e),
        };
        if rec.info.length.is_some_and(|l| l != total) {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "the parts hold {total} bytes, the final upload expects {:?}",
                rec.info.length
            ))));
        }
        rec.info.length = Some(total);
        rec.info.metadata = info.metadata.clone().or(rec.info.metadata.clone());
        let mut whole = Some(WholeMd5::resume(rec.info.whole_md5.as_deref()).map_err(|e| bad_record(&id, e))?);
        // Copied through this node a part's worth at a time; a concatenation cut short resumes
        // at the final's offset.
        let step = Self::part_size(&rec.info).min(MAX_BUFFER) as usize;
        let mut skip = rec.info.offset;
        let append = Append {
            offset: rec.info.offset,
            max_len: total,
            checksum: None,
            running: running.clone(),
            expires: rec.info.expires,
            yielding: false,
            complete_at: None,
            keep_prefix: false,
            continues: None,
            saved_digest: None,
        };
        let mut frames: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        for part in &sources {
            let len = part.info.offset;
            if skip >= len {
                skip -= len;
                continue;
            }
            let mut stream = self.stream(part, skip..len).await?;
            skip = 0;
            while let Some(bytes) = stream.try_next().await? {
                buffered += bytes.len();
                frames.push(bytes);
                if buffered >= step {
                    let data = std::mem::take(&mut frames);
                    let n = std::mem::take(&mut buffered) as u64;
                    let consumed = self
                        .commit(&mut rec, &mut etag, data, n, &append, &mut whole, false, 0)
                        .await?;
                    self.delete_all(consumed).await;
                }
            }
        }
        let consumed = self
            .commit(
                &mut rec,
                &mut etag,
                frames,
                buffered as u64,
                &append,
                &mut whole,
                false,
                0,
            )
            .await?;
        self.delete_all(consumed).await;
        Ok(rec.info)
    }
}

impl Store for S3Store {
    fn create(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let key = self.record_key(&info.id)?;
            let rec = Record {
                info,
                bytes: Placement::default(),
                write: String::new(),
            };
            let body = serde_json::to_vec(&rec).map_err(|e| bad_record(&key, e))?;
            match self.s3.put(&key, Bytes::from(body), Condition::Create).await {
                Ok(_) => Ok(()),
                Err(client::S3Error::Precondition) => Err(StoreError::Exists),
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }

    fn info<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        async move { Ok(self.load(id).await?.0.info) }.boxed()
    }

    fn update(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            // The offset, the held bytes and the digest state change only with the bytes: an
            // update that meets a newer record applies itself to that one.
            for _ in 0..8 {
                let (mut rec, mut etag) = self.load(&info.id).await?;
                rec.info = UploadInfo {
                    offset: rec.info.offset,
                    held: rec.info.held.take(),
                    whole_md5: rec.info.whole_md5.take(),
                    whole_md5_at: rec.info.whole_md5_at.take(),
                    ..info.clone()
                };
                match self.save(&mut rec, &mut etag).await {
                    Err(StoreError::Conflict) => continue,
                    r => return r,
                }
            }
            Err(StoreError::Conflict)
        }
        .boxed()
    }

    fn append<'a>(&'a self, id: &'a str, append: Append, body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        self.append_chunk(id, append, body).boxed()
    }

    fn concatenate<'a>(
        &'a self,
        info: UploadInfo,
        parts: &'a [String],
        running: Option<DigestFeed>,
    ) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        self.concatenate_parts(info, parts, running).boxed()
    }

    fn link<'a>(&'a self, part: &'a str, final_id: &'a str, base: u64) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        self.link_part(part, final_id, base).boxed()
    }

    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        async move {
            let (rec, _) = self.load(id).await?;
            self.stream(&rec, range).await
        }
        .boxed()
    }

    fn publish<'a>(&'a self, id: &'a str, name: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        async move {
            let (mut rec, mut etag) = self.load(id).await?;
            if rec.bytes.published {
                return Ok(rec.bytes.name.unwrap_or_default());
            }
            self.assemble(&mut rec, &mut etag).await?;
            let name = match rec.bytes.name.clone() {
                Some(n) => n,
                None => {
                    let n = self.claim(id, name).await?;
                    rec.bytes.name = Some(n.clone());
                    self.save(&mut rec, &mut etag).await?;
                    n
                }
            };
            self.copy_out(&rec, &format!("{}{name}", self.prefix)).await?;
            rec.bytes.published = true;
            rec.info.published = Some(name.clone());
            self.save(&mut rec, &mut etag).await?;
            self.delete_all(vec![self.data_key(id)]).await;
            Ok(name)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let (rec, _) = self.load(id).await?;
            let data = self.data_key(id);
            if let (Some(upload_id), false) = (&rec.bytes.upload_id, rec.bytes.assembled) {
                self.s3.abort_multipart(&data, upload_id).await?;
            }
            self.s3.delete(&data).await?;
            if let (true, Some(name)) = (rec.bytes.published, &rec.bytes.name) {
                self.s3.delete(&format!("{}{name}", self.prefix)).await?;
            }
            self.sweep_pending(id, &[]).await;
            self.s3.delete(&self.record_key(id)?).await?;
            if let Some(name) = &rec.bytes.name {
                self.s3.delete(&self.meta(&format!("names/{name}"))).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            for _ in 0..8 {
                let (mut rec, mut etag) = self.load(id).await?;
                if rec.info.state != UploadState::Receiving {
                    return Ok(());
                }
                rec.info.state = UploadState::Expired;
                rec.info.held = None;
                let bytes = std::mem::take(&mut rec.bytes);
                rec.bytes.name = bytes.name.clone();
                match self.save(&mut rec, &mut etag).await {
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(e),
                    Ok(()) => {
                        if let Some(upload_id) = &bytes.upload_id {
                            self.s3.abort_multipart(&self.data_key(id), upload_id).await?;
                        }
                        self.sweep_pending(id, &[]).await;
                        return Ok(());
                    }
                }
            }
            Err(StoreError::Conflict)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        async move {
            let prefix = self.meta("uploads/");
            let keys = self.s3.list(&prefix).await?;
            Ok(keys
                .into_iter()
                .filter_map(|(k, _)| {
                    k.strip_prefix(&prefix)
                        .and_then(|r| r.strip_suffix(".json"))
                        .map(str::to_string)
                })
                .collect())
        }
        .boxed()
    }

    fn keeps_whole_md5(&self) -> bool {
        true
    }

    fn reads_unfinished(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(length: Option<u64>) -> UploadInfo {
        UploadInfo::new("0".repeat(32), length, 0)
    }

    #[test]
    fn part_sizes_keep_every_upload_within_the_part_limit() {
        assert_eq!(S3Store::part_size(&with_length(Some(1 << 30))), MIN_PART);
        // 200 GiB in parts of 26 MiB: 7,877 parts, 2,000 numbers left for requests that lose a race.
        let big = 200u64 << 30;
        let part = S3Store::part_size(&with_length(Some(big)));
        assert_eq!(part, 26 << 20);
        assert!(big.div_ceil(part) <= TARGET_PARTS);
        // The largest S3 object (5 TiB) fits too.
        let huge = 5u64 << 40;
        assert!(huge.div_ceil(S3Store::part_size(&with_length(Some(huge)))) <= TARGET_PARTS);
        assert_eq!(S3Store::part_size(&with_length(None)), DEFERRED_PART);
    }

    #[test]
    fn completion_names_every_uploaded_part_and_counts_only_the_recorded_ones() {
        let mut rec = Record {
            info: with_length(Some(30)),
            bytes: Placement::default(),
            write: String::new(),
        };
        rec.info.offset = 30;
        rec.bytes.parts = vec![1, 3, 4];
        let listed = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 10)]
            .into_iter()
            .map(|(n, size)| (n, (format!("\"e{n}\""), size)))
            .collect();
        let (parts, ranges) = S3Store::completion(&rec, &listed).unwrap();
        assert_eq!(parts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(ranges, vec![(0, 10), (20, 20)]);
        rec.bytes.parts = vec![1, 6];
        assert!(
            S3Store::completion(&rec, &listed).is_err(),
            "a counted part that is gone"
        );
    }
}
