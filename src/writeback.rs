//! Streaming big writes to disk without flooding the page cache.
//!
//! A server that receives gigabytes and a packer that writes a staging file both write far more
//! than they will read back soon. Left to itself the kernel keeps every written page cached and
//! dirty until the final fsync, which then has the whole backlog to write, and each new page
//! comes from memory that may never have been touched (on a virtual machine each such page costs
//! a fault in the host: that copy was most of `robusto serve`'s CPU time). [`Writeback`] asks the
//! kernel to start writing each step as soon as it is written (`sync_file_range`), and drops the
//! step before it from the cache once it is on disk (`posix_fadvise(DONTNEED)`), so the same few
//! megabytes of cache are reused over and over and the closing fsync has almost nothing left.
//!
//! Purely an optimisation of *when* bytes reach the disk: durability still comes from the
//! caller's fsync. Where the calls are not supported they are skipped. An I/O error seen while
//! waiting is returned, because once a wait has reported it a later fsync on the same descriptor
//! would not.

use std::fs::File;
use std::io;

/// Tracks how much of a file written front to back has been handed to the disk and released.
#[derive(Debug)]
pub struct Writeback {
    step: u64,
    written: u64,
    requested: u64,
    released: u64,
    enabled: bool,
    keep: bool,
}

impl Writeback {
    /// A tracker for a file whose next write lands at `at`, working in steps of `step` bytes.
    pub fn new(at: u64, step: u64) -> Self {
        Writeback {
            step: step.max(1),
            written: at,
            requested: at,
            released: at,
            enabled: cfg!(target_os = "linux"),
            keep: false,
        }
    }

    /// Starts writeback early but leaves the pages cached: for bytes that will be read again
    /// soon (a partial upload, copied into its final upload when all parts are in).
    pub fn keeping_cache(mut self) -> Self {
        self.keep = true;
        self
    }

    /// Records `n` more bytes written at the end of `file`. Each time a step is complete its
    /// writeback is started, and everything written before the previous step is waited for and
    /// dropped from the cache.
    pub fn wrote(&mut self, file: &File, n: u64) -> io::Result<()> {
        self.written += n;
        if !self.enabled || self.written - self.requested < self.step {
            return Ok(());
        }
        let behind = self.requested;
        self.start(file, behind, self.written - behind)?;
        self.requested = self.written;
        if behind > self.released && !self.keep {
            self.wait(file, self.released, behind - self.released)?;
            drop_cached(file, self.released, behind - self.released);
            self.released = behind;
        }
        Ok(())
    }

    /// After the caller's fsync: drops everything written through this tracker from the cache.
    pub fn release_all(&mut self, file: &File) {
        if self.enabled && !self.keep && self.written > self.released {
            drop_cached(file, self.released, self.written - self.released);
        }
        self.released = self.written;
        self.requested = self.written;
    }

    fn start(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        self.sync_range(file, offset, len, false)
    }

    fn wait(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        self.sync_range(file, offset, len, true)
    }

    #[cfg(target_os = "linux")]
    fn sync_range(&mut self, file: &File, offset: u64, len: u64, wait: bool) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor belongs to
        // `file`, which is open for the duration of the call.
        let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not supported here (a pipe, an odd filesystem): leave it all to the fsync.
            Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP) => {
                self.enabled = false;
                Ok(())
            }
            Some(libc::EINTR) => Ok(()),
            _ => Err(e),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sync_range(&mut self, _file: &File, _offset: u64, _len: u64, _wait: bool) -> io::Result<()> {
        Ok(())
    }
}

/// Drops clean cached pages of `file` in the range (a hint; dirty pages are left alone).
pub fn drop_cached(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor belongs to `file`.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn tracks_steps_and_keeps_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.bin");
        let mut f = File::create(&p).unwrap();
        let mut wb = Writeback::new(0, 1 << 20);
        let block: Vec<u8> = (0..(700 << 10)).map(|i| (i % 251) as u8).collect();
        for _ in 0..10 {
            f.write_all(&block).unwrap();
            wb.wrote(&f, block.len() as u64).unwrap();
        }
        assert!(wb.released <= wb.requested && wb.requested <= wb.written);
        assert_eq!(wb.written, 10 * block.len() as u64);
        if cfg!(target_os = "linux") {
            assert!(wb.released > 0, "earlier steps were released");
        }
        f.sync_data().unwrap();
        wb.release_all(&f);
        assert_eq!(wb.released, wb.written);
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len(), 10 * block.len());
        assert!(back.chunks(block.len()).all(|c| c == &block[..]));
    }

    #[test]
    fn keeping_cache_never_releases() {
        let d = tempfile::tempdir().unwrap();
        let mut f = File::create(d.path().join("k.bin")).unwrap();
        let mut wb = Writeback::new(0, 4096).keeping_cache();
        for _ in 0..4 {
            f.write_all(&[3u8; 8192]).unwrap();
            wb.wrote(&f, 8192).unwrap();
        }
        assert_eq!(wb.released, 0);
        assert_eq!(wb.requested, 4 * 8192);
    }

    #[test]
    fn starts_at_an_offset() {
        let d = tempfile::tempdir().unwrap();
        let mut f = File::create(d.path().join("o.bin")).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        let mut wb = Writeback::new(4096, 4096);
        f.write_all(&[2u8; 8192]).unwrap();
        wb.wrote(&f, 8192).unwrap();
        assert_eq!(wb.written, 12288);
        assert_eq!(wb.requested, 12288);
    }
}
