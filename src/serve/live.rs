//! What the server holds in memory for the uploads in progress, in [`Uploads`]: one writer at a
//! time per upload (a newer request takes over from a stalled one), the running whole-file
//! digests and the digest states of held prefixes, and the bytes the parts of an unfinished
//! final keep for its digest follower. None of it is needed for correctness across a restart
//! or across nodes: the store's info is the record (and, on S3, its conditional writes the
//! lock); what is here saves work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::digest::RunningDigest;
use crate::protocol::{ChecksumAlgorithm, ChecksumHasher};

#[derive(Default)]
struct Slot {
    writer: Arc<tokio::sync::Mutex<()>>,
    current: Mutex<CancellationToken>,
    progress: Arc<Progress>,
}

/// When the request holding an upload's lock last made progress (took the lock, or received
/// body bytes): a new PATCH takes over from it only once it has stalled.
#[derive(Debug)]
pub struct Progress(std::sync::atomic::AtomicU64);

impl Default for Progress {
    fn default() -> Self {
        let p = Progress(std::sync::atomic::AtomicU64::new(0));
        p.touch();
        p
    }
}

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Progress {
    /// Records progress now.
    pub fn touch(&self) {
        let now = epoch().elapsed().as_millis() as u64;
        self.0.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last progress.
    pub fn idle(&self) -> Duration {
        let then = self.0.load(std::sync::atomic::Ordering::Relaxed);
        let now = epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(then))
    }
}

/// A request holding an upload's lock that has received nothing for this long is stalled: a
/// new PATCH may take over from it (a HEAD or GET never does).
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// How long a new PATCH waits for a request that is still receiving bytes before it is
/// answered 423 (try again).
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A PATCH found another request still receiving bytes for the upload.
#[derive(Debug)]
pub struct Busy;

/// Exclusive access to one upload, until dropped. `cancel` fires when a newer request for the
/// same upload wants it.
pub struct Lease {
    _guard: OwnedMutexGuard<()>,
    /// Fires when a newer request takes over.
    pub cancel: CancellationToken,
    /// Where the holder records its progress (each body frame).
    pub progress: Arc<Progress>,
}

/// Per-upload locks and running whole-file digests (in memory; after a restart an MD5 digest is
/// resumed from the state the info keeps, which trails by a chunk or two).
#[derive(Default)]
pub struct Uploads {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    pub(super) running: Mutex<HashMap<String, RunningDigest>>,
    /// The digest followers of unfinished final uploads, by final upload id.
    pub(super) followers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Bytes of parts committed ahead of their final's follower, by final upload id.
    pub(super) ahead: Mutex<HashMap<String, Ahead>>,
    /// The digest state of each upload's held bytes, with how many they are.
    pub(super) prefixes: Mutex<HashMap<String, (u64, ChecksumHasher)>>,
    /// Set once the server is shutting down (request bodies are being given up).
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

/// Most bytes kept in memory for one follower; past it, an append waits a little for room,
/// then leaves its bytes to be read back. With parts handed out in file order this holds what
/// the other connections sent while the follower was still on an earlier part (about
/// (parallel - 1) × part size).
pub(super) const AHEAD_MAX: usize = 64 << 20;

/// Most bytes kept for all followers together (past it nothing more is kept, at once).
pub(super) const AHEAD_TOTAL_MAX: usize = 256 << 20;

/// Most bytes one append keeps for a follower (a longer body is read back instead).
pub(super) const COLLECT_MAX: usize = 16 << 20;

/// The committed appends of a final's parts that its follower has not reached yet, by their
/// position in the final upload.
pub(super) struct Ahead {
    pub(super) segments: std::collections::BTreeMap<u64, Vec<Bytes>>,
    pub(super) bytes: usize,
    /// Where the follower is: the position it hashes next.
    pub(super) next: tokio::sync::watch::Sender<u64>,
    /// Counts the parts' committed appends: the follower waits on it for more bytes.
    pub(super) appended: tokio::sync::watch::Sender<u64>,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead {
            segments: Default::default(),
            bytes: 0,
            next: tokio::sync::watch::Sender::new(0),
            appended: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// How long an append that finds no room waits for the follower to make some (its answer
/// waits too) before its bytes are left to be read back.
pub(super) const AHEAD_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a single insert/remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Uploads {
    fn slot(&self, id: &str) -> Arc<Slot> {
        Arc::clone(lock(&self.slots).entry(id.to_string()).or_default())
    }

    fn lease(slot: &Slot, guard: OwnedMutexGuard<()>) -> Lease {
        let cancel = CancellationToken::new();
        *lock(&slot.current) = cancel.clone();
        slot.progress.touch();
        Lease {
            _guard: guard,
            cancel,
            progress: Arc::clone(&slot.progress),
        }
    }

    /// Takes the upload's lock, telling a request still holding it to give up first: for
    /// what the upload's owner or the server decides (termination, expiry).
    pub async fn acquire(&self, id: &str) -> Lease {
        let slot = self.slot(id);
        lock(&slot.current).cancel();
        let guard = Arc::clone(&slot.writer).lock_owned().await;
        Self::lease(&slot, guard)
    }

    /// Takes the upload's lock for a new PATCH. A request holding it that has stalled
    /// ([`STALLED_AFTER`] without a byte: a client that went away) is told to give up; one
    /// that is still receiving is waited for, at most [`TAKEOVER_WAIT`], then [`Busy`].
    pub async fn acquire_for_patch(&self, id: &str) -> Result<Lease, Busy> {
        let slot = self.slot(id);
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            if let Ok(guard) = Arc::clone(&slot.writer).try_lock_owned() {
                return Ok(Self::lease(&slot, guard));
            }
            if slot.progress.idle() >= STALLED_AFTER {
                lock(&slot.current).cancel();
                let guard = Arc::clone(&slot.writer).lock_owned().await;
                return Ok(Self::lease(&slot, guard));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Busy);
            }
            let waited = tokio::time::timeout(Duration::from_millis(50), Arc::clone(&slot.writer).lock_owned()).await;
            if let Ok(guard) = waited {
                return Ok(Self::lease(&slot, guard));
            }
        }
    }

