//! The running whole-file digest of an upload, computed beside the upload rather than in its way.
//!
//! An upload whose metadata carries a `checksum` must be hashed whole before its last byte is
//! acknowledged. Hashing each chunk's bytes into that digest before answering the chunk would put
//! a second MD5 stream on every chunk's critical path, while the client waits and the CPU idles
//! between chunks. Instead a background task follows the committed bytes: the store hands it
//! each batch it writes ([`DigestFeed`]), the chunk is acknowledged as soon as its own checksum
//! and fsync allow, and the task catches up while the next chunk is on the wire. Only the last
//! chunk waits for it. The queue between them is bounded, so a lagging digest slows the writer
//! instead of holding memory.
//!
//! A checked chunk that starts afresh does better still: it borrows the digest's hasher
//! ([`DigestFeed::lend`]) and hashes its bytes into both its own MD5 and the whole-file one in
//! a single interleaved pass ([`crate::md5_engine::update_pair`]), for little more than the
//! cost of one; the hasher comes back ([`DigestFeed::give_back`]) before the chunk is
//! committed or rolled back, and the task has nothing left to catch up.
//!
//! The digest work runs on a few threads of its own at a lower scheduling priority (nice 10), so
//! that on a busy machine it yields to the work the client is waiting for (the chunk's own
//! checksum, the network, the writes) and uses the time between chunks instead.
//!
//! A chunk that is refused (checksum mismatch, cut off, disk full) is rolled back: the task
//! returns to the state of the last committed byte. Each committed position it reaches is saved
//! (MD5's serialisable state), and the store records it with the next offset: a restarted server
//! resumes the digest there and hashes only the bytes after it. If anything goes out of step the
//! digest reports nothing and the caller re-reads the file, which is always correct.

use std::sync::{Mutex, OnceLock, mpsc as std_mpsc};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{ChecksumAlgorithm, ChecksumHasher};

/// Batches (of about 1 MiB) that may wait for the digest task: bounds the lag, and the memory
/// it holds, to about 4 MiB per upload (a few milliseconds of hashing: enough to keep the
/// digest busy, little enough that 50 uploads whose digests all lag stay bounded).
const QUEUE: usize = 4;

enum Msg {
    Data(Vec<Bytes>),
    Commit(u64),
    Rollback,
    Finish(oneshot::Sender<Option<(u64, Vec<u8>)>>),
    /// Hand the hasher out if it has hashed exactly the bytes before this offset.
    Lend(u64, oneshot::Sender<ChecksumHasher>),
    /// The hasher lent, back with this many more bytes hashed.
    Return(ChecksumHasher, u64),
}

/// Hands the bytes an append writes to the running digest, in order (or to a [`Collected`]).
#[derive(Clone)]
pub struct DigestFeed {
    to: FeedTarget,
}

#[derive(Clone)]
enum FeedTarget {
    Digest(mpsc::Sender<Msg>),
    Collect(std::sync::Arc<Mutex<Kept>>),
}

/// What a [`Collected`] holds: the bytes, or nothing once they went past the limit.
#[derive(Default)]
struct Kept {
    bytes: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
}

impl Kept {
    fn add(&mut self, batch: Vec<Bytes>) {
        if self.overflowed {
            return;
        }
        self.len += batch.iter().map(Bytes::len).sum::<usize>();
        if self.len > self.limit {
            self.overflowed = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend(batch);
        }
    }
}

impl DigestFeed {
    /// Queues a batch of bytes (waits while the digest is `QUEUE` batches behind).
    pub async fn feed(&self, batch: Vec<Bytes>) {
        match &self.to {
            // A closed task only means the digest is gone; the file will be re-read at the end.
            FeedTarget::Digest(tx) => {
                let _ = tx.send(Msg::Data(batch)).await;
            }
            FeedTarget::Collect(kept) => kept.lock().unwrap_or_else(|p| p.into_inner()).add(batch),
        }
    }

