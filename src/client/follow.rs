//! Sending an archive while it is packed (`push`): one upload created with a deferred length
//! as soon as the staging file exists, each chunk sent once it is written and hashed, and the
//! last chunk carrying the length and the whole-file MD5 (`Repr-Digest`, announced by servers
//! that offer `robusto-repr-digest`; the server still checks the whole file before publishing).
//!
//! Resuming: packing is deterministic, so a killed push packs again. The MD5 of every chunk is
//! recorded ([`SentChunks`]) before its first byte leaves; the rerun checks the chunks it packs
//! again against that record up to the server's offset before it sends anything more, so the
//! bytes the server acknowledged are never sent twice, and a tree that changed in between
//! becomes a fresh upload instead of a wrong one.

use super::*;
use crate::protocol::Extension;

/// An archive being packed in this process, for the send to follow.
#[derive(Clone, Debug)]
pub struct Following {
    /// What the packer reports of it.
    pub source: Arc<Growing>,
    /// The incremental link it is, for its metadata.
    pub incremental: Option<crate::incremental::Link>,
}

/// Whether the server takes what sending while packing needs (a deferred length, chunks checked
/// by MD5, the whole-file checksum at the end), on one connection.
pub(super) fn can_follow(caps: &Capabilities, opts: &SendOptions) -> bool {
    if opts.parallel > 1 {
        tracing::info!("--parallel {}: the archive is sent once packed", opts.parallel);
        return false;
    }
    caps.has(Extension::CreationDeferLength)
        && caps.has(Extension::ReprDigest)
        && caps.checksum == Some(ChecksumAlgorithm::Md5)
}

/// Sends the archive `following` reports as it grows, to completion, the deadline or an error.
pub(super) async fn send_following(
    opts: &SendOptions,
    following: &Following,
    session: Session,
    caps: Capabilities,
    progress: &dyn Progress,
    started: Instant,
) -> Result<SendOutcome, SendError> {
    let (state_dir, target) = (opts.state_dir.clone(), opts.journal_target());
    let opened = blocking(move || -> Result<_, JournalError> {
        let journal = Journal::open_following(&state_dir, &target)?;
        let sent = SentChunks::open(&journal)?;
        Ok((journal, sent))
    })
    .await
    .map_err(|source| SendError::Io {
        path: opts.state_dir.clone(),
        source,
    })??;
    let (mut journal, mut sent) = opened;
    let source = following.source.clone();
    let packing = |e: crate::growing::Stopped| SendError::Packing(e.0);

    // A job the server confirmed: nothing to send if the archive packed again is the same and
    // the server still has it.
    if let Some(state) = journal.state.clone().filter(|s| s.complete) {
        let end = source.until_end().await.map_err(packing)?;
        let url = state.parts.first().and_then(|p| p.url.clone());
        let same = end.md5 == state.md5 && end.size == state.size;
        let url = url.and_then(|u| opts.recorded_url(&u)).filter(|_| same);
        if let Some(done) = still_complete(&session, url, end.size, progress).await? {
            return Ok(done);
        }
        journal.state = None;
        sent.clear()?;
    }
    if journal.state.is_none() {
        journal.state = Some(JournalState {
            version: journal::VERSION,
            file: opts.file.display().to_string(),
            target: opts.journal_target(),
            size: 0,
            md5: crate::fingerprint::Md5([0; 16]),
            chunk_size: source.chunk_size(),
            parts: vec![Part {
                start: 0,
                end: 0,
                url: None,
            }],
            final_url: None,
            complete: false,
            follows: true,
        });
        save(&journal).await?;
    }
    let part = journal
        .state
        .as_ref()
        .and_then(|s| s.parts.first().cloned())
        .unwrap_or(Part {
            start: 0,
            end: 0,
            url: None,
        });
    let file = source.file().await.map_err(packing)?;
    progress.event(&Event::SendStarted {
        file: opts.file.display().to_string(),
        total_bytes: source.end().map_or(0, |e| e.size),
        chunks: 0,
        parallel: 1,
    });
    let mut job = Job {
        opts,
        progress,
        session,
        caps,
        acked: Mutex::new(vec![0]),
        source,
        incremental: following.incremental.clone(),
        following: Some(tokio::sync::Mutex::new(sent)),
        file,
        journal: tokio::sync::Mutex::new(journal),
        deadline: opts.max_duration.map(|d| started + d),
        multi: false,
    };
    let ended = match job.run_part(0, part).await {
        // Packing failed: this archive will never be finished, nor its upload.
        Err(e @ SendError::Packing(_)) => {
            if let Some(url) = job.part_url(0).await {
                if job.caps.has(Extension::Termination)
                    && let Err(t) = job.session.terminate(&url).await
                {
                    tracing::debug!("could not terminate {url}: {t}");
                }
                job.forget_part(0).await?;
            }
            return Err(e);
        }
        ended => ended?,
    };
    if let PartEnd::Paused = ended {
        let url = job.part_url(0).await;
        return Ok(SendOutcome::Paused {
            url: url.map(|u| u.to_string()),
        });
    }
    let url = job.part_url(0).await.ok_or_else(|| SendError::Server {
        url: opts.target.to_string(),
        source: SessionError::Protocol("no upload URL after the upload".into()),
    })?;
    let end = job
        .source
        .end()
        .ok_or_else(|| SendError::Packing("the upload ended before the archive".into()))?;
    job.record(|s| {
        s.complete = true;
        s.size = end.size;
        s.md5 = end.md5;
        if let Some(p) = s.parts.first_mut() {
            p.end = end.size;
        }
    })
    .await?;
    if let Some(sent) = job.following.take() {
        sent.into_inner().remove();
    }
    progress.event(&Event::Complete {
        url: url.to_string(),
        bytes: end.size,
    });
    Ok(SendOutcome::Complete { url: url.to_string() })
}
