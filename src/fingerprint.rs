//! MD5 fingerprints of an archive: the whole-file digest and one digest per fixed-size chunk,
//! computed in one pass while the bytes stream past (a hashing writer), on two threads so that
//! the two MD5 streams do not share one core.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest as _, Md5 as Md5Hasher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::growing::Growing;

/// Bytes handed to the hashing threads at a time.
const BLOCK: usize = 1 << 20;
/// Blocks that may wait for each hashing thread: bounds memory to about `2 × DEPTH × BLOCK`.
const DEPTH: usize = 4;

/// A 128-bit MD5 digest. Serialised as lowercase hex; tus headers carry it as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Md5(pub [u8; 16]);

impl Md5 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Md5(Md5Hasher::digest(bytes).into())
    }

    /// Lowercase hex, as `md5sum` prints it.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Standard base64 with padding, as tus `Upload-Checksum` carries it.
    pub fn base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(Md5(out))
    }

    /// Parses the base64 form of a 16-byte digest.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = BASE64.decode(text.trim()).ok()?;
        Some(Md5(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5({})", self.hex())
    }
}

impl fmt::Display for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Md5 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Md5 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Md5::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not an MD5 in hex")))
    }
}

/// The digest of one chunk: bytes `offset .. offset + len` of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDigest {
    /// First byte of the chunk in the archive.
    pub offset: u64,
    /// Length in bytes; equal to the chunk size except for the last chunk.
    pub len: u64,
    /// MD5 of the chunk's bytes.
    pub md5: Md5,
}

/// The fingerprint of a whole byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Total bytes.
    pub size: u64,
    /// MD5 of all bytes.
    pub md5: Md5,
    /// The chunk size the stream was cut at.
    pub chunk_size: u64,
    /// One digest per chunk, in order. An empty stream has no chunks.
    pub chunks: Vec<ChunkDigest>,
}

type Block = Arc<Vec<u8>>;

/// Computes a [`Fingerprint`] over bytes fed to it in order. The whole-file MD5 and the chunk
/// MD5s run on two background threads; memory stays bounded by a few 1 MiB blocks.
pub struct Fingerprinter {
    chunk_size: u64,
    size: u64,
    buf: Vec<u8>,
    whole: Option<(SyncSender<Block>, JoinHandle<Md5>)>,
    chunks: Option<(SyncSender<Block>, JoinHandle<Vec<ChunkDigest>>)>,
    /// A third consumer of the same blocks (the thread writing them to disk), if any.
    tee: Option<SyncSender<Block>>,
    tee_failed: bool,
}

impl Fingerprinter {
    /// A fingerprinter that cuts chunks every `chunk_size` bytes (`chunk_size` ≥ 1).
    pub fn new(chunk_size: u64) -> Self {
        Self::reporting(chunk_size, None)
    }

