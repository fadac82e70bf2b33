//! `pack --dry-run` and `push --dry-run`: what would be packed and what left out, how many files
//! and bytes, and an estimate of the archive's size, without writing anything. The estimate
//! compresses the first 64 KiB of each file (up to 32 MiB in all) with the chosen codec and level
//! and scales each file by its own sample's ratio (files past the budget by the ratio so far),
//! then adds the container's per-entry overhead.

use std::io::{self, Read, Write};

use super::entry::{Entry, Kind};
use super::{Codec, Format, PackError, PackOptions, compress, source, walk};
use crate::manifest::Skipped;

/// What a pack would do.
#[derive(Debug, Default)]
pub struct Estimate {
    /// Files that would be stored.
    pub files: u64,
    /// Folders and links that would be stored.
    pub others: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// What would be left out, and why.
    pub left_out: Vec<Skipped>,
    /// Bytes of content sampled for the estimate.
    pub sampled: u64,
    /// The archive's estimated size.
    pub archive_size: u64,
}

const SAMPLE_PER_FILE: u64 = 64 << 10;
const SAMPLE_TOTAL: u64 = 32 << 20;

/// Counts what is written to it.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Walks as `pack` would, calling `each` for every entry that would be stored.
pub fn estimate(opts: &PackOptions, each: &mut dyn FnMut(&Entry)) -> Result<Estimate, PackError> {
    let walk = walk::walk(&opts.paths, &opts.walk)?;
    let mut est = Estimate::default();
    let (mut content, mut sampled_out) = (0f64, 0u64);
    let mut overhead = 0u64;
    let mut buf = vec![0u8; SAMPLE_PER_FILE as usize];
    for item in walk {
        let e = match item {
            walk::Item::Entry(e) => e,
            walk::Item::Skipped(s) => {
                est.left_out.push(s);
                continue;
            }
        };
        overhead += match opts.format {
            // a header block, and half a block of padding on average
            Format::Tar => {
                512 + 256
                    + if e.name.len() > 100 {
                        512 + e.name.len() as u64
                    } else {
                        0
                    }
            }
            // local header, central directory entry, both with the name, and a data descriptor
            Format::Zip => 30 + 46 + 16 + 2 * e.name.len() as u64,
        };
        match &e.kind {
            Kind::File { size } => {
                est.files += 1;
                est.bytes += size;
                if opts.compression.codec == Codec::None {
                    content += *size as f64;
                } else if est.sampled < SAMPLE_TOTAL {
                    match source::open_source(&e.src, opts.walk.follow_symlinks) {
                        Ok(s) => {
                            let mut r = s.reader().take(SAMPLE_PER_FILE.min(SAMPLE_TOTAL - est.sampled));
                            let n = read_all(&mut r, &mut buf);
                            let out = compressed_len(&buf[..n], opts.compression);
                            est.sampled += n as u64;
                            sampled_out += out;
                            content += if n == 0 {
                                0.0
                            } else {
                                *size as f64 * out as f64 / n as f64
                            };
                        }
                        Err(reason) => {
                            est.left_out.push(Skipped {
                                path: e.src.display().to_string(),
                                reason,
                            });
                            continue;
                        }
                    }
                } else {
                    let ratio = sampled_out as f64 / est.sampled.max(1) as f64;
                    content += *size as f64 * ratio;
                }
            }
            Kind::Dir | Kind::Symlink { .. } => est.others += 1,
        }
        each(&e);
    }
    est.archive_size = content as u64 + overhead + 1024;
    Ok(est)
}

/// The size of `sample` compressed alone (a zip entry is; a tar stream compresses across files,
/// which this does not count).
fn compressed_len(sample: &[u8], c: super::Compression) -> u64 {
    let Ok(mut enc) = compress::StreamEncoder::new(Count(0), c, 1) else {
        return sample.len() as u64;
    };
    if enc.write_all(sample).is_err() {
        return sample.len() as u64;
    }
    enc.finish().map_or(sample.len() as u64, |c| c.0)
}

fn read_all(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}
