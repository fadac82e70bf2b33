//! Applying one incremental link's deletions before its entries: each dumpdir (GNU tar `D`
//! entry) lists what its folder holds at that push; whatever the staged tree has in that folder
//! and the dumpdir does not list is removed, and so is whatever changed kind (a folder that became
//! a file, a file that became a folder). Only the staging folder is touched: what the target
//! folder had before the restore is never deleted.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::RestoreError;
use crate::incremental::dumpdir::{self, Child};

/// The tar entry type of a GNU dumpdir.
pub(super) const DUMPDIR: u8 = b'D';

/// Reads `stream` (a tar archive) and applies every dumpdir in it to the staged tree at `stage`.
pub(super) fn apply<R: Read>(archive: &Path, stream: R, stage: &Path) -> Result<u64, RestoreError> {
    let damaged = |reason: String| RestoreError::Damaged {
        path: archive.to_path_buf(),
        reason,
    };
    let mut tar = tar::Archive::new(stream);
    let mut removed = 0;
    let entries = tar.entries().map_err(|e| damaged(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(format!("{e}: the archive is damaged")))?;
        if entry.header().entry_type().as_byte() != DUMPDIR {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let Some(rel) = super::safe_relative(&name)? else {
            continue;
        };
        let mut listing = Vec::new();
        entry
            .read_to_end(&mut listing)
            .map_err(|e| damaged(format!("dumpdir '{name}': {e}")))?;
        let children: HashMap<String, Child> = dumpdir::decode(&listing)
            .map_err(|e| damaged(format!("dumpdir '{name}': {e}")))?
            .into_iter()
            .collect();
        removed += purge(&stage.join(rel), &children).map_err(|(path, source)| RestoreError::Io { path, source })?;
    }
    Ok(removed)
}

/// Removes from the staged folder `dir` what `children` does not list as it is.
fn purge(dir: &Path, children: &HashMap<String, Child>) -> Result<u64, (std::path::PathBuf, io::Error)> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        // nothing staged there, or not a folder yet (its parent's dumpdir removes what is in the
        // way, whichever of the two comes first in the archive)
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(0),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    let mut removed = 0;
    for item in read {
        let item = item.map_err(|e| (dir.to_path_buf(), e))?;
        let path = item.path();
        let is_dir = item.file_type().map_err(|e| (path.clone(), e))?.is_dir();
        let name = item.file_name().to_string_lossy().into_owned();
        let keep = match children.get(&name) {
            None => false,
            Some(Child::Folder) => is_dir,
            Some(Child::Stored | Child::Unchanged) => !is_dir,
        };
        if keep {
            continue;
        }
        // neither follows a symlink: a link is removed as a link
        let gone = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(|e| (path.clone(), e))?;
        removed += 1;
    }
    Ok(removed)
}
