//! Compression codecs and their levels: `none`, `deflate` (alias `gzip`) 0–9, `zstd` 1–22.
//! zip compresses each entry with the codec; tar compresses the whole stream with
//! [`StreamEncoder`] (`.tar.gz`, `.tar.zst`, zstd on its own worker threads).

use std::fmt;
use std::io::{self, Write};
use std::ops::RangeInclusive;

/// A compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    None,
    /// DEFLATE (zip method 8; gzip for tar).
    Deflate,
    /// Zstandard (zip method 93; `.tar.zst` for tar).
    Zstd,
}

/// A codec or level that is not allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Not one of the codec names.
    #[error("unknown compression '{0}' (choose none, deflate, gzip or zstd)")]
    Unknown(String),
    /// The level is outside the codec's range.
    #[error("level {level} is out of range for {codec} ({min}–{max})")]
    Level {
        /// The codec.
        codec: Codec,
        /// The level asked for.
        level: i32,
        /// Lowest level.
        min: i32,
        /// Highest level.
        max: i32,
    },
    /// A level was given for `none`.
    #[error("--level has no meaning with --compress none")]
    LevelWithoutCodec,
}

impl Codec {
    /// Parses `none`, `deflate`, `gzip` (= deflate) or `zstd`.
    pub fn parse(name: &str) -> Result<Self, CodecError> {
        match name.to_ascii_lowercase().as_str() {
            "none" | "store" | "stored" => Ok(Codec::None),
            "deflate" | "gzip" | "gz" => Ok(Codec::Deflate),
            "zstd" | "zst" => Ok(Codec::Zstd),
            other => Err(CodecError::Unknown(other.to_string())),
        }
    }

    /// The name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Deflate => "deflate",
            Codec::Zstd => "zstd",
        }
    }

    /// The levels this codec accepts (empty for `none`).
    pub fn levels(self) -> Option<RangeInclusive<i32>> {
        match self {
            Codec::None => None,
            Codec::Deflate => Some(0..=9),
            Codec::Zstd => Some(1..=22),
        }
    }

    /// The level used when none is given: deflate 6, zstd 3.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Codec::None => None,
            Codec::Deflate => Some(6),
            Codec::Zstd => Some(3),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated codec and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// The codec.
    pub codec: Codec,
    /// The level (`None` for `none`).
    pub level: Option<i32>,
}

impl Compression {
    /// Checks `level` against the codec's range; no level means the codec's default.
    pub fn new(codec: Codec, level: Option<i32>) -> Result<Self, CodecError> {
        let Some(range) = codec.levels() else {
            return match level {
                Some(_) => Err(CodecError::LevelWithoutCodec),
                None => Ok(Compression { codec, level: None }),
            };
        };
        let level = level.or(codec.default_level()).unwrap_or(*range.start());
        if !range.contains(&level) {
            return Err(CodecError::Level {
                codec,
                level,
                min: *range.start(),
                max: *range.end(),
            });
        }
        Ok(Compression {
            codec,
            level: Some(level),
        })
    }
}

/// zstd workers at most, whatever `--threads` says: keeps memory bounded on large machines.
pub const MAX_ZSTD_WORKERS: usize = 4;

/// A whole-stream encoder for tar archives.
pub enum StreamEncoder<W: Write> {
    /// No compression.
    Plain(W),
    /// gzip (deterministic header: no name, mtime 0).
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd with its own worker threads (frame checksum on, as the zstd tool writes).
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> StreamEncoder<W> {
    /// An encoder for `c` writing into `inner`; zstd uses `threads` workers (at least 1, so the
    /// output does not depend on the thread count).
    pub fn new(inner: W, c: Compression, threads: usize) -> io::Result<Self> {
        Ok(match c.codec {
            Codec::None => StreamEncoder::Plain(inner),
            Codec::Deflate => {
                let level = c.level.unwrap_or(6).clamp(0, 9) as u32;
                StreamEncoder::Gzip(
                    flate2::GzBuilder::new()
                        .mtime(0)
                        .write(inner, flate2::Compression::new(level)),
                )
            }
            Codec::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, c.level.unwrap_or(3))?;
                enc.include_checksum(true)?;
                // zstd's memory grows with its workers; the output is the same for any count >= 1.
                enc.multithread(threads.clamp(1, MAX_ZSTD_WORKERS) as u32)?;
                StreamEncoder::Zstd(enc)
            }
        })
    }

    /// Ends the stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            StreamEncoder::Plain(w) => Ok(w),
            StreamEncoder::Gzip(e) => e.finish(),
            StreamEncoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for StreamEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamEncoder::Plain(w) => w.write(buf),
            StreamEncoder::Gzip(e) => e.write(buf),
            StreamEncoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            StreamEncoder::Plain(w) => w.flush(),
            StreamEncoder::Gzip(e) => e.flush(),
            StreamEncoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked() {
        assert_eq!(Compression::new(Codec::Deflate, None).unwrap().level, Some(6));
        assert_eq!(Compression::new(Codec::Zstd, None).unwrap().level, Some(3));
        assert_eq!(Compression::new(Codec::Deflate, Some(0)).unwrap().level, Some(0));
        assert!(matches!(
            Compression::new(Codec::Deflate, Some(10)),
            Err(CodecError::Level { max: 9, .. })
        ));
        assert!(matches!(
            Compression::new(Codec::Zstd, Some(0)),
            Err(CodecError::Level { min: 1, .. })
        ));
        assert!(matches!(
            Compression::new(Codec::Zstd, Some(23)),
            Err(CodecError::Level { .. })
        ));
        assert_eq!(
            Compression::new(Codec::None, Some(3)),
            Err(CodecError::LevelWithoutCodec)
        );
        assert_eq!(Codec::parse("gzip"), Ok(Codec::Deflate));
        assert!(Codec::parse("brotli").is_err());
    }

    #[test]
    fn zstd_output_is_the_same_for_any_worker_count() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 & 0x0f)
            .collect();
        let run = |threads| {
            let mut e =
                StreamEncoder::new(Vec::new(), Compression::new(Codec::Zstd, Some(3)).unwrap(), threads).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let one = run(1);
        assert_eq!(one, run(4));
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
    }
}
