//! The fs store's append: the body read from the network in batches of about 1 MiB, written by
//! a writer thread (one `writev` each) while a hashing thread checks the chunk, the whole-file
//! digest following on its own; then fsync, and the new offset recorded only for a chunk that
//! is whole and matches. A checked chunk cut off is fsynced and held past the offset instead;
//! a refused one is cut away.

use super::*;

/// Where an append's chunk is verified: on a thread of its own when it carries a checksum to
/// hash, inline (counting bytes) when it does not.
enum Verifying {
    Inline(ChunkVerifier),
    OnThread(
        tokio::sync::mpsc::Sender<Vec<Bytes>>,
        tokio::task::JoinHandle<Result<ChunkVerifier, BodyError>>,
    ),
}

/// Writes all of `batch` (one `writev` when the kernel takes it whole); returns the bytes written.
fn write_batch(file: &mut File, batch: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    let mut total = 0u64;
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                total += n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Reads `len` bytes of `path` from `at` in blocks and hands each to `feed`.
fn feed_from_file(
    path: &Path,
    at: u64,
    len: u64,
    mut feed: impl FnMut(&[u8]) -> Result<(), BodyError>,
) -> io::Result<()> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; (len.min(BATCH as u64)) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at + done)?;
        feed(&buf[..n]).map_err(io::Error::other)?;
        done += n as u64;
    }
    Ok(())
}

