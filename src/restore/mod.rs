//! Restore: check an archive against its manifest, then extract it into a folder — zip, tar,
//! tar.gz or tar.zst — with modes, mtimes and symlinks, never letting an entry land outside the
//! folder: no absolute names, no `..`, and nothing is ever written through a symlink (a link may
//! point anywhere, but a later entry under it is refused).
//!
//! Entries are extracted into a staging folder inside the target folder ([`staging`]) and moved
//! into place only once the whole archive has been read to its end and every check passed: each
//! zip entry's CRC, each entry's size, each tar header's checksum, the gzip or zstd stream's own
//! checksum ([`stream`]), and the end-of-archive block. A damaged archive leaves the target
//! folder as it was: no damaged file under its name, no partial restore, no temporary files.

mod purge;
mod staging;
mod stream;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::manifest::{self, ManifestError};
use staging::Staging;
use stream::{Codec, TarStream};

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
    #[error("{}: {}", .path.display(), crate::durable::IoReason(.source))]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The zip reader refused the archive.
    #[error("{path}: {source}")]
    Zip {
        /// The archive.
        path: PathBuf,
        /// What the zip reader said.
        source: zip::result::ZipError,
    },
    /// The archive's bytes fail a check: an entry's CRC or size, the compressed stream's
    /// checksum, a tar header; or it ends early. Nothing of it was moved into the target folder.
    #[error("{path}: {reason}")]
    Damaged {
        /// The archive.
        path: PathBuf,
        /// What failed, e.g. "entry 'a/b.txt': CRC mismatch: the archive is damaged".
        reason: String,
    },
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
    /// The links of an incremental chain that come before `archive`, full archive first: each is
    /// applied in turn (its deletions, then its entries), and `archive` last. Empty for an
    /// archive that stands alone.
    pub chain: Vec<PathBuf>,
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
    /// The archive, for messages.
    archive: PathBuf,
    /// The target folder (canonical).
    root: PathBuf,
    /// The staging folder inside it, where entries are written until the archive has been read
    /// whole (empty for a dry run).
    stage: PathBuf,
    /// Its name.
    stage_name: OsString,
    dry_run: bool,
    chown: bool,
    /// Folders whose owner, mode and mtime are applied at the end (children first).
    dirs: Vec<DirMeta>,
    /// Where each folder is in `dirs`: a later link of a chain updates its folder's metadata.
    dir_index: std::collections::HashMap<PathBuf, usize>,
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

/// A folder entry's metadata, applied once everything is in place.
struct DirMeta {
    rel: PathBuf,
    mode: Option<u32>,
    mtime: Option<i64>,
    owner: Option<(u32, u32)>,
}

/// What is at a path (not following a symlink there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    Dir,
    Symlink,
    Other,
}

fn found(path: &Path) -> Result<Found, RestoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(Found::Symlink),
        Ok(m) if m.is_dir() => Ok(Found::Dir),
        Ok(_) => Ok(Found::Other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(Extractor::io(path)(e)),
    }
}

impl Extractor {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
        move |source| RestoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The archive is damaged: `reason` says how.
    fn damaged(&self, reason: String) -> RestoreError {
        RestoreError::Damaged {
            path: self.archive.clone(),
            reason,
        }
    }

