//! Restore: check an archive against its manifest, then extract it into a folder — zip, tar,
//! tar.gz or tar.zst — with modes, mtimes and symlinks, never letting an entry land outside the
//! folder: no absolute names, no `..`, and nothing is ever written through a symlink (a link may
//! point anywhere, but a later entry under it is refused).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::manifest::{self, ManifestError};

/// Why a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The archive does not match its manifest (or has none).
    #[error("{0}")]
    Verify(#[from] ManifestError),
    /// The archive has no manifest beside it and verification was asked for.
    #[error("no manifest beside {0}: cannot verify it (use --no-verify to extract anyway)")]
    NoManifest(PathBuf),
    /// An entry would land outside the target folder, or be written through a symlink.
    #[error("refusing entry '{name}': {reason}")]
    Unsafe {
        /// The entry's name as stored.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The archive is not one robusto can read.
    #[error("{path}: {reason}")]
    Format {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the archive or writing the tree failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The zip reader refused the archive.
    #[error("zip: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// What to restore, and how.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The archive.
    pub archive: PathBuf,
    /// The folder to extract into (created if missing).
    pub into: PathBuf,
    /// List the entries instead of extracting them.
    pub dry_run: bool,
    /// Check the archive against `FILE.manifest.json` first.
    pub verify: bool,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A folder.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link to the given target.
    Symlink(String),
    /// A hard link to an earlier entry.
    HardLink(String),
}

/// One entry as listed by a dry run.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its name in the archive.
    pub name: String,
    /// Its kind.
    pub kind: EntryKind,
    /// Permission bits, if recorded.
    pub mode: Option<u32>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds since the epoch), if recorded.
    pub mtime: Option<i64>,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Entries restored (or listed).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries of kinds robusto does not restore (devices, fifos), by name.
    pub left_out: Vec<String>,
    /// The listing, for a dry run.
    pub listing: Vec<Listed>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Zip,
    Tar,
    TarGz,
    TarZst,
}

fn sniff(path: &Path) -> Result<Container, RestoreError> {
    let io_err = |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 512];
    let mut f = File::open(path).map_err(io_err)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(io_err)? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Container::Zip
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Container::TarGz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Container::TarZst
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Container::Tar
    } else {
        return Err(RestoreError::Format {
            path: path.to_path_buf(),
            reason: "not a zip or tar archive".into(),
        });
    })
}

