//! Packing one link of a chain: as the walk goes, decides for each file and link whether it is
//! stored (new or changed since the previous push) or only listed, keeps each open folder's
//! children for its dumpdir (written once the walk has left the folder), and writes the new
//! records. Memory: the previous push's records, and the children of the folders open on the
//! walk's path.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use super::dumpdir::{self, Child};
use super::state::{Previous, Record};
use crate::pack::entry::Entry;

/// A folder the walk is inside.
struct Open {
    entry: Entry,
    children: Vec<(String, Child)>,
}

/// A folder's dumpdir, ready to write: the folder's entry and the dumpdir's bytes.
pub type Dumpdir = (Entry, Vec<u8>);

/// The decisions and records of one link being packed.
pub struct Tracker {
    previous: Option<Arc<Previous>>,
    records: BufWriter<File>,
    open: Vec<Open>,
}

fn base_name(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, b)| b)
}

impl Tracker {
    /// Writes the new records to `pending`; `previous` is what the last confirmed push saw (none
    /// for a full archive: everything is stored).
    pub fn create(pending: &Path, previous: Option<Arc<Previous>>) -> io::Result<Tracker> {
        Ok(Tracker {
            previous,
            records: BufWriter::new(File::create(pending)?),
            open: Vec::new(),
        })
    }

    fn record(&mut self, r: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.records, r)?;
        self.records.write_all(b"\n")
    }

    /// Closes the folders the walk has left by reaching `name`; returns their dumpdirs, innermost
    /// first.
    pub fn reach(&mut self, name: &str) -> Vec<Dumpdir> {
        let mut done = Vec::new();
        while let Some(top) = self.open.last() {
            let inside = name.len() > top.entry.name.len()
                && name.starts_with(&top.entry.name)
                && name.as_bytes()[top.entry.name.len()] == b'/';
            if inside {
                break;
            }
            if let Some(d) = self.close() {
                done.push(d);
            }
        }
        done
    }

    fn close(&mut self) -> Option<Dumpdir> {
        let mut top = self.open.pop()?;
        Some((top.entry, dumpdir::encode(&mut top.children)))
    }

    fn list(&mut self, name: &str, child: Child) {
        if let Some(top) = self.open.last_mut() {
            top.children.push((base_name(name).to_string(), child));
        }
    }

    /// A folder: opened (its dumpdir follows its contents), listed in its parent.
    pub fn folder(&mut self, e: &Entry) -> io::Result<()> {
        self.list(&e.name, Child::Folder);
        self.record(&Record::of(e))?;
        self.open.push(Open {
            entry: e.clone(),
            children: Vec::new(),
        });
        Ok(())
    }

    /// Whether a file or link must be stored: it is new, or differs from its previous record.
    pub fn changed(&self, e: &Entry) -> bool {
        match self.previous.as_deref().and_then(|p| p.get(&e.name)) {
            None => true,
            Some(old) => *old != Record::of(e),
        }
    }

    /// A file or link stored in this archive.
    pub fn stored(&mut self, e: &Entry) -> io::Result<()> {
        self.list(&e.name, Child::Stored);
        self.record(&Record::of(e))
    }

    /// A file or link left as an earlier link has it.
    pub fn unchanged(&mut self, e: &Entry) -> io::Result<()> {
        self.list(&e.name, Child::Unchanged);
        self.record(&Record::of(e))
    }

    /// A changed file that could not be read this time: an earlier link's version stays (and it
    /// is tried again next time); a new one is left out.
    pub fn unreadable(&mut self, e: &Entry) -> io::Result<()> {
        let Some(old) = self.previous.as_deref().and_then(|p| p.get(&e.name)).cloned() else {
            return Ok(());
        };
        self.list(&e.name, Child::Unchanged);
        // a record that can never match: the file is stored at the next push it can be read
        self.record(&Record { c: i64::MIN, ..old })
    }

    /// Closes every folder still open (their dumpdirs, innermost first) and makes the records
    /// durable.
    pub fn finish(mut self) -> io::Result<Vec<Dumpdir>> {
        let mut done = Vec::new();
        while let Some(d) = self.close() {
            done.push(d);
        }
        let file = self.records.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(done)
    }
}