    /// Like [`Fingerprinter::new`], telling `growing` of each chunk as soon as it is hashed.
    fn reporting(chunk_size: u64, growing: Option<Arc<Growing>>) -> Self {
        let chunk_size = chunk_size.max(1);
        let (wtx, wrx) = sync_channel::<Block>(DEPTH);
        let whole = std::thread::spawn(move || {
            let mut h = Md5Hasher::new();
            for block in wrx {
                h.update(&block[..]);
            }
            Md5(h.finalize().into())
        });
        let (ctx, crx) = sync_channel::<Block>(DEPTH);
        let chunks = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut h = Md5Hasher::new();
            let mut offset = 0u64;
            let mut len = 0u64;
            for block in crx {
                let mut rest: &[u8] = &block[..];
                while !rest.is_empty() {
                    let room = (chunk_size - len) as usize;
                    let take = room.min(rest.len());
                    h.update(&rest[..take]);
                    len += take as u64;
                    rest = &rest[take..];
                    if len == chunk_size {
                        let digest = ChunkDigest {
                            offset,
                            len,
                            md5: Md5(h.finalize_reset().into()),
                        };
                        if let Some(g) = &growing {
                            g.hashed(digest);
                        }
                        out.push(digest);
                        offset += len;
                        len = 0;
                    }
                }
            }
            if len > 0 {
                let digest = ChunkDigest {
                    offset,
                    len,
                    md5: Md5(h.finalize().into()),
                };
                if let Some(g) = &growing {
                    g.hashed(digest);
                }
                out.push(digest);
            }
            out
        });
        Fingerprinter {
            chunk_size,
            size: 0,
            buf: Vec::with_capacity(BLOCK),
            whole: Some((wtx, whole)),
            chunks: Some((ctx, chunks)),
            tee: None,
            tee_failed: false,
        }
    }

    /// A fingerprinter with no threads, used as a placeholder once the real one is finished.
    fn idle() -> Self {
        Fingerprinter {
            chunk_size: 1,
            size: 0,
            buf: Vec::new(),
            whole: None,
            chunks: None,
            tee: None,
            tee_failed: false,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (BLOCK - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == BLOCK {
                self.flush_block();
            }
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn flush_block(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let block = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK)));
        if let Some(tx) = &self.tee
            && tx.send(Arc::clone(&block)).is_err()
        {
            self.tee_failed = true;
        }
        // A send fails only if a hashing thread died; finish() reports that as an error.
        if let Some((tx, _)) = &self.whole {
            let _ = tx.send(Arc::clone(&block));
        }
        if let Some((tx, _)) = &self.chunks {
            let _ = tx.send(block);
        }
    }

    /// Ends the stream and returns its fingerprint.
    pub fn finish(mut self) -> io::Result<Fingerprint> {
        self.flush_block();
        let lost = || io::Error::other("an MD5 hashing thread stopped unexpectedly");
        self.tee = None;
        let (wtx, whole) = self.whole.take().ok_or_else(lost)?;
        let (ctx, chunks) = self.chunks.take().ok_or_else(lost)?;
        drop(wtx);
        drop(ctx);
        let md5 = whole.join().map_err(|_| lost())?;
        let chunks = chunks.join().map_err(|_| lost())?;
        Ok(Fingerprint {
            size: self.size,
            md5,
            chunk_size: self.chunk_size,
            chunks,
        })
    }
}

/// A writer that fingerprints the bytes written and writes them to `inner` on a thread of its
/// own, fed the same 1 MiB blocks as the two hashing threads: a slow disk never stalls the
/// producer while there is room in the queue, and the bytes are copied once.
pub struct HashingWriter<W: Write + Send + 'static> {
    fp: Fingerprinter,
    writer: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> HashingWriter<W> {
    /// Wraps `inner`, cutting chunks every `chunk_size` bytes.
    pub fn new(inner: W, chunk_size: u64) -> Self {
        Self::reporting(inner, chunk_size, None)
    }

    /// Like [`HashingWriter::new`], telling `growing` of every block written to `inner` and
    /// every chunk hashed, so that a sender can follow the archive as it grows.
    pub fn reporting(mut inner: W, chunk_size: u64, growing: Option<Arc<Growing>>) -> Self {
        let (tx, rx) = sync_channel::<Block>(DEPTH);
        let written_to = growing.clone();
        let writer = std::thread::spawn(move || {
            for block in rx {
                if let Some(g) = &written_to {
                    if g.is_cancelled() {
                        return Err(io::Error::other("the upload of the archive failed"));
                    }
                    inner.write_all(&block)?;
                    g.wrote(block.len() as u64);
                } else {
                    inner.write_all(&block)?;
                }
            }
            inner.flush()?;
            Ok(inner)
        });
        let mut fp = Fingerprinter::reporting(chunk_size, growing);
        fp.tee = Some(tx);
        HashingWriter {
            fp,
            writer: Some(writer),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.fp.size()
    }

    fn join_writer(&mut self) -> io::Result<W> {
        let handle = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("the writing thread already stopped"))?;
        handle
            .join()
            .map_err(|_| io::Error::other("the writing thread panicked"))?
    }

    /// Writes out everything and returns `inner` with the fingerprint of all bytes written.
    pub fn finish(mut self) -> io::Result<(W, Fingerprint)> {
        let fp = std::mem::replace(&mut self.fp, Fingerprinter::idle());
        let fingerprint = fp.finish()?;
        let inner = self.join_writer()?;
        Ok((inner, fingerprint))
    }
}