    /// Takes the upload's lock after whoever holds it now is done (nothing is cancelled): for
    /// short bookkeeping that must not throw away a chunk in flight.
    pub async fn acquire_waiting(&self, id: &str) -> Lease {
        let slot = self.slot(id);
        let guard = Arc::clone(&slot.writer).lock_owned().await;
        Self::lease(&slot, guard)
    }

    /// How long the request holding the upload's lock has received nothing, if one holds it.
    pub fn holder_idle(&self, id: &str) -> Option<Duration> {
        let slot = lock(&self.slots).get(id).cloned()?;
        slot.writer.try_lock().is_err().then(|| slot.progress.idle())
    }

    /// Whether a request holds the upload's lock right now.
    pub fn is_busy(&self, id: &str) -> bool {
        lock(&self.slots)
            .get(id)
            .is_some_and(|slot| slot.writer.try_lock().is_err())
    }

    /// Takes the running digest of `id` if it covers exactly `offset` bytes; an upload at
    /// offset 0 gets a new one. `None` when the digest was lost (a restart): the file is then
    /// hashed at its end.
    pub(super) fn take_running(
        &self,
        id: &str,
        offset: u64,
        algorithm: Option<ChecksumAlgorithm>,
    ) -> Option<RunningDigest> {
        let found = lock(&self.running).remove(id).filter(|d| d.offset() == offset);
        match (found, algorithm) {
            (Some(d), _) => Some(d),
            (None, Some(alg)) if offset == 0 => Some(RunningDigest::start(alg)),
            _ => None,
        }
    }

    pub(super) fn put_running(&self, id: &str, digest: RunningDigest) {
        lock(&self.running).insert(id.to_string(), digest);
    }

