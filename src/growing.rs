//! An archive that is still being written, as its sender sees it: which bytes are in the file,
//! which chunks are hashed, and, at the end, its size and MD5. The packer's threads report to it
//! (the writing thread after each write, the chunk-hashing thread after each chunk); `push`'s
//! sender waits on it for the next chunk it can send, so that sending follows packing chunk by
//! chunk. An archive packed earlier is one whose end is known from the start
//! ([`Growing::complete`]).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::fingerprint::{ChunkDigest, Md5};
use crate::manifest::Manifest;

/// The end of an archive: all of it is written and hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Its size in bytes.
    pub size: u64,
    /// Its MD5.
    pub md5: Md5,
}

#[derive(Clone, Debug, Default)]
struct State {
    /// The file being written, once created.
    file: Option<Arc<File>>,
    /// Bytes handed to the file (readable by another descriptor of it).
    written: u64,
    /// The chunks hashed so far, in order.
    chunks: Vec<ChunkDigest>,
    /// Known once the last byte is written and hashed.
    end: Option<End>,
    /// Why the packer stopped, if it failed.
    failed: Option<String>,
    /// The archive is in place under its name, with its manifest beside it.
    committed: bool,
}

/// The packer stopped before the end: the archive will not be finished by this run.
#[derive(Clone, Debug, thiserror::Error)]
#[error("packing stopped: {0}")]
pub struct Stopped(pub String);

/// A chunk ready to send: hashed, and every byte of it in the file.
#[derive(Clone, Debug)]
pub struct Ready {
    /// Its digest.
    pub chunk: ChunkDigest,
    /// Whether it is the archive's last chunk (its end is then known).
    pub last: bool,
}

/// An archive being written, shared by its packer and its sender.
#[derive(Debug)]
pub struct Growing {
    chunk_size: u64,
    state: watch::Sender<State>,
    /// The sender gave up for good: the packer stops at its next write.
    cancelled: AtomicBool,
}