impl<W: Write + Send + 'static> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fp.update(buf);
        if self.fp.tee_failed {
            // The writing thread stopped on an error: report it here, at the write that noticed.
            self.fp.tee = None;
            return Err(match self.join_writer() {
                Err(e) => e,
                Ok(_) => io::Error::other("the writing thread stopped"),
            });
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fingerprints everything `reader` yields.
pub fn fingerprint_reader<R: Read>(mut reader: R, chunk_size: u64) -> io::Result<Fingerprint> {
    let mut fp = Fingerprinter::new(chunk_size);
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        fp.update(&buf[..n]);
    }
    fp.finish()
}

/// Fingerprints the file at `path`, reading it once.
pub fn fingerprint_file(path: &Path, chunk_size: u64) -> io::Result<Fingerprint> {
    fingerprint_reader(File::open(path)?, chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8], chunk: usize) -> (Md5, Vec<Md5>) {
        (Md5::of(data), data.chunks(chunk).map(Md5::of).collect())
    }

    #[test]
    fn empty_stream_has_no_chunks() {
        let fp = Fingerprinter::new(8).finish().unwrap();
        assert_eq!(fp.size, 0);
        assert_eq!(fp.md5.hex(), "d41d8cd98f00b204e9800998ecf8427e");
        assert!(fp.chunks.is_empty());
    }

    #[test]
    fn chunks_match_slices_whatever_the_write_pattern() {
        let data: Vec<u8> = (0..(3 * BLOCK + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1000usize, BLOCK, BLOCK + 1, 3 * BLOCK + 12345, 10 * BLOCK] {
            for step in [1usize, 777, BLOCK, 5 * BLOCK] {
                if step == 1 && chunk < BLOCK {
                    continue; // byte-at-a-time over 3 MiB is slow in debug builds
                }
                let mut w = HashingWriter::new(Vec::new(), chunk as u64);
                for piece in data.chunks(step) {
                    w.write_all(piece).unwrap();
                }
                let (out, fp) = w.finish().unwrap();
                assert_eq!(out, data);
                let (whole, parts) = reference(&data, chunk);
                assert_eq!(fp.md5, whole);
                assert_eq!(fp.size, data.len() as u64);
                assert_eq!(fp.chunks.iter().map(|c| c.md5).collect::<Vec<_>>(), parts);
                let mut expect_off = 0;
                for c in &fp.chunks {
                    assert_eq!(c.offset, expect_off);
                    expect_off += c.len;
                }
                assert_eq!(expect_off, data.len() as u64);
            }
        }
    }

    #[test]
    fn a_failing_writer_is_reported() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashingWriter::new(Full, 1 << 20);
        let block = vec![0u8; BLOCK];
        let mut err = None;
        for _ in 0..64 {
            if let Err(e) = w.write_all(&block) {
                err = Some(e);
                break;
            }
        }
        let err = err.unwrap_or_else(|| w.finish().err().unwrap());
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
    }

    #[test]
    fn hex_and_base64_round_trip() {
        let d = Md5::of(b"hello");
        assert_eq!(d.hex(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(d.base64(), "XUFAKrxLKna5cZ2REBfFkg==");
        assert_eq!(Md5::from_hex(&d.hex()), Some(d));
        assert_eq!(Md5::from_base64(&d.base64()), Some(d));
        assert_eq!(Md5::from_hex("xyz"), None);
        assert_eq!(Md5::from_base64("AAAA"), None);
    }
}