    /// Makes sure every folder above `rel` exists in the staging folder, and that none is a
    /// symlink or a file once the staged entries are moved into the target folder: a path is
    /// looked up among the staged entries first, then (unless a staged entry above it replaces
    /// what the target folder has there) in the target folder. Returns whether the target
    /// folder's own entry at `rel`, if any, is still there after the move (every folder above it
    /// is a folder of the target folder, merged).
    fn prepare_parents(&self, name: &str, rel: &Path) -> Result<bool, RestoreError> {
        let refuse = |reason| RestoreError::Unsafe {
            name: name.to_string(),
            reason,
        };
        let (mut staged, mut target) = (self.stage.clone(), self.root.clone());
        let mut shows = true;
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            staged.push(part);
            target.push(part);
            let in_stage = found(&staged)?;
            let in_target = if shows { found(&target)? } else { Found::Nothing };
            let here = if in_stage == Found::Nothing {
                in_target
            } else {
                in_stage
            };
            match here {
                Found::Symlink => {
                    return Err(refuse(
                        "a folder above it is a symlink (it could point outside the target folder)",
                    ));
                }
                Found::Other => return Err(refuse("a folder above it is a file")),
                Found::Dir => {}
                Found::Nothing => {}
            }
            if in_stage == Found::Nothing {
                fs::create_dir(&staged).map_err(Self::io(&target))?;
            }
            shows &= in_target == Found::Dir;
        }
        Ok(shows)
    }

    /// Removes whatever non-folder is at `dest`, so nothing is written through a link.
    fn clear(dest: &Path, shown: &Path) -> Result<(), RestoreError> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fs::remove_file(dest).map_err(Self::io(shown)),
            Err(_) => Ok(()),
        }
    }

    fn set_owner(&self, dest: &Path, shown: &Path, owner: Option<(u32, u32)>) {
        if let (true, Some((uid, gid))) = (self.chown, owner)
            && let Err(e) = std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
        {
            tracing::warn!("{}: cannot set owner {uid}:{gid}: {e}", shown.display());
        }
    }

    /// Copies an entry's data into `f`, checking that it is as long as the archive says.
    fn copy_data(&self, meta: &Meta, data: &mut dyn Read, f: &mut File, shown: &Path) -> Result<u64, RestoreError> {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            crate::stop::check().map_err(Self::io(shown))?;
            let k = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.damaged(format!("entry '{}': {}", meta.name, entry_fault(&e)))),
            };
            f.write_all(&buf[..k]).map_err(Self::io(shown))?;
            n += k as u64;
        }
        if n != meta.size {
            return Err(self.damaged(format!(
                "entry '{}' has {n} of its {} bytes: the archive is truncated",
                meta.name, meta.size
            )));
        }
        Ok(n)
    }

    fn place(&mut self, meta: Meta, data: &mut dyn Read) -> Result<(), RestoreError> {
        crate::stop::check().map_err(Self::io(&self.root))?;
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
        if rel.components().next() == Some(Component::Normal(&self.stage_name)) {
            return Err(RestoreError::Unsafe {
                name: meta.name,
                reason: "it has the name of the restore's staging folder",
            });
        }
        let shows = self.prepare_parents(&meta.name, &rel)?;
        // written at `dest` in the staging folder; named by where it will be (`shown`)
        let (dest, shown) = (self.stage.join(&rel), self.root.join(&rel));
        if meta.kind != EntryKind::Dir && shows && found(&dest)? == Found::Nothing && found(&shown)? == Found::Dir {
            return Err(RestoreError::Io {
                path: shown,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "a folder of that name is in the way"),
            });
        }
        match &meta.kind {
            EntryKind::Dir => {
                match found(&dest)? {
                    Found::Dir => {}
                    Found::Nothing => fs::create_dir(&dest).map_err(Self::io(&shown))?,
                    Found::Symlink | Found::Other => {
                        Self::clear(&dest, &shown)?;
                        fs::create_dir(&dest).map_err(Self::io(&shown))?;
                    }
                }
                let d = DirMeta {
                    rel: rel.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                    owner: meta.owner,
                };
                match self.dir_index.get(&rel) {
                    Some(&i) => self.dirs[i] = d,
                    None => {
                        self.dir_index.insert(rel, self.dirs.len());
                        self.dirs.push(d);
                    }
                }
            }
            EntryKind::File => {
                Self::clear(&dest, &shown)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(Self::io(&shown))?;
                let n = self.copy_data(&meta, data, &mut f, &shown)?;
                self.report.bytes += n;
                // owner first: chown clears setuid/setgid bits, so the mode goes on after it
                if let (true, Some((uid, gid))) = (self.chown, meta.owner)
                    && let Err(e) = std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                {
                    tracing::warn!("{}: cannot set owner {uid}:{gid}: {e}", shown.display());
                }
                if let Some(mode) = meta.mode {
                    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(Self::io(&shown))?;
                }
                if let Some(t) = meta.mtime {
                    f.set_modified(epoch(t)).map_err(Self::io(&shown))?;
                }
                drop(f);
            }
            EntryKind::Symlink(target) => {
                Self::clear(&dest, &shown)?;
                std::os::unix::fs::symlink(target, &dest).map_err(Self::io(&shown))?;
                self.set_owner(&dest, &shown, meta.owner);
                if let Some(t) = meta.mtime {
                    set_link_mtime(&dest, t, &shown);
                }
            }
            EntryKind::HardLink(target) => {
                let link_rel = link_rel.unwrap_or_default();
                let shows = self.prepare_parents(target, &link_rel)?;
                // the link's source: an entry staged before it, or (if none) a file the target
                // folder already has
                let staged = self.stage.join(&link_rel);
                let src = if shows && found(&staged)? == Found::Nothing {
                    self.root.join(&link_rel)
                } else {
                    staged
                };
                if found(&src)? == Found::Symlink {
                    return Err(RestoreError::Unsafe {
                        name: meta.name.clone(),
                        reason: "hard link to a symlink",
                    });
                }
                Self::clear(&dest, &shown)?;
                fs::hard_link(&src, &dest).map_err(Self::io(&shown))?;
            }
        }
        Ok(())
    }

    /// Applies folder owners, mtimes and modes once everything is in place, deepest first (so a
    /// read-only folder is filled first).
    fn finish(mut self) -> Result<RestoreReport, RestoreError> {
        for d in std::mem::take(&mut self.dirs).into_iter().rev() {
            let dir = self.root.join(&d.rel);
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue; // removed, or replaced by a file, by a later link of a chain
            }
            self.set_owner(&dir, &dir, d.owner);
            // times first: a mode without owner-read would stop the open needed to set them
            if let Some(t) = d.mtime {
                let f = File::open(&dir).map_err(Self::io(&dir))?;
                f.set_modified(epoch(t)).map_err(Self::io(&dir))?;
            }
            if let Some(mode) = d.mode {
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode & 0o7777)).map_err(Self::io(&dir))?;
            }
        }
        Ok(self.report)
    }
}

