//! What the last confirmed push of a job saw, in the job's state directory
//! (`STATE/incremental/`): `KEY.json`, the chain's head ([`Head`]: which link was pushed last,
//! its name and MD5), and the records file it names, one [`Record`] per entry of the tree as JSON
//! lines. A push packs against them and writes its own records beside its staging archive
//! ([`pending_path`]); only once the server confirmed the upload does [`Store::commit`] make them
//! the job's: the records file is renamed into place under a name of its own, then the head is
//! replaced atomically, then the old records file goes. A crash at any point leaves a head and
//! the records it names.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Link, Parent};
use crate::durable;
use crate::fingerprint::Md5;
use crate::pack::entry::{Entry, Kind};

/// One entry of the tree as a push saw it: enough to tell whether it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its name in the archive.
    pub n: String,
    /// `f` file, `d` folder, `l` link.
    pub k: char,
    /// Size.
    pub s: u64,
    /// Modification time, ns.
    pub m: i64,
    /// Status change time, ns.
    pub c: i64,
    /// Inode.
    pub i: u64,
    /// Device.
    pub d: u64,
    /// Mode bits.
    pub p: u32,
    /// Owner.
    pub u: u32,
    /// Group.
    pub g: u32,
    /// A link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
}

impl Record {
    /// The record of what `m` (a `stat` of the entry called `name`) says; `target` for a link.
    pub fn of_meta(name: String, m: &std::fs::Metadata, target: Option<String>) -> Record {
        use std::os::unix::fs::MetadataExt;
        let change = crate::pack::entry::Change::of(m);
        let k = if m.is_dir() {
            'd'
        } else if m.file_type().is_symlink() {
            'l'
        } else {
            'f'
        };
        Record {
            n: name,
            k,
            s: if k == 'f' { m.len() } else { 0 },
            m: change.mtime_ns,
            c: change.ctime_ns,
            i: change.ino,
            d: change.dev,
            p: m.mode() & 0o7777,
            u: m.uid(),
            g: m.gid(),
            t: if k == 'l' { target } else { None },
        }
    }

    /// The record of a walked entry.
    pub fn of(e: &Entry) -> Record {
        let (k, s, t) = match &e.kind {
            Kind::Dir => ('d', 0, None),
            Kind::File { size } => ('f', *size, None),
            Kind::Symlink { target } => ('l', 0, Some(target.to_string_lossy().into_owned())),
        };
        Record {
            n: e.name.clone(),
            k,
            s,
            m: e.change.mtime_ns,
            c: e.change.ctime_ns,
            i: e.change.ino,
            d: e.change.dev,
            p: e.mode,
            u: e.uid,
            g: e.gid,
            t,
        }
    }
}

/// What the tree looked like at the last confirmed push, by name.
pub type Previous = HashMap<String, Record>;

/// The chain's head: the link the server confirmed last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The chain (its full archive's name).
    pub chain: String,
    /// The last link's level.
    pub level: u32,
    /// The last link's upload name.
    pub name: String,
    /// The last link's archive MD5.
    pub md5: Md5,
    /// When the chain's full archive was confirmed (seconds since the epoch).
    pub full_at: u64,
    /// The records file (in the same folder).
    pub records: String,
}

/// When a new full archive starts (`--full-every`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullEvery {
    /// After this many pushes in all (the full included): `--full-every 7` is one full and six
    /// incrementals.
    Pushes(u32),
    /// Once the full is older than this.
    Age(Duration),
}

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("incremental state {}: {}", .path.display(), crate::durable::IoReason(.source))]
pub struct StateError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// Where a push writes its records: beside its archive.
pub fn pending_path(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".records");
    archive.with_file_name(name)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The incremental state of one job.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    key: String,
}

impl Store {
    /// The state of the job sending `paths` to `target` (a folder of `state_dir`).
    pub fn for_job(state_dir: &Path, target: &str, paths: &[PathBuf]) -> Store {
        let paths: Vec<PathBuf> = paths
            .iter()
            .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let key = Md5::of(format!("{paths:?}|{target}").as_bytes()).hex()[..20].to_string();
        Store {
            dir: state_dir.join("incremental"),
            key,
        }
    }