/// The relative path an entry name stands for (`None` for the target folder itself, as in a
/// tar made with `tar -C dir .`), or why it is refused.
fn safe_relative(name: &str) -> Result<Option<PathBuf>, RestoreError> {
    let refuse = |reason| {
        Err(RestoreError::Unsafe {
            name: name.to_string(),
            reason,
        })
    };
    if name.contains('\0') {
        return refuse("the name contains a NUL byte");
    }
    if name.starts_with('/') || name.starts_with('\\') || name.get(1..3) == Some(":\\") || name.get(1..3) == Some(":/")
    {
        return refuse("absolute path");
    }
    let mut rel = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return refuse("'..' would leave the target folder"),
            Component::RootDir | Component::Prefix(_) => return refuse("absolute path"),
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

struct Extractor {
    root: PathBuf,
    dry_run: bool,
    chown: bool,
    /// Folders whose mode and mtime are applied at the end (children first).
    dirs: Vec<(PathBuf, Option<u32>, Option<i64>)>,
    report: RestoreReport,
}

struct Meta {
    name: String,
    kind: EntryKind,
    mode: Option<u32>,
    mtime: Option<i64>,
    owner: Option<(u32, u32)>,
    size: u64,
}

impl Extractor {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
        move |source| RestoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Makes sure every folder above `rel` exists inside the root and none is a symlink.
    fn prepare_parents(&mut self, name: &str, rel: &Path) -> Result<(), RestoreError> {
        let mut at = self.root.clone();
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(RestoreError::Unsafe {
                        name: name.to_string(),
                        reason: "a folder above it is a symlink (it could point outside the target folder)",
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(RestoreError::Unsafe {
                        name: name.to_string(),
                        reason: "a folder above it is a file",
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at).map_err(Self::io(&at))?,
                Err(e) => return Err(Self::io(&at)(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever non-folder is at `dest`, so nothing is written through a link.
    fn clear(dest: &Path) -> Result<(), RestoreError> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fs::remove_file(dest).map_err(Self::io(dest)),
            Err(_) => Ok(()),
        }
    }

    fn set_owner(&self, dest: &Path, owner: Option<(u32, u32)>) {
        if let (true, Some((uid, gid))) = (self.chown, owner)
            && let Err(e) = std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
        {
            tracing::warn!("{}: cannot set owner {uid}:{gid}: {e}", dest.display());
        }
    }

    fn place(&mut self, meta: Meta, data: &mut dyn Read) -> Result<(), RestoreError> {
        let Some(rel) = safe_relative(&meta.name)? else {
            return Ok(());
        };
        let link_rel = match &meta.kind {
            EntryKind::HardLink(target) => match safe_relative(target)? {
                Some(r) => Some(r),
                None => {
                    return Err(RestoreError::Unsafe {
                        name: meta.name,
                        reason: "hard link to the target folder",
                    });
                }
            },
            _ => None,
        };
        self.report.entries += 1;
        if self.dry_run {
            self.report.listing.push(Listed {
                name: meta.name,
                kind: meta.kind,
                mode: meta.mode,
                size: meta.size,
                mtime: meta.mtime,
            });
            return Ok(());
        }
        self.prepare_parents(&meta.name, &rel)?;
        let dest = self.root.join(&rel);
        match &meta.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        Self::clear(&dest)?;
                        fs::create_dir(&dest).map_err(Self::io(&dest))?;
                    }
                    Err(_) => fs::create_dir(&dest).map_err(Self::io(&dest))?,
                }
                self.set_owner(&dest, meta.owner);
                self.dirs.push((dest, meta.mode, meta.mtime));
            }
            EntryKind::File => {
                Self::clear(&dest)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(Self::io(&dest))?;
                let n = io::copy(data, &mut f).map_err(Self::io(&dest))?;
                self.report.bytes += n;
                // owner first: chown clears setuid/setgid bits, so the mode goes on after it
                if let (true, Some((uid, gid))) = (self.chown, meta.owner)
                    && let Err(e) = std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                {
                    tracing::warn!("{}: cannot set owner {uid}:{gid}: {e}", dest.display());
                }
                if let Some(mode) = meta.mode {
                    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(Self::io(&dest))?;
                }
                if let Some(t) = meta.mtime {
                    f.set_modified(epoch(t)).map_err(Self::io(&dest))?;
                }
                drop(f);
            }
            EntryKind::Symlink(target) => {
                Self::clear(&dest)?;
                std::os::unix::fs::symlink(target, &dest).map_err(Self::io(&dest))?;
                self.set_owner(&dest, meta.owner);
            }
            EntryKind::HardLink(target) => {
                let link_rel = link_rel.unwrap_or_default();
                self.prepare_parents(target, &link_rel)?;
                let src = self.root.join(&link_rel);
                if fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(RestoreError::Unsafe {
                        name: meta.name.clone(),
                        reason: "hard link to a symlink",
                    });
                }
                Self::clear(&dest)?;
                fs::hard_link(&src, &dest).map_err(Self::io(&dest))?;
            }
        }
        Ok(())
    }

    /// Applies folder modes and mtimes, deepest first (so a read-only folder is filled first).
    fn finish(mut self) -> Result<RestoreReport, RestoreError> {
        for (dir, mode, mtime) in self.dirs.drain(..).rev() {
            // times first: a mode without owner-read would stop the open needed to set them
            if let Some(t) = mtime {
                let f = File::open(&dir).map_err(Self::io(&dir))?;
                f.set_modified(epoch(t)).map_err(Self::io(&dir))?;
            }
            if let Some(mode) = mode {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777)).map_err(Self::io(&dir))?;
            }
        }
        Ok(self.report)
    }
}