/// What a read error inside an entry's data means: the zip reader checks each entry's CRC32 as
/// its last byte is read.
/// Sets a symlink's own mtime (not its target's); a failure is logged, the link stays.
fn set_link_mtime(link: &Path, secs: i64, shown: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(link.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a NUL-terminated path that outlives the call; `times` holds two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        tracing::debug!(
            "{}: cannot set the link's mtime: {}",
            shown.display(),
            io::Error::last_os_error()
        );
    }
}

fn entry_fault(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::InvalidData && e.to_string() == "Invalid checksum" {
        "CRC mismatch: the archive is damaged".into()
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("{e}: the archive is truncated")
    } else {
        format!("{e}: the archive is damaged")
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
    let zip_err = |source| RestoreError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(Extractor::io(path))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_err)?;
    // Every name is checked before anything is written.
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(zip_err)?;
        safe_relative(&String::from_utf8_lossy(f.name_raw()))?;
    }
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(zip_err)?;
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
        let name = name.trim_end_matches('/').to_string();
        let kind = if f.is_dir() {
            EntryKind::Dir
        } else if f.is_symlink() {
            let mut target = String::new();
            // a link target is at most PATH_MAX bytes; a crafted entry must not fill memory
            (&mut f)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| ex.damaged(format!("entry '{name}': {}", entry_fault(&e))))?;
            EntryKind::Symlink(target)
        } else {
            EntryKind::File
        };
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

/// How reading a tar stream stopped short.
enum TarFailure {
    /// The tar reader failed: a bad header, or the stream failed under it.
    Read(io::Error),
    /// An entry could not be placed (refused, a write failed, its data failed a check).
    Place(RestoreError),
}