    /// The digest's hasher, lent to the append that starts at `offset` so that it hashes its
    /// bytes together with its chunk check, in one pass ([`crate::serve::verify::ChunkVerifier::carry`]):
    /// waits for the digest to catch up; `None` if it is not at `offset` (or lost step, or
    /// this feed only collects bytes). The append then feeds nothing and hands the hasher
    /// back with [`DigestFeed::give_back`] before it commits or rolls back; one that never
    /// does leaves the digest without a hasher until a rollback returns it to its last
    /// committed state (a commit without it loses step: the file is then re-read).
    pub async fn lend(&self, offset: u64) -> Option<ChecksumHasher> {
        let FeedTarget::Digest(tx) = &self.to else { return None };
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Lend(offset, reply)).await.ok()?;
        answer.await.ok()
    }

    /// Returns a hasher [`DigestFeed::lend`] gave out, `fed` bytes further on.
    pub async fn give_back(&self, hasher: ChecksumHasher, fed: u64) {
        if let FeedTarget::Digest(tx) = &self.to {
            let _ = tx.send(Msg::Return(hasher, fed)).await;
        }
    }
}

/// The bytes of one append, kept (as shared frames, not copies) for a digest that is not ready
/// for them yet: a part of a parallel upload that arrives ahead of the final's digest.
pub struct Collected {
    kept: std::sync::Arc<Mutex<Kept>>,
}

impl Collected {
    /// Keeps at most `limit` bytes: an append that brings more keeps nothing.
    pub fn up_to(limit: usize) -> Self {
        Collected {
            kept: std::sync::Arc::new(Mutex::new(Kept {
                limit,
                ..Kept::default()
            })),
        }
    }

    /// Where the append sends its bytes.
    pub fn feed(&self) -> DigestFeed {
        DigestFeed {
            to: FeedTarget::Collect(std::sync::Arc::clone(&self.kept)),
        }
    }

    /// Everything fed, in order; `None` if it went past the limit.
    pub fn take(self) -> Option<Vec<Bytes>> {
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()));
        (!kept.overflowed).then_some(kept.bytes)
    }
}

/// A whole-file MD5 that can be stopped and resumed anywhere: its state travels as base64 in
/// the upload's info ([`ChecksumHasher::saved_state`]), so the node that receives the next
/// bytes continues it.
#[derive(Clone)]
pub struct WholeMd5(ChecksumHasher);