fn epoch(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn zip_entries(path: &Path, ex: &mut Extractor) -> Result<(), RestoreError> {
    let file = File::open(path).map_err(Extractor::io(path))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))?;
    // Every name is checked before anything is written.
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i)?;
        safe_relative(&String::from_utf8_lossy(f.name_raw()))?;
    }
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let name = String::from_utf8_lossy(f.name_raw()).into_owned();
        let mode = f.unix_mode().map(|m| m & 0o7777);
        let mtime = f
            .extra_data_fields()
            .find_map(|x| match x {
                zip::extra_fields::ExtraField::ExtendedTimestamp(t) => t.mod_time().map(i64::from),
                _ => None,
            })
            .or_else(|| f.last_modified().and_then(dos_to_epoch));
        let size = f.size();
        let kind = if f.is_dir() {
            EntryKind::Dir
        } else if f.is_symlink() {
            let mut target = String::new();
            // a link target is at most PATH_MAX bytes; a crafted entry must not fill memory
            (&mut f)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(Extractor::io(path))?;
            EntryKind::Symlink(target)
        } else {
            EntryKind::File
        };
        let name = name.trim_end_matches('/').to_string();
        ex.place(
            Meta {
                name,
                kind,
                mode,
                mtime,
                owner: None,
                size,
            },
            &mut f,
        )?;
    }
    Ok(())
}

fn dos_to_epoch(t: zip::DateTime) -> Option<i64> {
    let month = time::Month::try_from(t.month()).ok()?;
    let date = time::Date::from_calendar_date(t.year() as i32, month, t.day()).ok()?;
    let time = time::Time::from_hms(t.hour(), t.minute(), t.second()).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}

fn tar_entries<R: Read>(path: &Path, reader: R, ex: &mut Extractor) -> Result<(), RestoreError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(Extractor::io(path))?;
    for entry in entries {
        let mut entry = entry.map_err(Extractor::io(path))?;
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let h = entry.header();
        let (mode, mtime, size) = (h.mode().ok(), h.mtime().ok().map(|t| t as i64), h.size().unwrap_or(0));
        let owner = match (h.uid(), h.gid()) {
            (Ok(u), Ok(g)) => Some((u as u32, g as u32)),
            _ => None,
        };
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let kind = match h.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Symlink => EntryKind::Symlink(link()),
            tar::EntryType::Link => EntryKind::HardLink(link().trim_end_matches('/').to_string()),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            _ => {
                tracing::info!("left out {name}: device or fifo entries are not restored");
                ex.report.left_out.push(name);
                continue;
            }
        };
        ex.place(
            Meta {
                name,
                kind,
                mode,
                mtime,
                owner,
                size,
            },
            &mut entry,
        )?;
    }
    Ok(())
}

/// Verifies (unless told not to) and extracts `opts.archive` into `opts.into`.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    if opts.verify {
        match manifest::verify(&opts.archive) {
            Err(ManifestError::Missing(_)) => return Err(RestoreError::NoManifest(opts.archive.clone())),
            other => {
                other?;
            }
        }
    }
    let container = sniff(&opts.archive)?;
    if !opts.dry_run {
        fs::create_dir_all(&opts.into).map_err(Extractor::io(&opts.into))?;
    }
    let root = if opts.dry_run {
        opts.into.clone()
    } else {
        fs::canonicalize(&opts.into).map_err(Extractor::io(&opts.into))?
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let chown = unsafe { libc::geteuid() } == 0;
    let mut ex = Extractor {
        root,
        dry_run: opts.dry_run,
        chown,
        dirs: Vec::new(),
        report: RestoreReport::default(),
    };
    let path = &opts.archive;
    let open = || {
        File::open(path)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(Extractor::io(path))
    };
    match container {
        Container::Zip => zip_entries(path, &mut ex)?,
        Container::Tar => tar_entries(path, open()?, &mut ex)?,
        Container::TarGz => tar_entries(path, flate2::read::MultiGzDecoder::new(open()?), &mut ex)?,
        Container::TarZst => {
            let dec = zstd::stream::read::Decoder::with_buffer(open()?).map_err(Extractor::io(path))?;
            tar_entries(path, dec, &mut ex)?
        }
    }
    ex.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/\0b", "C:\\x"] {
            assert!(safe_relative(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(safe_relative("a/./b/c.txt").unwrap(), Some(PathBuf::from("a/b/c.txt")));
        assert_eq!(safe_relative("dir/").unwrap(), Some(PathBuf::from("dir")));
        assert_eq!(safe_relative("./").unwrap(), None);
    }

    #[test]
    fn dos_times_convert() {
        let t = zip::DateTime::from_date_and_time(2021, 9, 13, 12, 26, 40).unwrap();
        assert_eq!(dos_to_epoch(t), Some(1_631_536_000));
    }
}