/// Extracts a tar stream, then reads the stream to its end (checking a compressed stream's
/// checksum). A fault of the stream itself is reported as such, whatever the tar reader made of
/// the bytes it got; an archive that ends before its end-of-archive block is truncated.
fn tar_entries<R: Read>(path: &Path, stream: TarStream<R>, ex: &mut Extractor) -> Result<(), RestoreError> {
    let mut archive = tar::Archive::new(stream);
    let read = tar_each(&mut archive, ex);
    let stream = archive.into_inner();
    let truncated = || ex.damaged("the archive ends before its end-of-archive block: it is truncated".into());
    match read {
        Err(TarFailure::Place(e)) => Err(match (stream.fault(), e) {
            // the entry's data failed because the stream under it did: that is the cause
            (Some(fault), RestoreError::Damaged { .. }) => ex.damaged(fault.to_string()),
            (_, e) => e,
        }),
        Err(TarFailure::Read(e)) => Err(match stream.fault() {
            Some(fault) => ex.damaged(fault.to_string()),
            None if stream.ended() => truncated(),
            None => ex.damaged(format!("{e}: the archive is damaged")),
        }),
        Ok(()) if stream.ended() => Err(truncated()),
        Ok(()) => stream.finish().map_err(|fault| RestoreError::Damaged {
            path: path.to_path_buf(),
            reason: fault,
        }),
    }
}

fn tar_each<R: Read>(archive: &mut tar::Archive<R>, ex: &mut Extractor) -> Result<(), TarFailure> {
    let entries = archive.entries().map_err(TarFailure::Read)?;
    for entry in entries {
        let mut entry = entry.map_err(TarFailure::Read)?;
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let size = entry.size();
        let h = entry.header();
        let (mode, mtime) = (h.mode().ok(), h.mtime().ok().map(|t| t as i64));
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
            t if t.as_byte() == purge::DUMPDIR => EntryKind::Dir,
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
        // only a regular file's data is read: for the others, the size is what the header says
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
        )
        .map_err(TarFailure::Place)?;
    }
    Ok(())
}

/// A decompressed tar stream and the codec it came through.
type TarReader = (Box<dyn Read>, Codec);

/// The decompressed tar stream of `archive` and its codec; `None` for a zip archive. zstd checks
/// the frame checksum (which `pack` writes) at the end of the frame.
fn tar_reader(archive: &Path, container: Container) -> Result<Option<TarReader>, RestoreError> {
    let open = || {
        File::open(archive)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(Extractor::io(archive))
    };
    Ok(Some(match container {
        Container::Zip => return Ok(None),
        Container::Tar => (Box::new(open()?), Codec::None),
        Container::TarGz => (Box::new(flate2::read::MultiGzDecoder::new(open()?)), Codec::Gzip),
        Container::TarZst => {
            let dec = zstd::stream::read::Decoder::with_buffer(open()?).map_err(Extractor::io(archive))?;
            (Box::new(dec), Codec::Zstd)
        }
    }))
}

/// Applies the deletions of a chain link (its dumpdirs) to the staged tree.
fn purge_link(archive: &Path, container: Container, stage: &Path) -> Result<(), RestoreError> {
    let Some((stream, _)) = tar_reader(archive, container)? else {
        return Err(RestoreError::Format {
            path: archive.to_path_buf(),
            reason: "a link of an incremental chain must be a tar archive".into(),
        });
    };
    let removed = purge::apply(archive, stream, stage)?;
    tracing::debug!("{}: {removed} entries deleted since the link before", archive.display());
    Ok(())
}

/// Reads the whole archive through `ex`.
fn extract(archive: &Path, container: Container, ex: &mut Extractor) -> Result<(), RestoreError> {
    match tar_reader(archive, container)? {
        None => zip_entries(archive, ex),
        Some((stream, codec)) => tar_entries(archive, TarStream::new(stream, codec), ex),
    }
}

/// Creates `into` and the folders above it that are missing; returns those it created,
/// outermost first.
fn make_folder(into: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    let mut missing = Vec::new();
    let mut at = into;
    loop {
        match fs::symlink_metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at.to_path_buf());
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => break,
                }
            }
            Err(e) => return Err(Extractor::io(at)(e)),
        }
    }
    missing.reverse();
    fs::create_dir_all(into).map_err(Extractor::io(into))?;
    Ok(missing)
}

