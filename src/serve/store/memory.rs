//! An in-memory [`Store`] for tests: the same contract as the fs store, no durability.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};

use super::{Append, Appended, BodyStream, ByteStream, Store, StoreError, StoreResult, UploadInfo, UploadState};
use crate::serve::digest::DigestFeed;
use crate::serve::verify::ChunkVerifier;

#[derive(Default)]
struct Inner {
    uploads: HashMap<String, (UploadInfo, Vec<u8>)>,
    published: HashMap<String, String>,
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
                ..info
            };
            Ok(())
        });
        futures_util::future::ready(r).boxed()
    }

    fn append<'a>(&'a self, id: &'a str, append: Append, mut body: BodyStream) -> BoxFuture<'a, StoreResult<Appended>> {
        async move {
            let actual = self.info(id).await?.offset;
            if actual != append.offset {
                return Err(StoreError::OffsetMismatch {
                    expected: append.offset,
                    actual,
                });
            }
            let mut verifier = ChunkVerifier::new(&append);
            let mut buf = Vec::new();
            let mut ended = None;
            while let Some(next) = body.next().await {
                match next.and_then(|b| verifier.feed(&b).map(|()| b)) {
                    Ok(b) => buf.extend_from_slice(&b),
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
            }
            let verdict = verifier.finish(ended)?;
            let buf = Bytes::from(buf);
            if let Some(feed) = &append.running {
                feed.feed(vec![buf.clone()]).await;
            }
            self.with(id, |(info, data)| {
                data.truncate(info.offset as usize);
                data.extend_from_slice(&buf); // exactly the bytes the verifier accepted
                append.commit(info, verdict.received);
                Ok(Appended {
                    info: info.clone(),
                    interrupted: verdict.interrupted,
                })
            })
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
            if let Some(p) = info.published {
                inner.published.remove(&p);
            }
            Ok(())
        })();
        futures_util::future::ready(r).boxed()
    }

    fn expire<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let r = self.with(id, |(info, data)| {
            data.clear();
            data.shrink_to_fit();
            info.state = UploadState::Expired;
            Ok(())
        });
        futures_util::future::ready(r).boxed()
    }

    fn list(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        let ids = self.lock().uploads.keys().cloned().collect();
        futures_util::future::ready(Ok(ids)).boxed()
    }
}