    fn head_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.key))
    }

    /// The head, if the job has one whose records file is there; a damaged or missing one is
    /// reported and treated as none (the next push is then a full archive).
    pub fn head(&self) -> Option<Head> {
        let path = self.head_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; this push is a full archive", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<Head>(&bytes) {
            Ok(h) if self.dir.join(&h.records).is_file() => Some(h),
            Ok(h) => {
                tracing::warn!(
                    "{} names {}, which is missing; this push is a full archive",
                    path.display(),
                    h.records
                );
                None
            }
            Err(e) => {
                tracing::warn!("{} is damaged ({e}); this push is a full archive", path.display());
                None
            }
        }
    }

    /// The records of `head`. A damaged records file is an error: the push would not know what
    /// changed.
    pub fn previous(&self, head: &Head) -> Result<Previous, StateError> {
        let path = self.dir.join(&head.records);
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(err)?;
        let mut out = HashMap::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(err)?;
            if line.is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(&line)
                .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
            out.insert(r.n.clone(), r);
        }
        Ok(out)
    }

    /// Makes the records at `pending` the job's, for the link `link` named `name` with archive
    /// MD5 `md5`, once the server confirmed it.
    pub fn commit(
        &self,
        pending: &Path,
        link: &Link,
        name: &str,
        md5: Md5,
        old: Option<&Head>,
    ) -> Result<Head, StateError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let records = format!("{}.{}.records", self.key, md5.hex());
        let to = self.dir.join(&records);
        if pending != to {
            fs::File::open(pending)
                .and_then(|f| f.sync_all())
                .map_err(err(pending))?;
            fs::rename(pending, &to).map_err(err(pending))?;
            durable::fsync_dir(&self.dir).map_err(err(&self.dir))?;
        }
        let full_at = match (link.level, old) {
            (0, _) | (_, None) => now_secs(),
            (_, Some(h)) => h.full_at,
        };
        let head = Head {
            chain: link.chain.clone(),
            level: link.level,
            name: name.to_string(),
            md5,
            full_at,
            records,
        };
        let json = serde_json::to_vec_pretty(&head).unwrap_or_default();
        durable::write_atomic(&self.head_path(), &json).map_err(err(&self.head_path()))?;
        if let Some(old) = old
            && old.records != head.records
        {
            let _ = fs::remove_file(self.dir.join(&old.records));
        }
        Ok(head)
    }
}

/// The link the next push makes after `head`: a full archive when there is none or `full_every`
/// says one is due, else the next incremental. (A full's chain name is its own upload name, set
/// once that is known.)
pub fn next_link(head: Option<&Head>, full_every: Option<FullEvery>) -> Link {
    let full = Link {
        chain: String::new(),
        level: 0,
        parent: None,
    };
    let Some(h) = head else { return full };
    let due = match full_every {
        Some(FullEvery::Pushes(n)) => h.level + 1 >= n.max(1),
        Some(FullEvery::Age(age)) => now_secs().saturating_sub(h.full_at) >= age.as_secs(),
        None => false,
    };
    if due {
        return full;
    }
    Link {
        chain: h.chain.clone(),
        level: h.level + 1,
        parent: Some(Parent {
            name: h.name.clone(),
            md5: h.md5,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(level: u32, full_at: u64) -> Head {
        Head {
            chain: "c".into(),
            level,
            name: format!("n{level}"),
            md5: Md5::of(b"a"),
            full_at,
            records: "r".into(),
        }
    }

    #[test]
    fn a_full_archive_comes_first_and_when_due() {
        assert_eq!(next_link(None, None).level, 0);
        let h = head(2, now_secs());
        let next = next_link(Some(&h), None);
        assert_eq!((next.level, next.parent.unwrap().name), (3, "n2".to_string()));
        assert_eq!(
            next_link(Some(&h), Some(FullEvery::Pushes(3))).level,
            0,
            "full, 1, 2: then a full"
        );
        assert_eq!(next_link(Some(&h), Some(FullEvery::Pushes(4))).level, 3);
        let old = head(1, now_secs() - 8 * 86_400);
        assert_eq!(
            next_link(Some(&old), Some(FullEvery::Age(Duration::from_secs(7 * 86_400)))).level,
            0
        );
    }
}