/// Verifies (unless told not to) and extracts `opts.archive` into `opts.into`. Entries go into a
/// staging folder inside it first, and are moved into place only once the whole archive has been
/// read and every check passed (entry CRCs and sizes, the stream's checksum, tar headers, the
/// end of the archive); a restore that fails before leaves the folder as it was (the folders
/// made for it removed).
pub fn restore(opts: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let links: Vec<PathBuf> = opts.chain.iter().chain([&opts.archive]).cloned().collect();
    let mut containers = Vec::with_capacity(links.len());
    // every link is checked before anything is written
    for link in &links {
        if opts.verify {
            match manifest::verify(link) {
                Err(ManifestError::Missing(_)) => return Err(RestoreError::NoManifest(link.clone())),
                other => {
                    other?;
                }
            }
        }
        containers.push((link.clone(), sniff(link)?));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let chown = unsafe { libc::geteuid() } == 0;
    let mut ex = Extractor {
        archive: opts.archive.clone(),
        root: opts.into.clone(),
        stage: PathBuf::new(),
        stage_name: OsString::new(),
        dry_run: opts.dry_run,
        chown,
        dirs: Vec::new(),
        dir_index: std::collections::HashMap::new(),
        report: RestoreReport::default(),
    };
    if opts.dry_run {
        // a dry run lists the link asked for
        let (archive, container) = containers
            .pop()
            .ok_or_else(|| RestoreError::NoManifest(opts.archive.clone()))?;
        extract(&archive, container, &mut ex)?;
        return Ok(ex.report);
    }
    let made = make_folder(&opts.into)?;
    let result = extract_staged(&containers, &opts.into, ex);
    if result.is_err() {
        for dir in made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// Extracts into a staging folder inside `into`, then moves the entries into place.
fn extract_staged(
    links: &[(PathBuf, Container)],
    into: &Path,
    mut ex: Extractor,
) -> Result<RestoreReport, RestoreError> {
    let root = fs::canonicalize(into).map_err(Extractor::io(into))?;
    let mtime = fs::metadata(&root).and_then(|m| m.modified()).ok();
    let staging = Staging::create(&root).map_err(Extractor::io(&root))?;
    ex.root = root;
    ex.stage = staging.path().to_path_buf();
    ex.stage_name = staging.name().to_os_string();
    let extracted = links.iter().enumerate().try_for_each(|(i, (archive, container))| {
        ex.archive = archive.clone();
        if i > 0 {
            purge_link(archive, *container, &ex.stage)?;
        }
        extract(archive, *container, &mut ex)
    });
    if let Err(e) = extracted {
        staging.discard();
        // the staging folder came and went: the folder's mtime goes back to what it was
        if let Some(t) = mtime
            && let Err(e) = File::open(&ex.root).and_then(|f| f.set_modified(t))
        {
            tracing::debug!("{}: cannot set its mtime back: {e}", ex.root.display());
        }
        return Err(e);
    }
    staging
        .commit()
        .map_err(|(path, source)| RestoreError::Io { path, source })?;
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

    fn tar_of(path: &Path, files: &[(&str, &str)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, content.as_bytes()).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn what_the_target_folder_has_is_checked_too() {
        let d = tempfile::tempdir().unwrap();
        let (into, outside) = (d.path().join("into"), d.path().join("outside"));
        fs::create_dir_all(&into).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, into.join("evil")).unwrap();
        fs::write(into.join("file"), b"mine").unwrap();
        let archive = d.path().join("a.tar");
        let opts = RestoreOptions {
            archive: archive.clone(),
            into: into.clone(),
            dry_run: false,
            verify: false,
            chain: Vec::new(),
        };
        for name in ["evil/pwned.txt", "file/below.txt"] {
            tar_of(&archive, &[("ok.txt", "fine"), (name, "gotcha")]);
            match restore(&opts) {
                Err(RestoreError::Unsafe { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(
                fs::read_dir(&outside).unwrap().count(),
                0,
                "nothing written through the link"
            );
            let mut left: Vec<_> = fs::read_dir(&into).unwrap().map(|e| e.unwrap().file_name()).collect();
            left.sort();
            assert_eq!(left, ["evil", "file"], "nothing restored, no staging folder left");
        }
        // a file of the archive replaces the target folder's link itself, never what it points to
        tar_of(&archive, &[("evil", "a file now")]);
        restore(&opts).unwrap();
        assert_eq!(fs::read(into.join("evil")).unwrap(), b"a file now");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn dos_times_convert() {
        let t = zip::DateTime::from_date_and_time(2021, 9, 13, 12, 26, 40).unwrap();
        assert_eq!(dos_to_epoch(t), Some(1_631_536_000));
    }
}
