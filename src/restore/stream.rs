//! The byte stream of a tar archive as restore reads it — plain, gzip or zstd — with the first
//! fault of the stream (a checksum that does not match, corrupt data, an early end, a failed
//! read) put into words, and [`TarStream::finish`], which reads the stream to its very end after
//! the tar's end-of-archive block, so that the gzip trailer (CRC32 and length) and the zstd frame
//! checksum are checked before anything is moved into place.

use std::io::{self, Read};

/// How the tar stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    /// A plain `.tar`.
    None,
    /// `.tar.gz`.
    Gzip,
    /// `.tar.zst`.
    Zstd,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::None => "tar",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// A reader of the decompressed tar stream that remembers how it ended: whether a read found
/// nothing more (the stream ended there), and the first error, described.
pub(super) struct TarStream<R> {
    inner: R,
    codec: Codec,
    ended: bool,
    fault: Option<String>,
}

impl<R: Read> TarStream<R> {
    /// Wraps the (decompressing) reader `inner` of a `codec` stream.
    pub(super) fn new(inner: R, codec: Codec) -> Self {
        TarStream {
            inner,
            codec,
            ended: false,
            fault: None,
        }
    }

    /// Whether a read has found the end of the stream. The tar reader reads headers and entries
    /// by their sizes, so it only meets the end when the archive stops short of its
    /// end-of-archive block: the archive is truncated.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// The first fault of the stream, described (`None` if every read so far succeeded).
    pub(super) fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Reads what follows the tar's end-of-archive block to the end of the stream, which is
    /// where a decompressor checks the gzip trailer or the zstd frame checksum. Bytes other
    /// than zeros there are not part of any entry: they are ignored, with a warning. Returns
    /// the stream's fault, described, if the end does not check out.
    pub(super) fn finish(mut self) -> Result<(), String> {
        let mut buf = vec![0u8; 64 << 10];
        let mut stray = 0u64;
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => stray += buf[..n].iter().filter(|&&b| b != 0).count() as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fault.unwrap_or_else(|| describe(self.codec, &e))),
            }
        }
        if stray > 0 {
            tracing::warn!("ignored {stray} non-zero bytes after the end of the tar archive");
        }
        Ok(())
    }
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.ended = true;
                Ok(0)
            }
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                if self.fault.is_none() {
                    self.fault = Some(describe(self.codec, &e));
                }
                Err(e)
            }
            other => other,
        }
    }
}

/// What a read error of a `codec` stream means, in words. An error from the file itself (it has
/// an OS error code) is a failed read; otherwise it is the decompressor's verdict on the bytes.
fn describe(codec: Codec, e: &io::Error) -> String {
    if codec == Codec::None || e.raw_os_error().is_some() {
        return format!("cannot read it: {e}");
    }
    let name = codec.name();
    if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("the {name} stream ends early: the archive is truncated")
    } else if e.to_string().contains("checksum") {
        // zstd: "Restored data doesn't match checksum"; flate2: "corrupt gzip stream does not
        // have a matching checksum"
        format!("the {name} stream's checksum does not match: the archive is damaged")
    } else {
        format!("the {name} stream is corrupt ({e}): the archive is damaged")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zstd_of(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(codec: Codec, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let dec: Box<dyn Read> = match codec {
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(bytes).unwrap()),
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
            Codec::None => Box::new(bytes),
        };
        let mut s = TarStream::new(dec, codec);
        let mut out = vec![0u8; 1000];
        s.read_exact(&mut out).map_err(|e| e.to_string())?;
        s.finish()?;
        Ok(out)
    }

    #[test]
    fn the_zstd_checksum_is_checked_at_the_end() {
        let data = vec![7u8; 5000];
        let good = zstd_of(&data);
        assert_eq!(read_all(Codec::Zstd, &good).unwrap(), &data[..1000]);
        // the last 4 bytes of the frame are its checksum: only the check can notice
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            read_all(Codec::Zstd, &bad).unwrap_err(),
            "the zstd stream's checksum does not match: the archive is damaged"
        );
        let cut = &good[..good.len() - 2];
        assert_eq!(
            read_all(Codec::Zstd, cut).unwrap_err(),
            "the zstd stream ends early: the archive is truncated"
        );
    }

    #[test]
    fn the_gzip_trailer_is_checked_at_the_end() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
        e.write_all(&[9u8; 5000]).unwrap();
        let good = e.finish().unwrap();
        assert!(read_all(Codec::Gzip, &good).is_ok());
        // stored (level 0): a flipped data byte decodes fine, only the CRC32 notices
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 1;
        assert_eq!(
            read_all(Codec::Gzip, &bad).unwrap_err(),
            "the gzip stream's checksum does not match: the archive is damaged"
        );
        assert_eq!(
            read_all(Codec::Gzip, &good[..good.len() - 3]).unwrap_err(),
            "the gzip stream ends early: the archive is truncated"
        );
    }

    #[test]
    fn a_plain_stream_records_its_end() {
        let mut s = TarStream::new(&b"abc"[..], Codec::None);
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 3);
        assert!(!s.ended());
        assert_eq!(s.read(&mut buf).unwrap(), 0);
        assert!(s.ended() && s.fault().is_none());
    }
}