impl Growing {
    /// An archive about to be written, cut into chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u64) -> Arc<Self> {
        Arc::new(Growing {
            chunk_size: chunk_size.max(1),
            state: watch::Sender::new(State::default()),
            cancelled: AtomicBool::new(false),
        })
    }

    /// An archive written already: `file` with its `manifest`.
    pub fn complete(file: Arc<File>, manifest: &Manifest) -> Arc<Self> {
        let g = Growing::new(manifest.chunk_size);
        g.fill(file, manifest);
        g
    }

    /// Makes this the archive written already: `file` with its `manifest` (a rerun that finds
    /// the archive an earlier run packed).
    pub fn fill(&self, file: Arc<File>, manifest: &Manifest) {
        self.state.send_modify(|s| {
            s.file = Some(file);
            s.written = manifest.archive.size;
            s.chunks = manifest.chunks.clone();
            s.end = Some(End {
                size: manifest.archive.size,
                md5: manifest.archive.md5,
            });
            s.failed = None;
            s.committed = true;
        });
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    // --- the packer's side

    /// The archive's file was created: a descriptor of it open for reading.
    pub fn opened(&self, file: File) {
        self.state.send_modify(|s| s.file = Some(Arc::new(file)));
    }

    /// `n` more bytes were written to the file.
    pub fn wrote(&self, n: u64) {
        self.state.send_modify(|s| s.written += n);
    }

    /// The next chunk was hashed.
    pub fn hashed(&self, chunk: ChunkDigest) {
        self.state.send_modify(|s| s.chunks.push(chunk));
    }

    /// Every byte is written and hashed.
    pub fn finished(&self, size: u64, md5: Md5) {
        self.state.send_modify(|s| {
            s.written = size;
            s.end = Some(End { size, md5 });
        });
    }

    /// Whether the sender gave up for good ([`Growing::cancel`]): packing on is pointless.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The archive and its manifest are in place.
    pub fn committed(&self) {
        self.state.send_modify(|s| s.committed = true);
    }

    /// The packer stopped for `reason`; a sender waiting for more gives up.
    pub fn failed(&self, reason: String) {
        self.state.send_modify(|s| {
            if !s.committed {
                s.failed.get_or_insert(reason);
            }
        });
    }

    // --- the sender's side

    /// The send failed in a way another run would not fix: the packer stops.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// The end, if the archive is finished.
    pub fn end(&self) -> Option<End> {
        self.state.borrow().end
    }

    /// Bytes written so far (the archive's size once finished).
    pub fn written(&self) -> u64 {
        self.state.borrow().written
    }

    /// Waits until the archive and its manifest are in place.
    pub async fn until_committed(&self) -> Result<(), Stopped> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.committed || s.failed.is_some())
            .await
            .map_err(|_| Stopped("the packer went away".into()))?;
        match &s.failed {
            Some(why) => Err(Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Waits for the end: every byte written and hashed.
    pub async fn until_end(&self) -> Result<End, Stopped> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.end.is_some() || s.failed.is_some())
            .await
            .map_err(|_| Stopped("the packer went away".into()))?;
        match (s.end, &s.failed) {
            (Some(end), _) => Ok(end),
            (None, Some(why)) => Err(Stopped(why.clone())),
            (None, None) => Err(Stopped("the packer went away".into())),
        }
    }

    /// The file, once created.
    pub async fn file(&self) -> Result<Arc<File>, Stopped> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.file.is_some() || s.failed.is_some())
            .await
            .map_err(|_| Stopped("the packer went away".into()))?;
        match (&s.file, &s.failed) {
            (Some(f), _) => Ok(f.clone()),
            (None, Some(why)) => Err(Stopped(why.clone())),
            (None, None) => Err(Stopped("the packer went away".into())),
        }
    }

    /// Chunk `index` once it is hashed and in the file, and whether it is the last one; `None`
    /// when the archive ended before it.
    pub async fn chunk(&self, index: usize) -> Result<Option<Ready>, Stopped> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.failed.is_some() || s.end.is_some() || Self::ready(s, index).is_some())
            .await
            .map_err(|_| Stopped("the packer went away".into()))?;
        if let Some(r) = Self::ready(&s, index) {
            return Ok(Some(r));
        }
        match &s.failed {
            Some(why) if s.end.is_none() => Err(Stopped(why.clone())),
            _ => Ok(None),
        }
    }

    /// Chunk `index` if it is ready now (see [`Growing::chunk`]), without waiting.
    pub fn chunk_now(&self, index: usize) -> Option<Ready> {
        Self::ready(&self.state.borrow(), index)
    }

    /// A chunk is ready when it is hashed, its bytes are in the file, and either a byte follows
    /// it or the archive's end is known (so the sender knows whether it is the last).
    fn ready(s: &State, index: usize) -> Option<Ready> {
        let chunk = *s.chunks.get(index)?;
        let end = chunk.offset + chunk.len;
        match s.end {
            Some(e) => Some(Ready {
                chunk,
                last: end == e.size,
            }),
            None if s.written > end => Some(Ready { chunk, last: false }),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(offset: u64, len: u64) -> ChunkDigest {
        ChunkDigest {
            offset,
            len,
            md5: Md5::of(&offset.to_le_bytes()),
        }
    }

    #[tokio::test]
    async fn chunks_are_ready_once_written_hashed_and_followed() {
        let g = Growing::new(10);
        assert!(g.chunk_now(0).is_none());
        g.wrote(10);
        g.hashed(digest(0, 10));
        assert!(g.chunk_now(0).is_none(), "nothing follows it yet: it may be the last");
        g.wrote(3);
        let r = g.chunk(0).await.unwrap().unwrap();
        assert!(!r.last);
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.chunk(1).await })
        };
        g.hashed(digest(10, 3));
        g.finished(13, Md5::of(b"x"));
        let r = waiter.await.unwrap().unwrap().unwrap();
        assert!(r.last);
        assert_eq!(r.chunk.offset, 10);
        assert!(g.chunk(2).await.unwrap().is_none(), "past the end");
        assert_eq!(g.end().unwrap().size, 13);
    }

    #[tokio::test]
    async fn a_failed_packer_stops_its_sender() {
        let g = Growing::new(10);
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.chunk(0).await })
        };
        g.failed("disk full".into());
        let e = waiter.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("disk full"));
        assert!(g.file().await.is_err());
    }
}
