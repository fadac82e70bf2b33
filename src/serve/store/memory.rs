//! An in-memory [`Store`] for tests: the same contract as the fs store, no durability.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};

use super::{
    Append, Appended, BodyStream, ByteStream, HeldPrefix, Store, StoreError, StoreResult, UploadInfo, UploadState,
};
use crate::serve::digest::DigestFeed;
use crate::serve::verify::{ChunkVerifier, Judged};

#[derive(Default)]
struct Inner {
    uploads: HashMap<String, (UploadInfo, Vec<u8>)>,
    published: HashMap<String, String>,
    /// Held bytes of cut-off checked chunks, apart from the committed ones.
    held: HashMap<String, Vec<u8>>,
}

/// Uploads held in memory.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another test thread panicked; the map is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut (UploadInfo, Vec<u8>)) -> StoreResult<T>) -> StoreResult<T> {
        let mut inner = self.lock();
        let entry = inner.uploads.get_mut(id).ok_or(StoreError::NotFound)?;
        f(entry)
    }
}

impl Store for MemoryStore {
    fn create(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        let mut inner = self.lock();
        let r = if inner.uploads.contains_key(&info.id) {
            Err(StoreError::Exists)
        } else {
            inner.uploads.insert(info.id.clone(), (info, Vec::new()));
            Ok(())
        };
        futures_util::future::ready(r).boxed()
    }

    fn info<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        futures_util::future::ready(self.with(id, |(info, _)| Ok(info.clone()))).boxed()
    }

    fn update(&self, info: UploadInfo) -> BoxFuture<'_, StoreResult<()>> {
        let r = self.with(&info.id.clone(), |(old, _)| {
            *old = UploadInfo {
                offset: old.offset,
                held: old.held.take(),
                ..info
            };
            Ok(())
        });
        futures_util::future::ready(r).boxed()
    }

    fn append<'a>(&'a self, id: &'a str, append: Append, mut body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        async move {
            let info = self.info(id).await?;
            if info.offset != append.offset {
                return Err(StoreError::OffsetMismatch {
                    expected: append.offset,
                    actual: info.offset,
                });
            }
            append.check_continues(&info)?;
            let prefix = append.prefix_len();
            // The held bytes come first when continued, and are discarded otherwise.
            let mut chunk = {
                let mut inner = self.lock();
                let kept = inner.held.remove(id).unwrap_or_default();
                if let Some((info, _)) = inner.uploads.get_mut(id) {
                    info.held = None;
                }
                if prefix > 0 { kept } else { Vec::new() }
            };
            let mut verifier = ChunkVerifier::new(&append);
            if verifier.needs_prefix(&append) > 0 {
                verifier.feed(&chunk)?;
            }
            let mut ended = None;
            while let Some(next) = body.next().await {
                match next.and_then(|b| verifier.feed(&b).map(|()| b)) {
                    Ok(b) => chunk.extend_from_slice(&b),
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
            }
            let judged = verifier.finish(ended, append.keep_prefix)?;
            let body = Bytes::copy_from_slice(&chunk[prefix as usize..]);
            if let Some(feed) = &append.running {
                feed.feed(vec![body]).await;
            }
            let mut inner = self.lock();
            let (info, data) = inner.uploads.get_mut(id).ok_or(StoreError::NotFound)?;
            data.truncate(info.offset as usize);
            match judged {
                Judged::Hold { len, hasher, cut } => {
                    info.held = append.checksum.as_ref().map(|c| HeldPrefix {
                        len,
                        checksum: c.to_header(),
                    });
                    info.expires = append.expires;
                    let appended = Appended {
                        info: info.clone(),
                        interrupted: Some(cut),
                        held: Some(hasher),
                    };
                    inner.held.insert(id.to_string(), chunk);
                    Ok(appended)
                }
                Judged::Commit(verdict) => {
                    data.extend_from_slice(&chunk); // exactly the bytes the verifier accepted
                    append.commit(info, verdict.received);
                    Ok(Appended {
                        info: info.clone(),
                        interrupted: verdict.interrupted,
                        held: None,
                    })
                }
            }
        }
        .boxed()
    }

    fn concatenate<'a>(
        &'a self,
        mut info: UploadInfo,
        parts: &'a [String],
        running: Option<DigestFeed>,
    ) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        let r = (|| {
            let mut inner = self.lock();
            let mut data = Vec::new();
            for p in parts {
                let (_, bytes) = inner.uploads.get(p).ok_or(StoreError::NotFound)?;
                data.extend_from_slice(bytes);
            }
            // A final created early (concatenation-unfinished) exists with no bytes yet.
            match inner.uploads.get(&info.id) {
                Some((existing, bytes)) if existing.offset > 0 || !bytes.is_empty() => return Err(StoreError::Exists),
                _ => {}
            }
            info.length = Some(data.len() as u64);
            info.offset = data.len() as u64;
            inner.uploads.insert(info.id.clone(), (info.clone(), data.clone()));
            Ok((info, Bytes::from(data)))
        })();
        async move {
            let (info, data) = r?;
            if let Some(feed) = running {
                feed.feed(vec![data]).await;
            }
            Ok(info)
        }
        .boxed()
    }

    fn link<'a>(&'a self, part: &'a str, final_id: &'a str, _base: u64) -> BoxFuture<'a, StoreResult<UploadInfo>> {
        // Memory holds each partial's bytes apart: nothing is placed, the final copies them.
        let r = self.with(part, |(info, _)| {
            if info.final_upload.is_none() {
                info.final_upload = Some(final_id.to_string());
            }
            Ok(info.clone())
        });
        futures_util::future::ready(r).boxed()
    }

    fn read<'a>(&'a self, id: &'a str, range: Range<u64>) -> BoxFuture<'a, StoreResult<ByteStream>> {
        let r = self.with(id, |(info, data)| {
            let end = range.end.min(info.offset) as usize;
            let start = (range.start as usize).min(end);
            let bytes = Bytes::copy_from_slice(&data[start..end]);
            Ok(futures_util::stream::iter([Ok(bytes)]).boxed())
        });
        futures_util::future::ready(r).boxed()
    }

    fn publish<'a>(&'a self, id: &'a str, name: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        let r = (|| {
            let mut inner = self.lock();
            if !inner.uploads.contains_key(id) {
                return Err(StoreError::NotFound);
            }
            let mut n = 0;
            let chosen = loop {
                let candidate = super::suffixed(name, n);
                if !inner.published.contains_key(&candidate) {
                    break candidate;
                }
                n += 1;
            };
            inner.published.insert(chosen.clone(), id.to_string());
            if let Some((info, _)) = inner.uploads.get_mut(id) {
                info.published = Some(chosen.clone());
            }
            Ok(chosen)
        })();
        futures_util::future::ready(r).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let r = (|| {
            let mut inner = self.lock();
            let (info, _) = inner.uploads.remove(id).ok_or(StoreError::NotFound)?;
            inner.held.remove(id);
            if let Some(p) = info.published {
                inner.published.remove(&p);
            }
            Ok(())
        })();
        futures_util::future::ready(r).boxed()
    }

    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.lock().held.remove(id);
        let r = self.with(id, |(info, data)| {
            data.clear();
            data.shrink_to_fit();
            info.state = UploadState::Expired;
            info.held = None;
            Ok(())
        });
        futures_util::future::ready(r).boxed()
    }

    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        let ids = self.lock().uploads.keys().cloned().collect();
        futures_util::future::ready(Ok(ids)).boxed()
    }
}
