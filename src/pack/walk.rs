//! The walk: which files go into the archive, in a fixed order. Paths are walked with ripgrep's
//! walker (`ignore`): sorted by name, `.robustoignore` files honoured (gitignore syntax),
//! `--exclude` globs and `--exclude-from` files applied, symlinks kept as links unless followed
//! (with loop detection), optionally confined to one file system. What cannot be walked is
//! reported, not fatal.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};

use super::entry::{Entry, Kind};
use crate::manifest::Skipped;

/// The ignore file read inside packed trees (gitignore syntax).
pub const IGNORE_FILE: &str = ".robustoignore";

/// Why the walk could not start.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A path named on the command line does not exist or cannot be examined.
    #[error("{path}: {source}")]
    Root {
        /// The path.
        path: PathBuf,
        /// What stat said.
        source: std::io::Error,
    },
    /// An exclude pattern is not a valid glob.
    #[error("bad exclude pattern '{pattern}': {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What the glob parser said.
        reason: String,
    },
    /// An `--exclude-from` file cannot be read.
    #[error("cannot read exclude file {path}: {source}")]
    ExcludeFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Two paths would be stored under the same name.
    #[error("two paths would be stored as '{0}': pack them from a common parent instead")]
    Duplicate(String),
}

/// Walk options.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Glob patterns to leave out. A pattern without `/` matches a name at any depth; one with
    /// `/` matches the path relative to the walked root.
    pub exclude: Vec<String>,
    /// Files with one pattern per line (`#` comments).
    pub exclude_from: Vec<PathBuf>,
    /// Do not cross into other file systems.
    pub one_file_system: bool,
    /// Store what symlinks point to instead of the links.
    pub follow_symlinks: bool,
    /// Paths never to store (the archive being written, its manifest).
    pub never: Vec<PathBuf>,
    /// Like `exclude`, matched without regard to case (`--iexclude`).
    pub iexclude: Vec<String>,
    /// Leave out a folder that holds a file of one of these names (`--exclude-if-present`).
    pub exclude_if_present: Vec<String>,
    /// Leave out a folder holding a `CACHEDIR.TAG` with the cache directory signature
    /// (`--exclude-caches`, <https://bford.info/cachedir/>).
    pub exclude_caches: bool,
    /// Leave out files larger than this many bytes (`--exclude-larger-than`).
    pub exclude_larger_than: Option<u64>,
}

/// The start of a valid `CACHEDIR.TAG`.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Whether the folder `dir` is marked to be left out: a file named in `markers`, or (with
/// `caches`) a `CACHEDIR.TAG` that carries the signature.
fn marked(dir: &Path, markers: &[String], caches: bool) -> bool {
    if markers.iter().any(|m| fs::symlink_metadata(dir.join(m)).is_ok()) {
        return true;
    }
    caches && {
        use std::io::Read as _;
        let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
        fs::File::open(dir.join("CACHEDIR.TAG"))
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
    }
}

/// One item of a walk: something to store, or something that could not be walked.
#[derive(Debug)]
pub enum Item {
    /// Store this.
    Entry(Entry),
    /// This could not be walked (unreadable folder, vanished file, symlink loop …).
    Skipped(Skipped),
}

struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    fn build(opts: &WalkOptions) -> Result<Self, WalkError> {
        let mut patterns: Vec<String> = opts.exclude.clone();
        for file in &opts.exclude_from {
            let text = fs::read_to_string(file).map_err(|source| WalkError::ExcludeFile {
                path: file.clone(),
                source,
            })?;
            patterns.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let all = patterns
            .iter()
            .map(|p| (p, false))
            .chain(opts.iexclude.iter().map(|p| (p, true)));
        for (p, nocase) in all {
            let trimmed = p.trim_end_matches('/');
            let bad = |e: globset::Error| WalkError::Pattern {
                pattern: p.clone(),
                reason: e.kind().to_string(),
            };
            if trimmed.contains('/') {
                let glob = globset::GlobBuilder::new(trimmed.trim_start_matches('/'))
                    .literal_separator(true)
                    .case_insensitive(nocase)
                    .build();
                paths.add(glob.map_err(bad)?);
            } else {
                let glob = globset::GlobBuilder::new(trimmed).case_insensitive(nocase).build();
                names.add(glob.map_err(bad)?);
            }
        }
        let finish = |b: GlobSetBuilder| {
            b.build().map_err(|e| WalkError::Pattern {
                pattern: patterns.join(" "),
                reason: e.to_string(),
            })
        };
        Ok(Excludes {
            names: finish(names)?,
            paths: finish(paths)?,
        })
    }

    fn excludes(&self, rel: &Path) -> bool {
        if rel.as_os_str().is_empty() {
            return false;
        }
        rel.file_name().is_some_and(|n| self.names.is_match(n)) || self.paths.is_match(rel)
    }
}