    pub(super) fn drop_running(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// Takes the digest state of the `len` bytes `id` holds, if it is in memory.
    pub(super) fn take_prefix(&self, id: &str, len: u64) -> Option<ChecksumHasher> {
        lock(&self.prefixes)
            .remove(id)
            .and_then(|(held, h)| (held == len).then_some(h))
    }

    pub(super) fn put_prefix(&self, id: &str, len: u64, hasher: ChecksumHasher) {
        lock(&self.prefixes).insert(id.to_string(), (len, hasher));
    }

    pub(super) fn drop_prefix(&self, id: &str) {
        lock(&self.prefixes).remove(id);
    }

    /// Tells every request holding an upload to give up (the server is shutting down): a chunk
    /// with a checksum is discarded, one without keeps what arrived; clients resume later.
    pub fn cancel_all(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        for slot in lock(&self.slots).values() {
            lock(&slot.current).cancel();
        }
    }

    /// Forgets everything held for `id`.
    pub fn forget(&self, id: &str) {
        lock(&self.running).remove(id);
        lock(&self.prefixes).remove(id);
        lock(&self.ahead).remove(id);
        lock(&self.slots).remove(id);
        if let Some(follower) = lock(&self.followers).remove(id) {
            follower.abort();
        }
    }

    /// Tells the follower of final upload `id` (if any) that one of its parts committed bytes.
    pub(super) fn notify_appended(&self, id: &str) {
        if let Some(ahead) = lock(&self.ahead).get(id) {
            ahead.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// What the follower of final upload `id` waits on for more bytes.
    pub(super) fn appends_of(&self, id: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        lock(&self.ahead).get(id).map(|a| a.appended.subscribe())
    }

    /// Whether a follower of final upload `id` takes bytes kept in memory.
    pub(super) fn is_following(&self, id: &str) -> bool {
        lock(&self.ahead).contains_key(id)
    }

    /// Keeps the committed bytes `at..` of final upload `id` for its follower. The bytes the
    /// follower needs next are always kept; others when there is room, else after waiting a
    /// little for the follower to make some (which holds back a connection that runs far
    /// ahead of the others); failing that, the follower reads them back from the store.
    pub(super) async fn keep_ahead(&self, id: &str, at: u64, bytes: Vec<Bytes>, len: usize) {
        let deadline = tokio::time::Instant::now() + AHEAD_WAIT;
        let mut moved = None;
        loop {
            {
                let mut all = lock(&self.ahead);
                let total: usize = all.values().map(|a| a.bytes).sum();
                if total + len > AHEAD_TOTAL_MAX {
                    return;
                }
                let Some(ahead) = all.get_mut(id) else {
                    return;
                };
                let next = *ahead.next.borrow();
                if at < next {
                    return; // the follower read these back already
                }
                if at == next || ahead.bytes + len <= AHEAD_MAX {
                    ahead.bytes += len;
                    ahead.segments.insert(at, bytes);
                    ahead.appended.send_modify(|n| *n = n.wrapping_add(1));
                    return;
                }
                if moved.is_none() {
                    moved = Some(ahead.next.subscribe());
                }
            }
            let Some(rx) = moved.as_mut() else {
                return;
            };
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                tracing::trace!(id, at, len, "no room to keep bytes ahead of the follower");
                return;
            }
        }
    }

    /// Drops the bytes kept for the follower of final upload `id` (it reads them back).
    pub(super) fn release_ahead(&self, id: &str) {
        if let Some(ahead) = lock(&self.ahead).get_mut(id)
            && ahead.bytes > 0
        {
            tracing::debug!(
                id,
                bytes = ahead.bytes,
                "the follower is idle; letting go of the bytes kept for it"
            );
            ahead.segments.clear();
            ahead.bytes = 0;
        }
    }

    /// The follower of final upload `id` has hashed everything before `at`.
    pub(super) fn follower_at(&self, id: &str, at: u64) {
        if let Some(ahead) = lock(&self.ahead).get(id) {
            ahead.next.send_replace(at);
        }
    }

    /// The kept bytes of final upload `id` that start at `at` (dropping any before it), or
    /// where the next kept bytes start.
    pub(super) fn take_ahead(&self, id: &str, at: u64) -> Result<Vec<Bytes>, Option<u64>> {
        let mut map = lock(&self.ahead);
        let Some(ahead) = map.get_mut(id) else {
            return Err(None);
        };
        while let Some(entry) = ahead.segments.first_entry() {
            let start = *entry.key();
            if start > at {
                return Err(Some(start));
            }
            let bytes = entry.remove();
            ahead.bytes -= bytes.iter().map(Bytes::len).sum::<usize>();
            if start == at {
                return Ok(bytes);
            }
        }
        Err(None)
    }
}
