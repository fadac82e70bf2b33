//! Packing one link of a chain: as the walk goes, decides for each file and link whether it is
//! stored (new or changed since the previous push) or only listed in its folder's dumpdir, and
//! writes the new records. Memory: the previous push's records, and one folder's listing at a
//! time.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::dumpdir::{self, Child};
use super::state::{Previous, Record};
use crate::pack::entry::Entry;

/// The decisions and records of one link being packed.
pub struct Tracker {
    previous: Option<Arc<Previous>>,
    records: BufWriter<File>,
    follow_symlinks: bool,
}

impl Tracker {
    /// Writes the new records to `pending`; `previous` is what the last confirmed push saw (none
    /// for a full archive: everything is stored). `follow_symlinks` as the walk does.
    pub fn create(pending: &Path, previous: Option<Arc<Previous>>, follow_symlinks: bool) -> io::Result<Tracker> {
        Ok(Tracker {
            previous,
            records: BufWriter::new(File::create(pending)?),
            follow_symlinks,
        })
    }

    fn record(&mut self, r: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.records, r)?;
        self.records.write_all(b"\n")
    }

    /// A folder: its record, and its dumpdir, made from what the folder holds now (written
    /// before its contents, as GNU tar does, so that `tar -x -G` clears the way first). A child
    /// listed but left out by the walk (excluded, or not a file, folder or link) is only kept
    /// from an earlier link, never deleted by this one.
    pub fn folder(&mut self, e: &Entry) -> io::Result<Vec<u8>> {
        self.record(&Record::of(e))?;
        let mut children = Vec::new();
        for item in fs::read_dir(&e.src)? {
            let item = item?;
            let Some(base) = item.file_name().to_str().map(str::to_string) else {
                continue; // the walk leaves out names that are not UTF-8
            };
            let path = item.path();
            let meta = if self.follow_symlinks {
                fs::metadata(&path)
            } else {
                fs::symlink_metadata(&path)
            };
            let Ok(meta) = meta else { continue };
            let name = format!("{}/{base}", e.name);
            let child = if meta.is_dir() {
                Child::Folder
            } else if meta.is_file() || meta.file_type().is_symlink() {
                let target = meta.file_type().is_symlink().then(|| {
                    fs::read_link(&path)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
                if self.is_new_or_changed(&Record::of_meta(name, &meta, target)) {
                    Child::Stored
                } else {
                    Child::Unchanged
                }
            } else {
                continue;
            };
            children.push((base, child));
        }
        Ok(dumpdir::encode(&mut children))
    }

    fn is_new_or_changed(&self, now: &Record) -> bool {
        match self.previous.as_deref().and_then(|p| p.get(&now.n)) {
            None => true,
            Some(old) => old != now,
        }
    }

    /// Whether a file or link must be stored: it is new, or differs from its previous record.
    pub fn changed(&self, e: &Entry) -> bool {
        self.is_new_or_changed(&Record::of(e))
    }

    /// A file or link stored in this archive.
    pub fn stored(&mut self, e: &Entry) -> io::Result<()> {
        self.record(&Record::of(e))
    }

    /// A file or link left as an earlier link has it.
    pub fn unchanged(&mut self, e: &Entry) -> io::Result<()> {
        self.record(&Record::of(e))
    }

    /// A changed file that could not be read this time: an earlier link's version stays (and it
    /// is tried again next time); a new one is left out.
    pub fn unreadable(&mut self, e: &Entry) -> io::Result<()> {
        let Some(old) = self.previous.as_deref().and_then(|p| p.get(&e.name)).cloned() else {
            return Ok(());
        };
        // a record that can never match: the file is stored at the next push it can be read
        self.record(&Record { c: i64::MIN, ..old })
    }

    /// Makes the records durable.
    pub fn finish(self) -> io::Result<()> {
        let file = self.records.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}