impl FsStore {
    /// [`Store::append`] for the fs store.
    pub(super) async fn append_chunk(&self, id: &str, append: Append, mut body: BodyStream) -> StoreResult<Appended> {
        let info_path = self.info_path(id)?;
        let mut info = self.info(id).await?;
        if info.offset != append.offset {
            return Err(StoreError::OffsetMismatch {
                expected: append.offset,
                actual: info.offset,
            });
        }
        let committed = info.offset;
        append.check_continues(&info)?;
        let prefix = append.prefix_len();
        if prefix == 0 && info.held.is_some() {
            // A chunk sent anew replaces the held bytes: they stop counting before they are
            // overwritten, so the info never names bytes the file no longer has.
            info.held = None;
            let (path, record) = (info_path.clone(), info.clone());
            blocking(move || Self::write_info(&path, &record)).await?;
        }
        let Location {
            path: data,
            base,
            shared,
        } = self.locate(&info)?;
        // Three stages run side by side: this task reads the network and hands batches of
        // about 1 MiB (frames, not copies) to a writer thread (one writev each) and, when the
        // chunk carries a checksum, to a hashing thread; the whole-file digest (if any)
        // follows on its own task (see `serve::digest`).
        let running = append.running.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
        let path = data.clone();
        let partial = info.is_partial();
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = if shared {
                Self::open_shared(&path, base + committed + prefix)?
            } else {
                Self::open_at(&path, committed + prefix)?
            };
            let mut writeback = Writeback::new(base + committed + prefix, BATCH as u64);
            // A partial upload's bytes are copied into its final upload later: keep them
            // cached. One placed into its final needs no copy (its follower takes the bytes
            // from memory): its cache is recycled like any upload's.
            if partial && !shared {
                writeback = writeback.keeping_cache();
            }
            while let Some(batch) = rx.blocking_recv() {
                let n = write_batch(&mut file, &batch)?;
                writeback.wrote(&file, n)?;
            }
            Ok::<_, io::Error>((file, writeback))
        });
        // Without a checksum the verifier only counts bytes (it cannot refuse: the length is
        // enforced below), which needs no thread of its own.
        let mut verifier = ChunkVerifier::new(&append);
        // The held bytes of a continued chunk whose digest state was lost (a restart) are
        // hashed again from the file, before the body.
        let rehash = verifier.needs_prefix(&append);
        // A checked chunk that starts afresh takes the whole-file digest along: both MD5s in
        // one pass on its hashing thread, rather than a second pass on the digest's threads.
        let lender = running.clone().filter(|_| append.checksum.is_some() && prefix == 0);
        let mut carried = false;
        if let Some(feed) = &lender
            && let Some(whole) = feed.lend(committed).await
        {
            match verifier.carry(whole) {
                Ok(()) => carried = true,
                Err(whole) => feed.give_back(whole, 0).await,
            }
        }
        let held_at = base + committed;
        let held_in = data.clone();
        let mut hashing = if append.checksum.is_some() {
            let (htx, mut hrx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(DEPTH);
            let work = move || {
                if rehash > 0 {
                    let fed = feed_from_file(&held_in, held_at, rehash, |block| verifier.feed(block));
                    if let Err(e) = fed {
                        return Err(BodyError::Interrupted(format!("the held bytes cannot be read: {e}")));
                    }
                }
                while let Some(batch) = hrx.blocking_recv() {
                    for bytes in &batch {
                        verifier.feed(bytes)?;
                    }
                }
                Ok::<_, BodyError>(verifier)
            };
            let task = if append.yielding {
                crate::serve::digest::spawn_yielding(work)
            } else {
                tokio::task::spawn_blocking(work)
            };
            Verifying::OnThread(htx, task)
        } else {
            Verifying::Inline(verifier)
        };
        let started = std::time::Instant::now();
        let mut first_byte = None;
        let mut ended: Option<BodyError> = None;
        let mut batch = Vec::new();
        let mut batched = 0;
        let mut total = prefix;
        loop {
            let next = body.next().await;
            let last = match next {
                None => true,
                Some(Err(e)) => {
                    ended = Some(e);
                    true
                }
                Some(Ok(bytes)) => {
                    first_byte.get_or_insert_with(|| started.elapsed());
                    total += bytes.len() as u64;
                    if total > append.max_len {
                        // Refused whole before a byte of the excess is written.
                        ended = Some(BodyError::TooLong);
                        break;
                    }
                    if let Verifying::Inline(v) = &mut hashing {
                        let _ = v.feed(&bytes);
                    }
                    batched += bytes.len();
                    batch.push(bytes);
                    false
                }
            };
            if (last || batched >= BATCH) && !batch.is_empty() {
                batched = 0;
                if let Some(feed) = &running
                    && !carried
                {
                    feed.feed(batch.clone()).await;
                }
                if let Verifying::OnThread(htx, _) = &hashing {
                    let _ = htx.send(batch.clone()).await;
                }
                if tx.send(std::mem::take(&mut batch)).await.is_err() {
                    break; // the writer failed; its error is collected below
                }
            }
            if last {
                break;
            }
        }
        drop(tx);
        let body_end = started.elapsed();
        // Every byte the writer commits went to the running digest too; on any refusal or
        // failure nothing is committed and the caller rolls the digest back.
        drop(running);
        let failed = |e: tokio::task::JoinError| StoreError::Io(io::Error::other(format!("storage task failed: {e}")));
        // Both tasks are waited for, whatever happened to either: no write may land after
        // this append gives up the upload.
        let mut verifier = match hashing {
            Verifying::Inline(v) => Ok(Ok(v)),
            Verifying::OnThread(htx, task) => {
                drop(htx);
                task.await
            }
        };
        // The whole-file digest goes back before the caller commits or rolls it back (lost
        // with a failed hashing thread: the rollback then returns it to its last commit).
        if let (Some(feed), Ok(Ok(v))) = (&lender, &mut verifier)
            && let Some((whole, fed)) = v.take_whole()
        {
            feed.give_back(whole, fed).await;
        }
        drop(lender);
        let hashed = started.elapsed();
        let written = writer.await;
        let stored = started.elapsed();
        let outcome = match (written, verifier) {
            (Err(e), _) | (_, Err(e)) => Err(failed(e)),
            (Ok(Err(e)), _) => Err(StoreError::from(e)),
            (Ok(Ok(_)), Ok(Err(refused))) => Err(StoreError::from(refused)),
            (Ok(Ok(file)), Ok(Ok(verifier))) => verifier.finish(ended, append.keep_prefix).map(|v| (file, v)),
        };
        blocking(move || {
            let truncate = |info: &mut UploadInfo, e: StoreError| {
                // Held bytes stop counting before they are cut off.
                if info.held.take().is_some() && Self::write_info(&info_path, info).is_err() {
                    return Err(e);
                }
                // A shared file is not cut: past this part's committed bytes lies either
                // nothing counted or the next part's bytes.
                if !shared && let Ok(f) = OpenOptions::new().write(true).open(&data) {
                    let _ = f.set_len(committed).and_then(|()| f.sync_data());
                }
                Err(e)
            };
            let ((file, mut writeback), judged) = match outcome {
                Ok(ok) => ok,
                Err(e) => return truncate(&mut info, e),
            };
            if let Err(e) = file.sync_data() {
                return truncate(&mut info, e.into());
            }
            writeback.release_all(&file);
            drop(file);
            let synced = started.elapsed();
            let verdict = match judged {
                Judged::Commit(verdict) => verdict,
                Judged::Hold { len, hasher, cut } => {
                    info.held = append.checksum.as_ref().map(|c| HeldPrefix {
                        len,
                        checksum: c.to_header(),
                    });
                    info.expires = append.expires;
                    if let Err(e) = Self::write_info(&info_path, &info) {
                        return truncate(&mut info, e);
                    }
                    tracing::debug!(id = %info.id, held = len, "cut off: holding the chunk's first bytes");
                    return Ok(Appended {
                        info,
                        interrupted: Some(cut),
                        held: Some(hasher),
                    });
                }
            };
            append.commit(&mut info, verdict.received);
            if let Err(e) = Self::write_info(&info_path, &info) {
                // If the new info got in place (only its directory's fsync failed), the bytes
                // it counts must stay: cutting them off would leave an info that claims more
                // than the file holds.
                return match Self::read_info(&info_path) {
                    Ok(now) if now.offset == info.offset => Err(e),
                    _ => truncate(&mut info, e),
                };
            }
            tracing::trace!(
                id = %info.id,
                bytes = verdict.received,
                first_byte = ?first_byte,
                body_end = ?body_end,
                hashed = ?hashed,
                stored = ?stored,
                synced = ?synced,
                recorded = ?started.elapsed(),
                "append committed"
            );
            Ok(Appended {
                info,
                interrupted: verdict.interrupted,
                held: None,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_empty_frames_writes_nothing_and_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        assert_eq!(write_batch(&mut file, &[Bytes::new()]).unwrap(), 0);
        let batch = [Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"c")];
        assert_eq!(write_batch(&mut file, &batch).unwrap(), 3);
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abc");
    }
}