/// `path` made absolute and lexically normalised (no `.`, no `..`), without resolving links.
fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn archive_name(prefix: &str, rel: &Path) -> Option<String> {
    let rel = rel.to_str()?;
    Some(match (prefix.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{rel}"),
    })
}

/// A walk in progress: yields [`Item`]s in archive order (each root in the order given, its
/// contents sorted by name), holding only the walker's stack in memory, never the whole list.
pub struct Walk {
    roots: std::collections::VecDeque<PathBuf>,
    current: Option<(ignore::Walk, PathBuf, String)>,
    opts: WalkOptions,
    excludes: Arc<Excludes>,
    never: Arc<BTreeSet<PathBuf>>,
}

/// Starts walking `roots`. A root that does not exist, a bad pattern, or two roots that would be
/// stored under the same name are errors here, before anything is written; anything unreadable
/// below a root is reported as [`Item::Skipped`] later.
pub fn walk(roots: &[PathBuf], opts: &WalkOptions) -> Result<Walk, WalkError> {
    let mut prefixes = BTreeSet::new();
    for root in roots {
        fs::symlink_metadata(root).map_err(|source| WalkError::Root {
            path: root.clone(),
            source,
        })?;
        let prefix = root_prefix(root);
        if (prefix.is_empty() && roots.len() > 1) || !prefixes.insert(prefix.clone()) {
            return Err(WalkError::Duplicate(if prefix.is_empty() {
                "/".into()
            } else {
                prefix
            }));
        }
    }
    Ok(Walk {
        roots: roots.iter().cloned().collect(),
        current: None,
        excludes: Arc::new(Excludes::build(opts)?),
        never: Arc::new(opts.never.iter().map(|p| normalize(p)).collect()),
        opts: opts.clone(),
    })
}

/// The name a root is stored under: its last component (empty for `/`).
fn root_prefix(root: &Path) -> String {
    normalize(root)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Walk {
    fn start(&self, root: &Path) -> ignore::Walk {
        let mut wb = ignore::WalkBuilder::new(root);
        wb.standard_filters(false)
            .hidden(false)
            .parents(false)
            .ignore(false)
            .git_ignore(false)
            .git_global(false)
            .git_exclude(false)
            .require_git(false)
            .follow_links(self.opts.follow_symlinks)
            .same_file_system(self.opts.one_file_system)
            .sort_by_file_name(|a, b| a.cmp(b));
        wb.add_custom_ignore_filename(IGNORE_FILE);
        let (ex, nv, r) = (Arc::clone(&self.excludes), Arc::clone(&self.never), root.to_path_buf());
        let (markers, caches) = (self.opts.exclude_if_present.clone(), self.opts.exclude_caches);
        wb.filter_entry(move |e| {
            let rel = e.path().strip_prefix(&r).unwrap_or(e.path());
            // the full path is only worked out for a name that one of the `never` paths has
            let never = || nv.iter().any(|n| n.file_name() == Some(e.file_name())) && nv.contains(&normalize(e.path()));
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            let tagged = || {
                let left_out = marked(e.path(), &markers, caches);
                if left_out {
                    tracing::info!(
                        "left out {}: it is marked as a folder not to back up",
                        e.path().display()
                    );
                }
                left_out
            };
            !ex.excludes(rel) && !never() && !(is_dir && (caches || !markers.is_empty()) && tagged())
        });
        wb.build()
    }

    /// Turns one walker result into an item; `None` for things that are left out silently.
    fn item(&self, root: &Path, prefix: &str, result: Result<ignore::DirEntry, ignore::Error>) -> Option<Item> {
        let skipped = |path: String, reason: String| Some(Item::Skipped(Skipped { path, reason }));
        let e = match result {
            Ok(e) => e,
            Err(err) => {
                let path = error_path(&err).unwrap_or(root).display().to_string();
                return skipped(path, describe_walk_error(&err));
            }
        };
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let shown = e.path().display().to_string();
        let Some(name) = archive_name(prefix, rel) else {
            return skipped(shown, "name is not valid UTF-8".into());
        };
        if name.is_empty() {
            return None; // the file-system root itself: its contents are stored at the top
        }
        if let Some(err) = e.error() {
            // a broken .robustoignore: say so rather than pack what it meant to leave out
            tracing::warn!("{}: ignore file problem: {err}", e.path().display());
        }
        // A root that is a symlink to a folder is walked as that folder (like `tar -C`), so its
        // contents are not stored under a link.
        let follow = self.opts.follow_symlinks || e.depth() == 0;
        let meta = if follow {
            fs::metadata(e.path())
        } else {
            fs::symlink_metadata(e.path())
        };
        let meta = match meta {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let why = if self.opts.follow_symlinks {
                    "dangling symlink or vanished"
                } else {
                    "vanished"
                };
                return skipped(shown, why.into());
            }
            Err(err) => return skipped(shown, format!("unreadable: {err}")),
        };
        let ft = meta.file_type();
        if let Some(limit) = self.opts.exclude_larger_than
            && ft.is_file()
            && meta.len() > limit
        {
            tracing::info!(
                "left out {shown}: {} bytes, larger than --exclude-larger-than",
                meta.len()
            );
            return None;
        }
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File { size: meta.len() }
        } else if ft.is_symlink() {
            match fs::read_link(e.path()) {
                Ok(target) => Kind::Symlink { target },
                Err(err) => return skipped(shown, format!("unreadable link: {err}")),
            }
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "device"
            };
            tracing::info!("left out {shown}: a {what} holds no data to archive");
            return None;
        };
        Some(Item::Entry(Entry {
            src: e.into_path(),
            name,
            kind,
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            uid: meta.uid(),
            gid: meta.gid(),
            change: super::entry::Change::of(&meta),
        }))
    }
}