impl WholeMd5 {
    /// Resumes from a saved state, or starts afresh without one.
    pub fn resume(state: Option<&str>) -> Result<Self, String> {
        match state {
            Some(state) => ChecksumHasher::resume_md5(state).map(WholeMd5),
            None => Ok(WholeMd5(ChecksumAlgorithm::Md5.hasher())),
        }
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The state to save.
    pub fn state(&self) -> String {
        self.0.saved_state().unwrap_or_default()
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Vec<u8> {
        self.0.finish()
    }
}

/// One upload's running digest: the bytes `0..offset()` once the task has caught up.
pub struct RunningDigest {
    tx: mpsc::Sender<Msg>,
    committed: u64,
    /// The latest committed position the task has hashed up to, with the MD5's saved state.
    saved: std::sync::Arc<Mutex<Option<(u64, String)>>>,
}

impl RunningDigest {
    /// Starts a digest of an upload that has no bytes yet, hashed on low-priority threads: it
    /// follows appends that are busy hashing their own chunks, and only the last one waits.
    pub fn start(algorithm: ChecksumAlgorithm) -> Self {
        Self::start_at(algorithm, false)
    }

    /// Like [`RunningDigest::start`], hashed at normal priority: for a digest that would
    /// otherwise be left alone with most of its work at the end (the follower of a parallel
    /// upload's parts, which shares the cores with their chunk checks).
    pub fn start_urgent(algorithm: ChecksumAlgorithm) -> Self {
        Self::start_at(algorithm, true)
    }

    fn start_at(algorithm: ChecksumAlgorithm, urgent: bool) -> Self {
        Self::spawn(algorithm.hasher(), 0, urgent)
    }

    /// Resumes a digest of bytes `0..at` from its saved state (an MD5's, from the info).
    pub fn resume(state: &str, at: u64) -> Result<Self, String> {
        Ok(Self::spawn(ChecksumHasher::resume_md5(state)?, at, false))
    }

    fn spawn(hasher: ChecksumHasher, at: u64, urgent: bool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let saved = std::sync::Arc::new(Mutex::new(hasher.saved_state().map(|s| (at, s))));
        tokio::spawn(run(rx, hasher, at, urgent, std::sync::Arc::clone(&saved)));
        RunningDigest {
            tx,
            committed: at,
            saved,
        }
    }

    /// The latest committed position hashed so far, with the digest's saved state (MD5 only):
    /// what the info keeps so that a restarted server resumes here instead of re-reading the file.
    pub fn saved(&self) -> Option<(u64, String)> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The upload offset the digest covers once its queue is drained.
    pub fn offset(&self) -> u64 {
        self.committed
    }

    /// Where an append sends its bytes.
    pub fn feed(&self) -> DigestFeed {
        DigestFeed {
            to: FeedTarget::Digest(self.tx.clone()),
        }
    }

    /// The append that fed the digest committed the upload up to `offset`.
    pub async fn commit(&mut self, offset: u64) {
        self.committed = offset;
        let _ = self.tx.send(Msg::Commit(offset)).await;
    }

    /// The append that fed the digest committed nothing: forget what it fed.
    pub async fn rollback(&mut self) {
        let _ = self.tx.send(Msg::Rollback).await;
    }

    /// Waits for the task to catch up and returns the digest of `0..offset()`, or `None` when
    /// it lost step (the caller then hashes the stored file).
    pub async fn finish(self) -> Option<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Finish(reply)).await.ok()?;
        match answer.await.ok()? {
            Some((at, digest)) if at == self.committed => Some(digest),
            _ => None,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on a background hashing thread; `None` if that thread is gone.
async fn in_background<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static POOL: OnceLock<Option<Mutex<std_mpsc::Sender<Job>>>> = OnceLock::new();
    let pool = POOL.get_or_init(start_pool).as_ref()?;
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool.lock().unwrap_or_else(|p| p.into_inner()).send(job).ok()?;
    rx.await.ok()
}

/// Half the machine's cores (at least one) of low-priority threads sharing one queue.
fn start_pool() -> Option<Mutex<std_mpsc::Sender<Job>>> {
    let (tx, rx) = std_mpsc::channel::<Job>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let mut started = 0;
    for i in 0..threads {
        let rx = std::sync::Arc::clone(&rx);
        let spawned = std::thread::Builder::new()
            .name(format!("robusto-digest-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if spawned.is_ok() {
            started += 1;
        }
    }
    (started > 0).then(|| Mutex::new(tx))
}

/// Runs `f` on a thread of its own at low priority (nice 10): for work that should yield the
/// CPU to other work of the server. The handle resolves to `f`'s result (an error if it
/// panicked or no thread could be started).
pub fn spawn_yielding<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || {
        let thread = std::thread::Builder::new()
            .name("robusto-yielding".into())
            .spawn(move || {
                lower_priority();
                f()
            });
        match thread.map(|t| t.join()) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => std::panic::resume_unwind(Box::new(format!("no thread for the work: {e}"))),
        }
    })
}

/// Gives the calling thread nice 10 (Linux schedules threads individually).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

