//! The life of an upload: ids, creation, one writer at a time (with stale-lock takeover),
//! appending with running digests, the whole-file check and publication at the last byte, and
//! the expiry sweeper.
//!
//! Concatenation. A final upload of complete parts is copied together, checked and published
//! at once. One created while its parts are still arriving (`concatenation-unfinished`) is
//! recorded with its length; its parts are linked to it, and those without bytes yet write
//! straight into its data (`placed_at`, where the store can). A follower task hashes the parts
//! in file order as they commit, mostly from the bytes their appends keep in memory for it
//! (bounded; an append running far ahead waits briefly for room, else its bytes are read
//! back). The last part to complete finishes the final in the background: the parts not in
//! place are copied in, the follower's digest is compared with the `checksum` metadata, and
//! the file is published. Losing any of this in memory (a restart) only costs a re-read.
//!
//! Each function that acts on one upload runs in a debug-level span carrying its id (the
//! handler's info-level span carries it in default logs); what it counts goes to
//! [`super::metrics`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, instrument};

use super::AppState;
use bytes::Bytes;

use super::digest::{Collected, RunningDigest};
use super::error::ServeError;
use super::store::{Append, BodyStream, Continuation, UploadInfo, UploadState};
use super::verify::{digest_stream, expected_whole};
use crate::protocol::Listed;
use crate::protocol::{
    ChecksumAlgorithm, ChecksumHasher, DEFAULT_CHUNK_SIZE, Metadata, Status, StatusReport, chunks_received, meta,
};

/// A fresh unguessable upload id: 128 random bits as 32 lowercase hex digits.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether `id` has the shape of an upload id (and so is safe as a file name).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A file name from the `filename` metadata that is safe to create inside the publish folder:
/// only its last path component, no NUL or control characters, not `.`/`..`, at most 200
/// bytes; `fallback` (the upload id) when nothing usable is left.
pub fn sanitize_filename(name: Option<&str>, fallback: &str) -> String {
    let base = name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let mut base = base.trim().to_string();
    while base.len() > 200 {
        base.pop();
    }
    if base.is_empty() || base == "." || base == ".." {
        fallback.to_string()
    } else {
        base
    }
}

/// The upload ids named by `Upload-Concat: final;<urls>` (each URL's last path segment).
pub fn concat_part_ids(list: &str) -> Result<Vec<String>, ServeError> {
    list.split_whitespace()
        .map(|url| {
            let id = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if is_valid_id(id) {
                Ok(id.to_string())
            } else {
                Err(ServeError::BadRequest(format!(
                    "'{url}' in Upload-Concat is not an upload URL of this server"
                )))
            }
        })
        .collect()
}

/// The partial upload ids of a final upload's info.
fn parts_of(info: &UploadInfo) -> Result<Vec<String>, ServeError> {
    let list = info
        .concat
        .as_deref()
        .and_then(|c| c.strip_prefix("final;"))
        .ok_or_else(|| ServeError::BadRequest(format!("{} is not a final upload", info.id)))?;
    concat_part_ids(list)
}

/// Who is asking: the hash of the bearer token, or `None` when the server runs without tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner(pub Option<String>);

#[derive(Default)]
struct Slot {
    writer: Arc<tokio::sync::Mutex<()>>,
    current: Mutex<CancellationToken>,
}

/// Exclusive access to one upload, until dropped. `cancel` fires when a newer request for the
/// same upload wants it.
pub struct Lease {
    _guard: OwnedMutexGuard<()>,
    /// Fires when a newer request takes over.
    pub cancel: CancellationToken,
}

/// Per-upload locks and running whole-file digests (in memory; lost on restart, which only
/// costs one re-read of the file at its end).
#[derive(Default)]
pub struct Uploads {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    running: Mutex<HashMap<String, RunningDigest>>,
    /// The digest followers of unfinished final uploads, by final upload id.
    followers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Bytes of parts committed ahead of their final's follower, by final upload id.
    ahead: Mutex<HashMap<String, Ahead>>,
    /// The digest state of each upload's held bytes, with how many they are.
    prefixes: Mutex<HashMap<String, (u64, ChecksumHasher)>>,
    /// Set once the server is shutting down (request bodies are being given up).
    stopping: std::sync::atomic::AtomicBool,
}

/// Most bytes kept in memory for one follower; past it, an append waits a little for room,
/// then leaves its bytes to be read back. With parts handed out in file order this holds what
/// the other connections sent while the follower was still on an earlier part (about
/// (parallel - 1) × part size).
const AHEAD_MAX: usize = 64 << 20;

/// Most bytes kept for all followers together (past it nothing more is kept, at once).
const AHEAD_TOTAL_MAX: usize = 256 << 20;

/// Most bytes one append keeps for a follower (a longer body is read back instead).
const COLLECT_MAX: usize = 16 << 20;