impl Iterator for Walk {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if self.current.is_none() {
                let root = self.roots.pop_front()?;
                let prefix = root_prefix(&root);
                self.current = Some((self.start(&root), root, prefix));
            }
            let (walker, root, prefix) = self.current.as_mut()?;
            let Some(result) = walker.next() else {
                self.current = None;
                continue;
            };
            let (root, prefix) = (root.clone(), prefix.clone());
            if let Some(item) = self.item(&root, &prefix, result) {
                return Some(item);
            }
        }
    }
}

fn error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => error_path(err),
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
    }
}

fn describe_walk_error(err: &ignore::Error) -> String {
    match err {
        ignore::Error::WithPath { err, .. }
        | ignore::Error::WithDepth { err, .. }
        | ignore::Error::WithLineNumber { err, .. } => describe_walk_error(err),
        ignore::Error::Loop { ancestor, .. } => format!("symlink loop back to {}", ancestor.display()),
        ignore::Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "unreadable: permission denied".into()
        }
        ignore::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => "vanished".into(),
        other => format!("unreadable: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries(w: Walk) -> (Vec<Entry>, Vec<Skipped>) {
        let (mut es, mut ss) = (Vec::new(), Vec::new());
        for item in w {
            match item {
                Item::Entry(e) => es.push(e),
                Item::Skipped(s) => ss.push(s),
            }
        }
        (es, ss)
    }

    fn names(w: Walk) -> Vec<String> {
        entries(w).0.into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn sorted_with_excludes_and_ignore_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(root.join("cache")).unwrap();
        fs::write(root.join("b/deep/x.txt"), b"x").unwrap();
        fs::write(root.join("b/skip.log"), b"l").unwrap();
        fs::write(root.join("a/keep.tmp"), b"t").unwrap();
        fs::write(root.join("cache/big"), b"c").unwrap();
        fs::write(root.join(IGNORE_FILE), b"*.tmp\n").unwrap();
        symlink("b/deep/x.txt", root.join("link")).unwrap();
        let opts = WalkOptions {
            exclude: vec!["*.log".into(), "cache".into()],
            ..Default::default()
        };
        let (es, skipped) = entries(walk(std::slice::from_ref(&root), &opts).unwrap());
        let names: Vec<&str> = es.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t",
                "t/.robustoignore",
                "t/a",
                "t/b",
                "t/b/deep",
                "t/b/deep/x.txt",
                "t/link"
            ]
        );
        assert!(skipped.is_empty());
        let link = es.iter().find(|e| e.name == "t/link").unwrap();
        assert_eq!(
            link.kind,
            Kind::Symlink {
                target: PathBuf::from("b/deep/x.txt")
            }
        );
        assert_eq!(
            es.iter().find(|e| e.name == "t/b/deep/x.txt").unwrap().kind,
            Kind::File { size: 1 }
        );
    }

    #[test]
    fn path_patterns_are_relative_to_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        fs::create_dir_all(root.join("x/y")).unwrap();
        fs::create_dir_all(root.join("y")).unwrap();
        let opts = WalkOptions {
            exclude: vec!["x/y".into()],
            ..Default::default()
        };
        assert_eq!(names(walk(&[root], &opts).unwrap()), ["r", "r/x", "r/y"]);
    }

    #[test]
    fn missing_root_is_an_error_and_duplicates_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = walk(&[d.path().join("nope")], &WalkOptions::default()).err().unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
        fs::create_dir_all(d.path().join("a/same")).unwrap();
        fs::create_dir_all(d.path().join("b/same")).unwrap();
        let e = walk(
            &[d.path().join("a/same"), d.path().join("b/same")],
            &WalkOptions::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(e, WalkError::Duplicate(ref n) if n == "same"), "{e}");
    }

    #[test]
    fn follow_detects_loops() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("l");
        fs::create_dir_all(root.join("sub")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        let opts = WalkOptions {
            follow_symlinks: true,
            ..Default::default()
        };
        let (_, skipped) = entries(walk(&[root], &opts).unwrap());
        assert!(skipped.iter().any(|s| s.reason.contains("loop")), "{skipped:?}");
    }
}
