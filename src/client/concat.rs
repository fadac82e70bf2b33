//! The parallel send's concatenation: the parts' uploads created ahead, the final upload
//! created (before the parts are sent where the server takes an unfinished final), and the
//! wait for the server to finish it.

use super::*;

impl Job<'_> {
    /// Creates the uploads of every part that has none yet, `parallel` at a time, and records
    /// their URLs in one journal write (for a final upload created before the parts are sent).
    pub(super) async fn create_parts(&self, parts: &[Part], parallel: usize) -> Result<(), SendError> {
        use futures_util::StreamExt as _;
        let mut missing = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if self.part_url(i).await.is_none() {
                missing.push((i, part.clone()));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let results: Vec<Result<(usize, String), SendError>> = futures_util::stream::iter(missing)
            .map(|(i, part)| async move {
                let mut retry = self.retrier();
                let (url, _) = self.create(i, &part, &mut retry).await?;
                Ok::<_, SendError>((i, url.to_string()))
            })
            .buffered(parallel.max(CREATIONS_AT_ONCE))
            .collect()
            .await;
        // The uploads that were created are recorded even if another creation failed: a rerun
        // uses them instead of leaving them to expire on the server.
        let mut failed = None;
        let mut created = Vec::new();
        for r in results {
            match r {
                Ok(c) => created.push(c),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        self.record(|s| {
            for (i, url) in created {
                s.parts[i].url = Some(url);
            }
        })
        .await?;
        failed.map_or(Ok(()), Err)
    }

    /// Waits for the server to finish the final upload at `url` (created before its parts were
    /// complete, or recorded by an earlier run): `Ok(None)` when the server no longer has it.
    pub(super) async fn await_final(&self, url: &Url) -> Result<Option<Url>, SendError> {
        let mut retry = self.retrier();
        let size = self.size().unwrap_or(0);
        // A server still checking the whole file (after a restart it reads it again) answers
        // without an offset: that is waited for, patiently, without using up the retries.
        let patience = Instant::now() + FINAL_PATIENCE;
        loop {
            match self.session.head(url).await {
                Ok(h) if h.offset == Some(size) => return Ok(Some(url.clone())),
                Ok(h) if h.offset.is_none() && Instant::now() < patience => {
                    if self.past_deadline() {
                        return Err(SendError::RetriesExhausted {
                            url: Some(url.to_string()),
                            attempts: retry.used(),
                            reason: "the server had not finished the final upload by the deadline".into(),
                        });
                    }
                    tracing::debug!("{url}: the server has not finished the final upload yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(h) => {
                    let reason = match h.offset {
                        None => "the server has not finished the final upload".to_string(),
                        Some(o) => format!("the final upload holds {o} of {size} bytes"),
                    };
                    self.backoff(&mut retry, Some(url), reason).await?;
                }
                Err(SessionError::Gone(status)) => {
                    tracing::warn!("the final upload {url} is gone ({status}); concatenating again");
                    self.record(|s| s.final_url = None).await?;
                    return Ok(None);
                }
                // A server of several nodes may answer 409 while another one finishes it.
                Err(e) if e.is_transient() || matches!(e, SessionError::OffsetConflict) => {
                    self.backoff(&mut retry, Some(url), e.reason()).await?
                }
                Err(e) => return Err(Self::fatal(url, e)),
            }
        }
    }

    /// Creates the final upload of a concatenation: after every part is complete, or (when the
    /// server offers `concatenation-unfinished`) before any is sent. Records its URL.
    pub(super) async fn concatenate(&self) -> Result<Url, SendError> {
        let parts: Vec<String> = {
            let j = self.journal.lock().await;
            j.state
                .as_ref()
                .map(|s| s.parts.iter().filter_map(|p| p.url.clone()).collect())
                .unwrap_or_default()
        };
        let paths: Vec<String> = parts
            .iter()
            .filter_map(|u| self.opts.recorded_url(u))
            .map(|u| u.path().to_string())
            .collect();
        let mut retry = self.retrier();
        loop {
            let creation = Creation {
                length: None,
                metadata: self.metadata(true),
                concat: Some(crate::protocol::Concat::Final(paths.clone()).to_header()),
                body: None,
                deferred: None,
            };
            match self.session.create(&self.opts.target, creation).await {
                Ok(created) => {
                    let url = created.url.to_string();
                    self.record(|s| s.final_url = Some(url)).await?;
                    return Ok(created.url);
                }
                Err(e) if e.is_transient() => self.backoff(&mut retry, None, e.reason()).await?,
                Err(SessionError::ChecksumMismatch) => {
                    return Err(SendError::Damaged {
                        index: 0,
                        offset: 0,
                        end: self.size().unwrap_or(0),
                        file: self.opts.file.display().to_string(),
                    });
                }
                Err(e) => return Err(Self::fatal(&self.opts.target, e)),
            }
        }
    }
}