/// The committed appends of a final's parts that its follower has not reached yet, by their
/// position in the final upload.
struct Ahead {
    segments: std::collections::BTreeMap<u64, Vec<Bytes>>,
    bytes: usize,
    /// Where the follower is: the position it hashes next.
    next: tokio::sync::watch::Sender<u64>,
    /// Counts the parts' committed appends: the follower waits on it for more bytes.
    appended: tokio::sync::watch::Sender<u64>,
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
const AHEAD_WAIT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is a single insert/remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Uploads {
    /// Takes the upload's lock. A request still holding it (a PATCH whose client went away) is
    /// told to give up first, so a reconnecting client never waits on a dead one for long.
    pub async fn acquire(&self, id: &str) -> Lease {
        let slot = Arc::clone(lock(&self.slots).entry(id.to_string()).or_default());
        lock(&slot.current).cancel();
        let guard = Arc::clone(&slot.writer).lock_owned().await;
        let cancel = CancellationToken::new();
        *lock(&slot.current) = cancel.clone();
        Lease { _guard: guard, cancel }
    }

    /// Takes the upload's lock after whoever holds it now is done (nothing is cancelled): for
    /// short bookkeeping that must not throw away a chunk in flight.
    pub async fn acquire_waiting(&self, id: &str) -> Lease {
        let slot = Arc::clone(lock(&self.slots).entry(id.to_string()).or_default());
        let guard = Arc::clone(&slot.writer).lock_owned().await;
        let cancel = CancellationToken::new();
        *lock(&slot.current) = cancel.clone();
        Lease { _guard: guard, cancel }
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
    fn take_running(&self, id: &str, offset: u64, algorithm: Option<ChecksumAlgorithm>) -> Option<RunningDigest> {
        let found = lock(&self.running).remove(id).filter(|d| d.offset() == offset);
        match (found, algorithm) {
            (Some(d), _) => Some(d),
            (None, Some(alg)) if offset == 0 => Some(RunningDigest::start(alg)),
            _ => None,
        }
    }

    fn put_running(&self, id: &str, digest: RunningDigest) {
        lock(&self.running).insert(id.to_string(), digest);
    }

    fn drop_running(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// Takes the digest state of the `len` bytes `id` holds, if it is in memory.
    fn take_prefix(&self, id: &str, len: u64) -> Option<ChecksumHasher> {
        lock(&self.prefixes)
            .remove(id)
            .and_then(|(held, h)| (held == len).then_some(h))
    }

    fn put_prefix(&self, id: &str, len: u64, hasher: ChecksumHasher) {
        lock(&self.prefixes).insert(id.to_string(), (len, hasher));
    }

    fn drop_prefix(&self, id: &str) {
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
    fn notify_appended(&self, id: &str) {
        if let Some(ahead) = lock(&self.ahead).get(id) {
            ahead.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// What the follower of final upload `id` waits on for more bytes.
    fn appends_of(&self, id: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        lock(&self.ahead).get(id).map(|a| a.appended.subscribe())
    }

    /// Whether a follower of final upload `id` takes bytes kept in memory.
    fn is_following(&self, id: &str) -> bool {
        lock(&self.ahead).contains_key(id)
    }

    /// Keeps the committed bytes `at..` of final upload `id` for its follower. The bytes the
    /// follower needs next are always kept; others when there is room, else after waiting a
    /// little for the follower to make some (which holds back a connection that runs far
    /// ahead of the others); failing that, the follower reads them back from the store.
    async fn keep_ahead(&self, id: &str, at: u64, bytes: Vec<Bytes>, len: usize) {
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
    fn release_ahead(&self, id: &str) {
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
    fn follower_at(&self, id: &str, at: u64) {
        if let Some(ahead) = lock(&self.ahead).get(id) {
            ahead.next.send_replace(at);
        }
    }

    /// The kept bytes of final upload `id` that start at `at` (dropping any before it), or
    /// where the next kept bytes start.
    fn take_ahead(&self, id: &str, at: u64) -> Result<Vec<Bytes>, Option<u64>> {
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

/// What a creation request asks for.
pub struct Creation {
    /// `Upload-Length`, or `None` for `Upload-Defer-Length: 1`.
    pub length: Option<u64>,
    /// `Upload-Metadata` as sent.
    pub metadata: Option<String>,
    /// `Upload-Concat` as sent.
    pub concat: Option<String>,
}

fn expiry(state: &AppState) -> Option<u64> {
    Some(now_secs().saturating_add(state.config.expire_after.as_secs()))
}

/// Loads an upload for `owner`: another token's upload does not exist; an unfinished upload
/// past its expiry reads as expired (the sweeper frees its bytes, under the upload's lock).
pub async fn load(state: &AppState, id: &str, owner: &Owner) -> Result<UploadInfo, ServeError> {
    if !is_valid_id(id) {
        return Err(ServeError::NotFound);
    }
    let mut info = state.store.info(id).await?;
    if info.owner != owner.0 {
        return Err(ServeError::NotFound);
    }
    if info.state == UploadState::Receiving && info.expires.is_some_and(|e| now_secs() >= e) {
        info.state = UploadState::Expired;
    }
    Ok(info)
}

/// Like [`load`], for requests that continue an upload: expired and failed uploads are gone.
pub async fn load_live(state: &AppState, id: &str, owner: &Owner) -> Result<UploadInfo, ServeError> {
    let info = load(state, id, owner).await?;
    match info.state {
        UploadState::Expired => Err(ServeError::Gone("the upload expired; start a new upload".into())),
        UploadState::Error => Err(ServeError::Gone(format!(
            "the upload failed ({}); start a new upload",
            info.error.as_deref().unwrap_or("error")
        ))),
        _ => Ok(info),
    }
}

/// Creates an upload (not a final one); an empty upload is complete at once.
#[instrument(level = "debug", skip_all, fields(id = tracing::field::Empty))]
pub async fn create(state: &AppState, owner: &Owner, req: Creation) -> Result<UploadInfo, ServeError> {
    let id = new_id();
    // Into this span, or the handler's when this one is off.
    tracing::Span::current().record("id", tracing::field::display(&id));
    let mut info = UploadInfo::new(id, req.length, now_secs());
    info.metadata = req.metadata;
    info.concat = req.concat;
    info.owner = owner.0.clone();
    info.expires = expiry(state);
    state.store.create(info.clone()).await?;
    state.metrics.created(&info);
    if info.is_partial() {
        tracing::debug!(id = %info.id, length = ?info.length, "partial upload created");
    } else {
        tracing::info!(id = %info.id, length = ?info.length, "upload created");
    }
    if info.is_full() {
        info = finish(state, info).await?;
    }
    Ok(info)
}

/// Creates a final upload from partial uploads. When all are complete it is concatenated,
/// checked and published at once; otherwise (`concatenation-unfinished`) it waits for them: its
/// parts are linked to it (and, where the store can, write straight into it), a digest
/// follower hashes their bytes in order as they arrive, and the last part to complete finishes
/// it.
#[instrument(level = "debug", skip_all, fields(id = tracing::field::Empty, parts = parts.len()))]
pub async fn concatenate(
    state: &AppState,
    owner: &Owner,
    metadata: Option<String>,
    concat: String,
    parts: Vec<String>,
) -> Result<UploadInfo, ServeError> {
    let mut infos = Vec::with_capacity(parts.len());
    for id in &parts {
        let part = load(state, id, owner).await?;
        if !part.is_partial() {
            return Err(ServeError::BadRequest(format!("{id} is not a partial upload")));
        }
        infos.push(part);
    }
    let unfinished = infos.iter().any(|p| p.state != UploadState::Complete);
    let mut total = 0u64;
    for part in &infos {
        let len = match (unfinished, part.state, part.length) {
            (false, _, _) => part.offset,
            (true, UploadState::Receiving | UploadState::Complete, Some(len)) => len,
            (true, UploadState::Receiving | UploadState::Complete, None) => {
                return Err(ServeError::BadRequest(format!(
                    "partial upload {} has no length yet: it cannot join an unfinished concatenation",
                    part.id
                )));
            }
            (true, _, _) => {
                return Err(ServeError::BadRequest(format!(
                    "partial upload {} has failed or expired",
                    part.id
                )));
            }
        };
        total = total.saturating_add(len);
    }
    if let Some(max) = state.config.max_size
        && total > max
    {
        return Err(ServeError::TooLarge(format!(
            "the concatenation ({total} bytes) exceeds the maximum {max}"
        )));
    }
    let mut info = UploadInfo::new(new_id(), None, now_secs());
    tracing::Span::current().record("id", tracing::field::display(&info.id));
    info.metadata = metadata;
    info.concat = Some(concat);
    info.owner = owner.0.clone();
    if unfinished {
        let mut unique = parts.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != parts.len() {
            return Err(ServeError::BadRequest(
                "an unfinished concatenation names each partial upload once".into(),
            ));
        }
        info.length = Some(total);
        return begin_unfinished(state, info, infos).await;
    }
    let mut running = expected_whole(info.metadata.as_deref()).map(|c| RunningDigest::start(c.algorithm));
    let concatenated = state
        .store
        .concatenate(info, &parts, running.as_ref().map(RunningDigest::feed))
        .await;
    let info = concatenated?;
    state.metrics.created(&info);
    if let Some(mut digest) = running.take() {
        digest.commit(info.offset).await;
        state.uploads.put_running(&info.id, digest);
    }
    tracing::info!(id = %info.id, parts = parts.len(), length = ?info.length, "final upload concatenated");
    finish(state, info).await
}

/// How long the completion of a final upload waits for its follower to hash what is left.
const FOLLOWER_CATCH_UP: Duration = Duration::from_secs(600);

/// A follower that has seen no new bytes for this long polls the parts' offsets (a wake-up may
/// have been lost with a dropped request).
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// A follower with no progress for this long lets go of the bytes kept for it (they are read
/// back when it moves on): a paused parallel upload does not hold memory for days.
const FOLLOWER_IDLE: Duration = Duration::from_secs(30);

/// How long the expiry of a final waits for a chunk in flight to one of its parts.
const LET_CHUNK_FINISH: Duration = Duration::from_secs(5);

/// Parts of an unfinished final linked at once (each link is a small durable write).
const LINKS_AT_ONCE: usize = 16;

/// Records a final upload whose parts are still arriving, links them to it and starts its
/// digest follower; finishes it at once if the parts completed meanwhile.
#[instrument(level = "debug", skip_all, fields(id = %info.id))]
async fn begin_unfinished(
    state: &AppState,
    info: UploadInfo,
    parts: Vec<UploadInfo>,
) -> Result<UploadInfo, ServeError> {
    use futures_util::StreamExt as _;
    // The same request again (a retry after a lost answer, or a client killed before it
    // recorded the answer) gets the final upload its parts already wait for, not a second one
    // that would be published as a second copy.
    let mut info = info;
    let mut existing = None;
    if let Some(f) = parts.first().and_then(|p| p.final_upload.clone())
        && let Ok(found) = state.store.info(&f).await
        && found.state == UploadState::Receiving
        && found.offset == 0
        && (&found.concat, &found.metadata, &found.owner, found.length)
            == (&info.concat, &info.metadata, &info.owner, info.length)
    {
        tracing::info!(id = %found.id, "the final upload of these parts exists already");
        tracing::Span::current().record("id", tracing::field::display(&found.id));
        info = found;
        existing = Some(());
    }
    // Held while the parts are linked and the follower starts: a part that completes meanwhile
    // finishes the final only after that.
    let final_lease = state.uploads.acquire_waiting(&info.id).await;
    if existing.is_some() {
        // Look again under its lock: it may have been finished meanwhile.
        let now = state.store.info(&info.id).await?;
        if now.state != UploadState::Receiving || now.offset > 0 {
            return Ok(now);
        }
    }
    if existing.is_none() {
        // No expiry of its own: it lives as long as its parts do (see `sweep`).
        state.store.create(info.clone()).await?;
        state.metrics.created(&info);
    }
    let mut bases = Vec::with_capacity(parts.len());
    let mut at = 0u64;
    for part in &parts {
        bases.push((part.id.clone(), at, part.length.unwrap_or(0)));
        at = at.saturating_add(part.length.unwrap_or(0));
    }
    // Each part is linked under its own lock, a few at a time, waiting for a chunk in flight
    // rather than cancelling it (each holds one part's lock only: no two wait on each other).
    let linked: Vec<UploadInfo> = futures_util::stream::iter(bases.clone())
        .map(|(part, base, _)| {
            let (state, final_id) = (state.clone(), info.id.clone());
            async move {
                let _lease = state.uploads.acquire_waiting(&part).await;
                state.store.link(&part, &final_id, base).await
            }
        })
        .buffer_unordered(LINKS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let placed = linked
        .iter()
        .filter(|p| p.placed_at.is_some() && p.final_upload.as_deref() == Some(info.id.as_str()))
        .count();
    let following = lock(&state.uploads.followers).contains_key(&info.id);
    if !following && let Some(expected) = expected_whole(info.metadata.as_deref()) {
        lock(&state.uploads.ahead).insert(info.id.clone(), Ahead::default());
        let follower = tokio::spawn(
            follow(
                state.clone(),
                info.id.clone(),
                bases.iter().map(|(id, _, len)| (id.clone(), *len)).collect(),
                expected.algorithm,
            )
            .in_current_span(),
        );
        lock(&state.uploads.followers).insert(info.id.clone(), follower);
    }
    drop(final_lease);
    tracing::info!(id = %info.id, parts = parts.len(), placed, length = ?info.length, "final upload created before its parts are complete");
    complete_final(state, &info.id).await
}

/// Marks the parts placed into final upload `final_id` expired before its bytes go (it is
/// deleted or expires): their bytes live in its file, and a part must never claim bytes that
/// are gone. Their client learns 410 and sends them again.
#[instrument(level = "debug", skip_all, fields(id = %final_info.id))]
pub async fn expire_placed_parts(state: &AppState, final_info: &UploadInfo) {
    let Ok(parts) = parts_of(final_info) else {
        return;
    };
    for id in parts {
        // A chunk in flight is let finish (its client then learns 410 on the next one), unless
        // it takes long: then it is cut off.
        let _lease = match tokio::time::timeout(LET_CHUNK_FINISH, state.uploads.acquire_waiting(&id)).await {
            Ok(lease) => lease,
            Err(_) => state.uploads.acquire(&id).await,
        };
        match state.store.info(&id).await {
            Ok(part)
                if part.final_upload.as_deref() == Some(final_info.id.as_str())
                    && part.placed_at.is_some()
                    && part.state != UploadState::Expired =>
            {
                match state.store.expire(&id).await {
                    Ok(()) => tracing::info!(%id, "part expired with its final upload {}", final_info.id),
                    Err(e) => tracing::warn!(%id, "could not expire a part of {}: {e}", final_info.id),
                }
                state.uploads.forget(&id);
            }
            _ => {}
        }
    }
}

/// Hashes the bytes of an unfinished final upload's parts in order as they are committed, so
/// that its whole-file check at the end has (almost) nothing left to read. Leaves the digest
/// as the final's running digest; on any trouble it leaves nothing and the final is re-read.
#[instrument(level = "debug", skip_all, fields(id = %final_id))]
async fn follow(state: AppState, final_id: String, parts: Vec<(String, u64)>, algorithm: ChecksumAlgorithm) {
    if let Some(digest) = follow_parts(&state, &final_id, parts, algorithm).await {
        state.uploads.put_running(&final_id, digest);
    }
    lock(&state.uploads.ahead).remove(&final_id);
}

async fn follow_parts(
    state: &AppState,
    final_id: &str,
    parts: Vec<(String, u64)>,
    algorithm: ChecksumAlgorithm,
) -> Option<RunningDigest> {
    use futures_util::StreamExt as _;
    let mut digest = RunningDigest::start_urgent(algorithm);
    let mut changes = state.uploads.appends_of(final_id)?;
    let mut at = 0u64;
    let (mut from_memory, mut read_back) = (0u64, 0u64);
    let mut idle_since = std::time::Instant::now();
    for (part, len) in parts {
        let mut done = 0u64;
        while done < len {
            changes.borrow_and_update();
            // Bytes kept in memory by the append that committed them, else read back.
            let next_kept = match state.uploads.take_ahead(final_id, at + done) {
                Ok(bytes) => {
                    let n = bytes.iter().map(Bytes::len).sum::<usize>() as u64;
                    if done + n > len {
                        return None;
                    }
                    digest.feed().feed(bytes).await;
                    done += n;
                    from_memory += n;
                    digest.commit(at + done).await;
                    state.uploads.follower_at(final_id, at + done);
                    continue;
                }
                Err(next) => next,
            };
            let Ok(info) = state.store.info(&part).await else {
                return None;
            };
            if matches!(info.state, UploadState::Error | UploadState::Expired) {
                return None;
            }
            let mut committed = info.offset.min(len);
            if let Some(next) = next_kept {
                committed = committed.min(next.saturating_sub(at).max(done));
            }
            if committed > done {
                let Ok(mut stream) = state.store.read_once(&part, done..committed).await else {
                    return None;
                };
                let feed = digest.feed();
                let mut batch = Vec::new();
                let mut batched = 0usize;
                let mut got = 0u64;
                while let Some(bytes) = stream.next().await {
                    let Ok(bytes) = bytes else {
                        return None;
                    };
                    got += bytes.len() as u64;
                    batched += bytes.len();
                    batch.push(bytes);
                    if batched >= 1 << 20 {
                        batched = 0;
                        feed.feed(std::mem::take(&mut batch)).await;
                    }
                }
                if !batch.is_empty() {
                    feed.feed(batch).await;
                }
                if got != committed - done {
                    return None;
                }
                read_back += committed - done;
                done = committed;
                digest.commit(at + done).await;
                state.uploads.follower_at(final_id, at + done);
                continue;
            }
            match tokio::time::timeout(FOLLOWER_POLL, changes.changed()).await {
                Ok(Ok(())) => idle_since = std::time::Instant::now(),
                Ok(Err(_)) => return None,
                Err(_) if idle_since.elapsed() >= FOLLOWER_IDLE => {
                    state.uploads.release_ahead(final_id);
                    idle_since = std::time::Instant::now();
                }
                Err(_) => {}
            }
        }
        at += len;
    }
    tracing::debug!(id = %final_id, bytes = at, from_memory, read_back, "digest follower caught up");
    Some(digest)
}

/// Finishes an unfinished final upload if all its parts are complete: the parts not written in
/// place are copied in, the digest follower is waited for, then the whole-file check and the
/// publication. Returns the final's info as it then stands.
pub fn complete_final<'a>(
    state: &'a AppState,
    final_id: &'a str,
) -> futures_util::future::BoxFuture<'a, Result<UploadInfo, ServeError>> {
    use futures_util::FutureExt as _;
    let span = tracing::debug_span!("complete_final", id = %final_id);
    async move {
        let _lease = state.uploads.acquire_waiting(final_id).await;
        let info = state.store.info(final_id).await?;
        if info.state != UploadState::Receiving || !info.is_final() {
            return Ok(info);
        }
        if info.is_full() && info.offset > 0 {
            // Concatenated, then a crash before its check and publication: finish now.
            return finish(state, info).await;
        }
        let parts = parts_of(&info)?;
        // Parts complete about in file order: the last ones tell soonest that one is missing.
        for id in parts.iter().rev() {
            let part = match state.store.info(id).await {
                Ok(part) => part,
                Err(super::store::StoreError::NotFound) => {
                    return Err(ServeError::Gone(format!(
                        "its partial upload {id} is gone; create a new final upload"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            match part.state {
                UploadState::Complete => {}
                UploadState::Receiving if part.expires.is_none_or(|e| now_secs() < e) => return Ok(info),
                _ => {
                    return Err(ServeError::Gone(format!(
                        "its partial upload {id} expired or failed; send it again and create a new final upload"
                    )));
                }
            }
        }
        let info = state.store.concatenate(info, &parts, None).await?;
        let follower = lock(&state.uploads.followers).remove(final_id);
        if let Some(mut follower) = follower {
            // Every part is in: the follower only has to catch up. If it does not within the
            // limit it is stopped, and the check reads the file instead.
            state.uploads.notify_appended(final_id);
            if tokio::time::timeout(FOLLOWER_CATCH_UP, &mut follower).await.is_err() {
                tracing::warn!(id = %final_id, "the digest follower did not catch up; reading the file instead");
                follower.abort();
                lock(&state.uploads.ahead).remove(final_id);
            }
        }
        tracing::info!(id = %info.id, parts = parts.len(), length = ?info.length, "final upload complete: all its parts are in");
        finish(state, info).await
    }
    .instrument(span)
    .boxed()
}

/// Appends a body (the caller holds the lease) and, at the last byte, finishes the upload.
/// `continues` is the number of held bytes the body continues (`Robusto-Chunk-Prefix`; the
/// caller checked that the upload holds them for this checksum). A checked body that is cut off
/// leaves its bytes held when the server keeps prefixes; the answer is still an error (nothing
/// was committed) naming what is held.
#[instrument(level = "debug", skip_all, fields(id = %info.id, offset = info.offset))]
pub async fn append(
    state: &AppState,
    info: UploadInfo,
    checksum: Option<crate::protocol::Checksum>,
    continues: u64,
    body: BodyStream,
) -> Result<UploadInfo, ServeError> {
    let max_len = match (info.length, state.config.max_size) {
        (Some(len), _) => len.saturating_sub(info.offset),
        (None, Some(max)) => max.saturating_sub(info.offset),
        (None, None) => u64::MAX,
    };
    // Partial uploads are not checked whole (their final upload is).
    let whole = expected_whole(info.metadata.as_deref())
        .filter(|_| !info.is_partial())
        .map(|c| c.algorithm);
    // The digest state of held bytes lives in memory beside the running digest, which was fed
    // them and not rolled back; after a restart both are gone, and a continued chunk is then
    // hashed from the store and the whole file re-read at its end.
    let continuation = (continues > 0).then(|| Continuation {
        len: continues,
        hasher: state.uploads.take_prefix(&info.id, continues),
    });
    if info.held.is_some() && continuation.is_none() {
        state.uploads.drop_prefix(&info.id);
    }
    let mut running = match &continuation {
        Some(c) if c.hasher.is_none() => {
            state.uploads.drop_running(&info.id);
            None
        }
        _ => whole.and_then(|alg| state.uploads.take_running(&info.id, info.offset, Some(alg))),
    };
    if continuation.is_none()
        && let Some(d) = running.as_mut()
    {
        // Forget held bytes it was fed, if any: this chunk starts afresh at the offset.
        d.rollback().await;
    }
    // A part written into an unfinished final keeps its bytes for the final's follower, which
    // then need not read them back.
    let ahead = match (&info.final_upload, info.placed_at) {
        (Some(f), Some(base)) if state.uploads.is_following(f) => {
            Some((f.clone(), base + info.offset, Collected::up_to(COLLECT_MAX)))
        }
        _ => None,
    };
    let feed = match (&running, &ahead) {
        (Some(d), _) => Some(d.feed()),
        (None, Some((_, _, kept))) => Some(kept.feed()),
        (None, None) => None,
    };
    let before = info.offset;
    let append = Append {
        offset: info.offset,
        max_len,
        checksum,
        running: feed,
        expires: expiry(state),
        yielding: ahead.is_some(),
        complete_at: info.is_partial().then(now_secs),
        keep_prefix: state.config.keep_prefixes,
        continues: continuation,
    };
    let receiving = state.metrics.receiving();
    let (body, body_end) = state.metrics.meter(body);
    let appended = state.store.append(&info.id, append, body).await;
    drop(receiving);
    match &appended {
        Ok(a) => state.metrics.committed(a.info.offset.saturating_sub(before), &body_end),
        Err(super::store::StoreError::ChecksumMismatch { .. }) => state.metrics.chunk_refused(),
        Err(_) => {}
    }
    if let (Ok(a), Some((final_id, at, kept))) = (&appended, ahead)
        && let Some(bytes) = kept.take()
    {
        let len = bytes.iter().map(Bytes::len).sum::<usize>();
        if len > 0 && len as u64 == a.info.offset - before {
            state.uploads.keep_ahead(&final_id, at, bytes, len).await;
        }
    }
    if let Some(mut digest) = running.take() {
        match &appended {
            // Held bytes stay fed, uncommitted, for the request that completes the chunk.
            Ok(a) if a.held.is_some() => {}
            Ok(a) => digest.commit(a.info.offset).await,
            Err(_) => digest.rollback().await,
        }
        state.uploads.put_running(&info.id, digest);
    }
    // A body given up because the server stops is the server's doing: the client retries.
    let stopping = |e: ServeError| match e {
        ServeError::BadRequest(m) if state.uploads.stopping.load(std::sync::atomic::Ordering::SeqCst) => {
            ServeError::ShuttingDown(m)
        }
        e => e,
    };
    let mut appended = appended.map_err(|e| stopping(e.into()))?;
    if let (Some(hasher), Some(held)) = (appended.held.take(), appended.info.held.clone()) {
        state.uploads.put_prefix(&info.id, held.len, hasher);
        let cut = appended.interrupted.map(|e| e.to_string()).unwrap_or_default();
        tracing::info!(id = %info.id, offset = info.offset, held = held.len, "{cut}; holding the chunk's first bytes");
        return Err(stopping(ServeError::BadRequest(format!(
            "{cut}; the server holds {} bytes of the chunk: send the rest with {}: {}",
            held.len,
            crate::protocol::header::CHUNK_PREFIX,
            held.len
        ))));
    }
    if let Some(f) = &info.final_upload {
        state.uploads.notify_appended(f);
    }
    let info = appended.info;
    if let Some(cut) = &appended.interrupted {
        tracing::info!(id = %info.id, offset = info.offset, "{cut}; kept the bytes received");
    }
    if info.is_full() {
        return finish(state, info).await;
    }
    Ok(info)
}

/// Runs the whole-file check of a fully received upload, then publishes it (partial uploads
/// are only marked complete). On a mismatch the upload is marked `error` and not published.
#[instrument(level = "debug", skip_all, fields(id = %info.id))]
pub async fn finish(state: &AppState, mut info: UploadInfo) -> Result<UploadInfo, ServeError> {
    let id = info.id.clone();
    let length = info.offset;
    info.expires = None;
    if !info.is_partial()
        && let Some(expected) = expected_whole(info.metadata.as_deref())
    {
        let running = match state.uploads.take_running(&id, length, None) {
            Some(d) => d.finish().await,
            None => None,
        };
        let digest = match running {
            Some(digest) => digest,
            None => {
                tracing::debug!(%id, "no running digest (server restarted?); re-reading the file");
                let stream = state.store.read_once(&id, 0..length).await?;
                digest_stream(stream, expected.algorithm)
                    .await
                    .map_err(|e| ServeError::from(super::store::StoreError::from(e)))?
            }
        };
        let actual = crate::protocol::Checksum {
            algorithm: expected.algorithm,
            digest: digest.clone(),
        };
        if expected.algorithm == ChecksumAlgorithm::Md5 {
            info.md5 = Some(hex::encode(&digest));
        }
        if digest != expected.digest {
            let reason = format!(
                "whole-file checksum mismatch: the metadata says '{}', the {length} bytes received hash to '{}'",
                expected.to_header(),
                actual.to_header()
            );
            tracing::warn!(%id, "{reason}");
            info.state = UploadState::Error;
            info.error = Some(reason.clone());
            state.store.update(info.clone()).await?;
            state.metrics.failed(&info);
            return Err(ServeError::ChecksumMismatch(reason));
        }
    }
    state.uploads.drop_running(&id);
    if !info.is_partial() {
        let meta = info
            .metadata
            .as_deref()
            .and_then(|m| Metadata::parse(m).ok())
            .unwrap_or_default();
        let name = sanitize_filename(meta.get_str(meta::FILENAME), &id);
        info.published = Some(state.store.publish(&id, &name).await?);
        tracing::info!(%id, length, name = info.published.as_deref().unwrap_or(""), "upload complete and published");
    }
    // A partial upload recorded its completion with its last append.
    if info.state != UploadState::Complete {
        info.state = UploadState::Complete;
        info.completed = Some(now_secs());
        state.store.update(info.clone()).await?;
    }
    state.metrics.completed(&info);
    if let Some(final_id) = info.final_upload.clone() {
        // The final upload waiting for this part may be complete now: finished in the
        // background (its check may take long after a restart), not in this part's answer. Its
        // failure is its own, reported on its URL.
        let state = state.clone();
        tokio::spawn(
            async move {
                if let Err(e) = complete_final(&state, &final_id).await {
                    tracing::warn!(id = %final_id, "the final upload could not be finished: {}", e.detail());
                }
            }
            .in_current_span(),
        );
    }
    Ok(info)
}

/// The status report of an upload (DESIGN §5); `url` is where a complete upload is read.
pub fn report(info: UploadInfo, url: String) -> StatusReport {
    let (status, value) = match info.state {
        UploadState::Receiving if info.offset == 0 => (Status::New, String::new()),
        UploadState::Receiving => (Status::Partial, chunks_received(info.offset, chunk_size_of(&info))),
        UploadState::Complete => (Status::Complete, url),
        UploadState::Error => (Status::Error, info.error.unwrap_or_else(|| "error".into())),
        UploadState::Expired => (Status::Error, "the upload expired before it was complete".into()),
    };
    StatusReport { status, value }
}

/// Like [`report`], for any upload: a final upload whose parts are still arriving reports the
/// chunks its parts hold so far (its own offset stays 0 until it is finished).
pub async fn status_report(state: &AppState, info: UploadInfo, url: String) -> StatusReport {
    if !(info.is_final() && info.state == UploadState::Receiving) {
        return report(info, url);
    }
    let (Ok(parts), Some(length)) = (parts_of(&info), info.length) else {
        return report(info, url);
    };
    // The committed byte ranges of the parts, in file order, merged where they touch.
    let mut held: Vec<(u64, u64)> = Vec::new();
    let mut base = 0u64;
    for id in parts {
        let Ok(part) = state.store.info(&id).await else {
            return report(info, url);
        };
        let end = base + part.offset;
        match held.last_mut() {
            Some(last) if last.1 == base => last.1 = end,
            _ if end > base => held.push((base, end)),
            _ => {}
        }
        base += part.length.unwrap_or(part.offset);
    }
    let chunk = chunk_size_of(&info);
    let received: Vec<String> = (0..length.div_ceil(chunk))
        .filter(|c| {
            let (start, end) = (c * chunk, ((c + 1) * chunk).min(length));
            held.iter().any(|&(a, b)| a <= start && end <= b)
        })
        .map(|c| c.to_string())
        .collect();
    if received.is_empty() {
        StatusReport {
            status: Status::New,
            value: String::new(),
        }
    } else {
        StatusReport {
            status: Status::Partial,
            value: received.join(","),
        }
    }
}

/// The `chunk-size` metadata of an upload, or the default.
fn chunk_size_of(info: &UploadInfo) -> u64 {
    info.metadata
        .as_deref()
        .and_then(|m| Metadata::parse(m).ok())
        .as_ref()
        .and_then(|m| m.get_str(meta::CHUNK_SIZE))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&c| c > 0)
        .unwrap_or(DEFAULT_CHUNK_SIZE)
}

/// The completed (published) uploads `owner` may see, oldest first.
pub async fn list_complete(state: &AppState, owner: &Owner) -> Result<Vec<Listed>, ServeError> {
    let mut out = Vec::new();
    for id in state.store.list().await? {
        let Ok(info) = state.store.info(&id).await else {
            continue;
        }; // deleted meanwhile
        if info.owner != owner.0 || info.state != UploadState::Complete || info.is_partial() {
            continue;
        }
        let meta = info
            .metadata
            .as_deref()
            .and_then(|m| Metadata::parse(m).ok())
            .unwrap_or_default();
        let metadata = meta
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let completed_at = info
            .completed
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        out.push(Listed {
            url: format!("/files/{}", info.id),
            name: meta
                .get_str(meta::FILENAME)
                .map(str::to_string)
                .or(info.published.clone())
                .unwrap_or_else(|| info.id.clone()),
            size: info.length.unwrap_or(info.offset),
            md5: info.md5,
            completed: info.completed,
            completed_at,
            metadata,
            id: info.id,
        });
    }
    out.sort_by(|a, b| (a.completed, &a.id).cmp(&(b.completed, &b.id)));
    Ok(out)
}

/// Expires every unfinished upload past its expiry; returns how many.
pub async fn sweep(state: &AppState) -> usize {
    let ids = match state.store.list().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("expiry sweep could not list uploads: {e}");
            return 0;
        }
    };
    let now = now_secs();
    let mut n = 0;
    let expired = |info: &UploadInfo| info.state == UploadState::Receiving && info.expires.is_some_and(|e| now >= e);
    for id in ids {
        // An upload being written to is not expired under its writer's feet.
        let Ok(info) = state.store.info(&id).await else {
            continue;
        };
        if retired(state, &info, now).await {
            // A part written into its final upload, long complete: only a record is left (its
            // bytes are the final's); tus lets a server remove parts after a concatenation.
            let _lease = state.uploads.acquire_waiting(&id).await;
            if state.store.delete(&id).await.is_ok() {
                state.uploads.forget(&id);
                tracing::debug!(%id, "removed the record of a part of a completed final upload");
            }
            continue;
        }
        if !(expired(&info) || stranded(state, &info, now).await) || state.uploads.is_busy(&id) {
            continue;
        }
        let _lease = state.uploads.acquire(&id).await;
        // Look again under the lock: a chunk may have just renewed the expiry.
        match state.store.info(&id).await {
            Ok(info) if expired(&info) || stranded(state, &info, now).await => {}
            _ => continue,
        }
        if let Ok(info) = state.store.info(&id).await
            && info.is_final()
        {
            expire_placed_parts(state, &info).await;
        }
        match state.store.expire(&id).await {
            Ok(()) => {
                state.uploads.forget(&id);
                state.metrics.expired();
                tracing::info!(%id, "unfinished upload expired; its bytes were freed");
                n += 1;
            }
            Err(e) => tracing::warn!(%id, "could not expire: {e}"),
        }
    }
    n
}

/// Whether `info` is a part placed into a final upload that completed more than the expiry
/// period ago (a client had that long to use the part again).
async fn retired(state: &AppState, info: &UploadInfo, now: u64) -> bool {
    let (Some(final_id), Some(_)) = (&info.final_upload, info.placed_at) else {
        return false;
    };
    if info.state != UploadState::Complete {
        return false;
    }
    let keep = state.config.expire_after.as_secs();
    match state.store.info(final_id).await {
        Ok(f) => f.state == UploadState::Complete && f.completed.is_some_and(|c| now >= c.saturating_add(keep)),
        Err(_) => false,
    }
}

/// Whether `info` is an unfinished final upload that can never complete: one of its parts
/// expired, failed or is gone. (It has no expiry of its own: it lives as long as its parts.)
async fn stranded(state: &AppState, info: &UploadInfo, now: u64) -> bool {
    if !info.is_final() || info.state != UploadState::Receiving || info.expires.is_some() {
        return false;
    }
    let Ok(parts) = parts_of(info) else {
        return true;
    };
    for id in parts {
        match state.store.info(&id).await {
            Ok(part) => match part.state {
                UploadState::Complete => {}
                UploadState::Receiving if part.expires.is_none_or(|e| now < e) => {}
                _ => return true,
            },
            Err(super::store::StoreError::NotFound) => return true,
            Err(_) => {}
        }
    }
    false
}

/// How often the sweeper runs for a given `--expire-after`.
pub fn sweep_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex() {
        let a = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, new_id());
        assert!(!is_valid_id("../../etc/passwd"));
        assert!(!is_valid_id(&a.to_uppercase()));
    }

    #[test]
    fn names_never_escape() {
        assert_eq!(sanitize_filename(Some("backup.zip"), "id"), "backup.zip");
        assert_eq!(sanitize_filename(Some("../../etc/passwd"), "id"), "passwd");
        assert_eq!(sanitize_filename(Some("/abs/x.tar"), "id"), "x.tar");
        assert_eq!(sanitize_filename(Some("C:\\win\\y.txt"), "id"), "y.txt");
        assert_eq!(sanitize_filename(Some(".."), "id"), "id");
        assert_eq!(sanitize_filename(Some("a/.."), "id"), "id");
        assert_eq!(sanitize_filename(Some("nul\0byte"), "id"), "nulbyte");
        assert_eq!(sanitize_filename(None, "id"), "id");
        assert_eq!(sanitize_filename(Some(&"é".repeat(300)), "id").len(), 200);
    }
}
