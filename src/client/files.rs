//! The client's side of the file system: the one seam between async code and blocking file work
//! ([`spawn_io`], [`blocking`]), the manifest a send works from ([`manifest_for`]), and the
//! checksum each request carries.

use super::*;

/// Starts blocking work (file I/O, hashing) on tokio's blocking pool: with [`blocking`], the one
/// seam between the async client and the synchronous file system.
pub(crate) fn spawn_io<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

/// Runs blocking work on the blocking pool and waits for it; work that could not run (the
/// runtime is shutting down) or panicked is an I/O error.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    spawn_io(f).await.map_err(std::io::Error::other)
}

/// Reads FILE.manifest.json, or computes (and caches in the state directory) the manifest of a
/// plain file.
pub async fn manifest_for(file: &Path, chunk_size: u64, state_dir: &Path) -> Result<Manifest, SendError> {
    let io = |source| SendError::Io {
        path: file.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(file).await.map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    let path = file.to_path_buf();
    match blocking(move || Manifest::read_for(&path)).await.map_err(io)? {
        Ok(m) => {
            if m.archive.size != meta.len() {
                return Err(ManifestError::SizeMismatch {
                    expected: m.archive.size,
                    found: meta.len(),
                }
                .into());
            }
            return Ok(m);
        }
        Err(ManifestError::Missing(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (state, path) = (state_dir.to_path_buf(), file.to_path_buf());
    if let Some(m) = blocking(move || journal::cached_manifest(&state, &path, chunk_size))
        .await
        .map_err(io)?
    {
        return Ok(m);
    }
    tracing::info!(
        "{} has no manifest: computing its MD5s ({} chunks)",
        file.display(),
        crate::units::format_bytes(chunk_size)
    );
    let path = file.to_path_buf();
    let fp = blocking(move || fingerprint_file(&path, chunk_size))
        .await
        .map_err(io)?
        .map_err(io)?;
    let m = Manifest::new(file, "raw", "none", None, fp, SourceInfo::default());
    let (state, path, cached) = (state_dir.to_path_buf(), file.to_path_buf(), m.clone());
    match blocking(move || journal::cache_manifest(&state, &path, &meta, &cached)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("cannot cache the manifest: {e}"),
        Err(e) => tracing::debug!("cannot cache the manifest: {e}"),
    }
    Ok(m)
}

/// The manifest's MD5 when the bytes sent are exactly one whole chunk and the server takes md5:
/// no hashing at all for a packed file.
pub(crate) fn manifest_checksum(
    alg: ChecksumAlgorithm,
    chunk: &ChunkDigest,
    offset: u64,
    len: u64,
) -> Option<Checksum> {
    (alg == ChecksumAlgorithm::Md5 && offset == chunk.offset && len == chunk.len).then(|| Checksum::md5(chunk.md5))
}

/// A checksum computed over the bytes (a server without md5, or a partly sent chunk).
pub(crate) fn compute_checksum(alg: ChecksumAlgorithm, data: &[u8]) -> Checksum {
    let mut h = alg.hasher();
    h.update(data);
    Checksum {
        algorithm: alg,
        digest: h.finish(),
    }
}