async fn run(
    mut rx: mpsc::Receiver<Msg>,
    start: ChecksumHasher,
    at: u64,
    urgent: bool,
    saved: std::sync::Arc<Mutex<Option<(u64, String)>>>,
) {
    let mut hasher = Some(start.clone());
    let mut checkpoint = start;
    let mut hashed = at;
    let mut at_checkpoint = at;
    let mut in_step = true;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Data(batch) => {
                hashed += batch.iter().map(|b| b.len() as u64).sum::<u64>();
                let Some(mut h) = hasher.take() else { continue };
                let work = move || {
                    batch.iter().for_each(|b| h.update(b));
                    h
                };
                hasher = if urgent {
                    tokio::task::spawn_blocking(work).await.ok()
                } else {
                    in_background(work).await
                };
                in_step &= hasher.is_some();
            }
            Msg::Commit(offset) => match &hasher {
                Some(h) if in_step && hashed == offset => {
                    checkpoint = h.clone();
                    at_checkpoint = offset;
                    if let Some(state) = checkpoint.saved_state() {
                        *saved.lock().unwrap_or_else(|p| p.into_inner()) = Some((offset, state));
                    }
                }
                _ => in_step = false,
            },
            Msg::Rollback => {
                hasher = Some(checkpoint.clone());
                hashed = at_checkpoint;
            }
            Msg::Lend(offset, reply) => {
                if in_step
                    && hashed == offset
                    && let Some(h) = hasher.take()
                    && let Err(h) = reply.send(h)
                {
                    hasher = Some(h); // nobody took it
                }
            }
            Msg::Return(h, fed) => {
                if hasher.is_none() {
                    hasher = Some(h);
                    hashed += fed;
                } else {
                    in_step = false; // nothing was lent
                }
            }
            Msg::Finish(reply) => {
                let _ = reply.send(in_step.then(|| (at_checkpoint, checkpoint.finish())));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Md5;

    fn batch(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[tokio::test]
    async fn follows_committed_bytes_and_forgets_refused_ones() {
        let mut d = RunningDigest::start(ChecksumAlgorithm::Md5);
        d.feed().feed(batch(&[b"hello ", b"wor"])).await;
        d.commit(9).await;
        d.feed().feed(batch(&[b"XXXX"])).await; // a refused chunk
        d.rollback().await;
        d.feed().feed(batch(&[b"ld"])).await;
        d.commit(11).await;
        assert_eq!(d.offset(), 11);
        assert_eq!(d.finish().await.unwrap(), Md5::of(b"hello world").0.to_vec());
    }

    #[tokio::test]
    async fn out_of_step_reports_nothing() {
        let mut d = RunningDigest::start(ChecksumAlgorithm::Md5);
        d.feed().feed(batch(&[b"abc"])).await;
        d.commit(4).await; // four bytes committed, three hashed
        assert_eq!(d.finish().await, None);
    }

    #[tokio::test]
    async fn a_lent_hasher_hashes_the_append_and_comes_back() {
        let mut d = RunningDigest::start(ChecksumAlgorithm::Md5);
        d.feed().feed(batch(&[b"hello "])).await;
        d.commit(6).await;
        let feed = d.feed();
        assert!(feed.lend(5).await.is_none(), "not at that offset");
        let mut whole = feed.lend(6).await.unwrap();
        let mut chunk = ChecksumAlgorithm::Md5.hasher();
        chunk.update_both(&mut whole, b"world");
        feed.give_back(whole, 5).await;
        d.commit(11).await;
        assert_eq!(chunk.finish(), Md5::of(b"world").0.to_vec());
        // a refused append's bytes are forgotten, lent or not
        let feed = d.feed();
        let mut whole = feed.lend(11).await.unwrap();
        whole.update(b"XXXX");
        feed.give_back(whole, 4).await;
        d.rollback().await;
        let _ = d.feed().lend(11).await.unwrap(); // never given back: a rollback recovers
        d.rollback().await;
        d.feed().feed(batch(&[b"!"])).await;
        d.commit(12).await;
        assert_eq!(d.finish().await.unwrap(), Md5::of(b"hello world!").0.to_vec());
    }

    #[tokio::test]
    async fn a_commit_without_the_lent_hasher_loses_step() {
        let mut d = RunningDigest::start(ChecksumAlgorithm::Md5);
        let _kept = d.feed().lend(0).await.unwrap();
        d.commit(3).await;
        assert_eq!(d.finish().await, None);
    }

    #[tokio::test]
    async fn empty_upload() {
        let d = RunningDigest::start(ChecksumAlgorithm::Md5);
        assert_eq!(d.finish().await.unwrap(), Md5::of(b"").0.to_vec());
    }
}
