//! Fuzz targets: one function per parser of outside input, each feeding arbitrary bytes to the
//! very code robusto runs on such input and checking what must hold whatever the bytes are — no
//! panic, a parse that round-trips through the value's own writer, a parsed offset or range
//! within its bounds, a journal or manifest that the sender accepts being one it can use, an
//! extraction that never writes outside its folder and leaves nothing behind when it fails.
//!
//! `fuzz/` (a cargo-fuzz crate, run by `fuzz/run.sh` on nightly) calls these from its targets;
//! `tests/fuzz_regressions.rs` replays every input kept in `fuzz/regressions/<target>/` through
//! them on stable, so a bug the fuzzer once found stays fixed. A failed property is a panic: that
//! is how the fuzzer (and the replay) notices it. Not part of robusto's API.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::client::journal::{self, Journal, JournalState};
use crate::client::throttle::{Limit, Throttle, Timetable};
use crate::config::{self, ConfigError, Flag};
use crate::fingerprint::{ChunkDigest, Md5};
use crate::manifest::{Manifest, SourceInfo};
use crate::protocol::{Checksum, ChecksumHasher, Concat, Metadata, header};
use crate::restore::{RestoreOptions, restore};
use crate::serve::{routes, uploads, verify};
use crate::units;

/// A fuzz target: takes any bytes, panics when a property fails.
pub type Target = fn(&[u8]);

/// Every target, by name: the names of `fuzz/fuzz_targets/*.rs` and of the folders of
/// `fuzz/regressions/`.
pub const TARGETS: [(&str, Target); 11] = [
    ("upload_metadata", upload_metadata),
    ("upload_checksum", upload_checksum),
    ("upload_concat", upload_concat),
    ("offsets", offsets),
    ("manifest", manifest),
    ("journal", journal),
    ("config", config),
    ("units", units),
    ("bwlimit", bwlimit),
    ("restore_zip", restore_zip),
    ("restore_tar", restore_tar),
];

/// A folder of its own under the temporary folder, removed (with everything in it) on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "robusto-fuzz-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("cannot create the scratch folder {}: {e}", dir.display());
        }
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.0).is_ok() {
            return;
        }
        // folders restored read-only (as a user other than root): make them writable first
        use std::os::unix::fs::PermissionsExt as _;
        for entry in walkdir::WalkDir::new(&self.0).into_iter().flatten() {
            if entry.file_type().is_dir() {
                let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = read
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A header map holding `value` under `name`, if `value` can be a header value at all (what
/// hyper hands the server).
fn headers_with(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let v = HeaderValue::from_bytes(value).ok()?;
    let mut h = HeaderMap::new();
    h.insert(name, v);
    Some(h)
}

/// `Upload-Metadata`: the server's check of the header ([`verify::upload_metadata`],
/// [`verify::expected_whole`]) and the parser both sides use ([`Metadata::parse`]), whose value
/// must come back unchanged through [`Metadata::to_header`].
pub fn upload_metadata(data: &[u8]) {
    if let Some(h) = headers_with(header::UPLOAD_METADATA, data) {
        match verify::upload_metadata(&h) {
            Ok(Some(raw)) => {
                assert!(raw.len() <= verify::MAX_METADATA_LEN);
                let parsed = Metadata::parse(&raw);
                assert!(parsed.is_ok(), "accepted metadata that does not parse: {raw:?}");
                let _ = verify::expected_whole(Some(&raw));
            }
            Ok(None) => panic!("a header that is present read as absent"),
            Err(_) => {}
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Metadata::parse(text) else {
        return;
    };
    let again = Metadata::parse(&m.to_header());
    assert_eq!(again.as_ref(), Ok(&m), "Upload-Metadata {text:?} does not round-trip");
    for key in m.0.keys() {
        assert!(
            key.is_ascii() && !key.is_empty() && !key.contains([' ', ',']),
            "key {key:?}"
        );
    }
}

/// `Upload-Checksum` (and the `checksum` metadata, the `Robusto-Chunk-Checksum` a client reads):
/// [`verify::upload_checksum`] and [`Checksum::parse`], which must round-trip through
/// [`Checksum::to_header`] with a digest of the algorithm's length; and the saved MD5 state a
/// server keeps beside an upload ([`ChecksumHasher::resume_md5`]).
pub fn upload_checksum(data: &[u8]) {
    if let Some(h) = headers_with(header::UPLOAD_CHECKSUM, data) {
        match verify::upload_checksum(&h) {
            Ok(Some(c)) => assert_eq!(c.digest.len(), c.algorithm.digest_len()),
            Ok(None) => panic!("a header that is present read as absent"),
            Err(_) => {}
        }
    }
    let _ = verify::whole_file_checksum(Some(data));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Checksum::parse(text) {
        assert_eq!(c.digest.len(), c.algorithm.digest_len());
        assert_eq!(
            Checksum::parse(&c.to_header()).as_ref(),
            Ok(&c),
            "Upload-Checksum {text:?} does not round-trip"
        );
    }
    if let Ok(h) = ChecksumHasher::resume_md5(text.trim()) {
        let Some(state) = h.saved_state() else {
            panic!("a resumed MD5 has no state");
        };
        let again = match ChecksumHasher::resume_md5(&state) {
            Ok(again) => again,
            Err(e) => panic!("the saved state of a resumed MD5 does not resume: {e}"),
        };
        assert_eq!(again.saved_state().as_deref(), Some(state.as_str()));
        assert_eq!(again.finish(), h.finish(), "a resumed MD5 changed on the way");
    }
}

/// `Upload-Concat`: [`Concat::parse`], which must round-trip through [`Concat::to_header`], and
/// the server's reading of a final upload's URLs ([`uploads::concat_part_ids`]): every id it
/// returns is a valid id, taken from the end of its URL, one per URL.
pub fn upload_concat(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Concat::parse(text) else {
        return;
    };
    assert_eq!(
        Concat::parse(&c.to_header()).as_ref(),
        Ok(&c),
        "Upload-Concat {text:?} does not round-trip"
    );
    let Concat::Final(urls) = &c else {
        return;
    };
    for host in [None, Some("localhost:1080")] {
        if let Ok(ids) = uploads::concat_part_ids(urls, host) {
            assert_eq!(ids.len(), urls.len());
            for (id, url) in ids.iter().zip(urls) {
                assert!(uploads::is_valid_id(id), "id {id:?} of {url:?}");
                assert!(url.trim_end_matches('/').ends_with(id.as_str()), "id {id:?} of {url:?}");
                if host.is_none() {
                    assert!(!url.contains("://"), "{url:?} taken without a Host");
                }
            }
        }
    }
}

/// Offsets and lengths: `Upload-Offset`, `Upload-Length`, `Content-Length` and
/// `Robusto-Chunk-Prefix` as the server reads them ([`verify::header_u64`]: strict decimal, and
/// what it accepts is exactly that number, which the client's reading agrees with), and `Range` against a file of some length (the
/// range given is within the file and not empty). Input: the file's length in decimal on the
/// first line, the header value after it.
pub fn offsets(data: &[u8]) {
    let (len, value) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            std::str::from_utf8(&data[..i])
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(1000),
            &data[i + 1..],
        ),
        None => (1000, data),
    };
    for name in [
        header::UPLOAD_OFFSET,
        header::UPLOAD_LENGTH,
        header::CHUNK_PREFIX,
        "content-length",
    ] {
        let Some(h) = headers_with(name, value) else {
            return;
        };
        let client = crate::client::session::header_u64(&h, name);
        match verify::header_u64(&h, name) {
            Ok(Some(n)) => {
                assert_eq!(client, Some(n), "{name}: the client reads {value:?} otherwise");
                let Ok(text) = std::str::from_utf8(value) else {
                    panic!("a number read from bytes that are not text");
                };
                let text = text.trim().trim_start_matches('0');
                let canonical = n.to_string();
                assert!(
                    text == canonical || (n == 0 && text.is_empty()),
                    "{name}: {value:?} read as {n}"
                );
            }
            Ok(None) => panic!("a header that is present read as absent"),
            Err(_) => {}
        }
    }
    let Some(h) = headers_with("range", value) else {
        return;
    };
    if let Ok(Some(r)) = routes::parse_range(&h, len) {
        assert!(
            r.start < r.end && r.end <= len,
            "Range {value:?} of {len} bytes gave {r:?}"
        );
    }
}

/// What the sender assumes of a manifest it takes: chunks that tile the archive, each of the
/// chunk size but the last.
fn assert_usable_manifest(m: &Manifest) {
    assert!(m.chunk_size > 0, "chunk size 0");
    let mut at = 0u64;
    for (i, c) in m.chunks.iter().enumerate() {
        assert_eq!(c.offset, at, "chunk {i} does not start where the one before ends");
        assert!(c.len > 0 && c.len <= m.chunk_size, "chunk {i} has length {}", c.len);
        if i + 1 < m.chunks.len() {
            assert_eq!(c.len, m.chunk_size, "chunk {i} is short but not the last");
        }
        at = match at.checked_add(c.len) {
            Some(a) => a,
            None => panic!("chunk offsets overflow"),
        };
    }
    assert_eq!(at, m.archive.size, "the chunks do not cover the archive");
}

/// The manifest beside an archive, as [`Manifest::read`] takes it (JSON, then its checks), and
/// the manifest a sender cached for a plain file ([`journal::cached_manifest`]): what is
/// accepted is usable (see `assert_usable_manifest`) and comes back equal through
/// [`Manifest::write`]'s JSON.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data)
        && m.check().is_ok()
    {
        assert_usable_manifest(&m);
        let json = match serde_json::to_vec_pretty(&m) {
            Ok(j) => j,
            Err(e) => panic!("an accepted manifest does not serialise: {e}"),
        };
        match serde_json::from_slice::<Manifest>(&json) {
            Ok(again) => assert_eq!(again, m, "the manifest does not round-trip"),
            Err(e) => panic!("a written manifest does not read back: {e}"),
        }
    }
    cached_manifest(data);
}

/// [`journal::cached_manifest`] with `data` as the cached manifest of a real file (the cache
/// entry otherwise right: the file's size, mtime and inode).
fn cached_manifest(data: &[u8]) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return;
    }
    let dir = Scratch::new("manifest");
    let (state, file) = (dir.path().join("state"), dir.path().join("file"));
    let content = b"0123456789";
    let Ok(meta) = fs::write(&file, content).and_then(|()| fs::metadata(&file)) else {
        panic!("cannot write {}", file.display());
    };
    let chunk_size = 4;
    // a right entry first, to learn where the cache keeps it
    let chunks = content
        .chunks(chunk_size as usize)
        .enumerate()
        .map(|(i, c)| ChunkDigest {
            offset: i as u64 * chunk_size,
            len: c.len() as u64,
            md5: Md5::of(c),
        })
        .collect();
    let fp = crate::fingerprint::Fingerprint {
        size: content.len() as u64,
        md5: Md5::of(content),
        chunk_size,
        chunks,
    };
    let right = Manifest::new(&file, "raw", "none", None, fp, SourceInfo::default());
    if let Err(e) = journal::cache_manifest(&state, &file, &meta, &right) {
        panic!("cannot cache a manifest: {e}");
    }
    let cache_dir = state.join("manifests");
    let [entry] = &names(&cache_dir)[..] else {
        panic!("the manifest cache has not one entry");
    };
    let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    let wrapped = format!(
        "{{\"size\":{},\"mtime_ns\":{mtime_ns},\"inode\":{},\"manifest\":{text}}}",
        meta.len(),
        meta.ino()
    );
    if let Err(e) = fs::write(cache_dir.join(entry), wrapped) {
        panic!("cannot write the cache entry: {e}");
    }
    if let Some(m) = journal::cached_manifest(&state, &file, chunk_size) {
        assert_usable_manifest(&m);
        assert_eq!(m.archive.size, meta.len(), "a cached manifest of another size");
    }
}

/// What the sender assumes of a journal it resumes from: parts that tile the file, in order,
/// none empty (but the one part of an empty file).
fn assert_usable_journal(s: &JournalState) {
    assert!(!s.parts.is_empty(), "a journal without parts");
    let mut at = 0u64;
    for (i, p) in s.parts.iter().enumerate() {
        assert_eq!(p.start, at, "part {i} does not start where the one before ends");
        assert!(
            p.end > p.start || (s.size == 0 && s.parts.len() == 1),
            "part {i} is {}..{}",
            p.start,
            p.end
        );
        at = p.end;
    }
    assert_eq!(at, s.size, "the parts do not cover the file");
    assert!(s.chunk_size > 0, "chunk size 0");
}

/// A send job's journal, as [`Journal::open`] reads it from the state folder (keyed by the
/// file's MD5 and the target it names, so that it is taken): a state it takes is usable (see
/// `assert_usable_journal`) and comes back equal after [`Journal::save`].
pub fn journal(data: &[u8]) {
    let (md5, target) = match serde_json::from_slice::<JournalState>(data) {
        Ok(s) => (s.md5, s.target),
        Err(_) => (Md5::of(b""), "http://127.0.0.1:1080/files/".to_string()),
    };
    let dir = Scratch::new("journal");
    let jobs = dir.path().join("jobs");
    let path = jobs.join(format!("{}.json", journal::job_name(&md5, &target)));
    if let Err(e) = fs::create_dir_all(&jobs).and_then(|()| fs::write(&path, data)) {
        panic!("cannot write {}: {e}", path.display());
    }
    let j = match Journal::open(dir.path(), &md5, &target) {
        Ok(j) => j,
        Err(e) => panic!("a journal that cannot be read must be ignored, not fail: {e}"),
    };
    assert_eq!(j.path(), path);
    let Some(state) = j.state.clone() else {
        return;
    };
    assert_usable_journal(&state);
    if let Err(e) = j.save() {
        panic!("cannot save the journal: {e}");
    }
    drop(j);
    match Journal::open(dir.path(), &md5, &target) {
        Ok(again) => assert_eq!(again.state, Some(state), "the journal does not round-trip"),
        Err(e) => panic!("the saved journal does not open: {e}"),
    }
}

/// Flags of `push`, as the profile reader knows them (the command line builds the real list from
/// its clap definition, in the binary).
fn push_flags() -> Vec<Flag> {
    let flag = |long: &str, takes_values: bool| Flag {
        long: long.to_string(),
        id: long.replace('-', "_"),
        takes_values,
    };
    vec![
        flag("to", true),
        flag("token-file", true),
        flag("chunk-size", true),
        flag("bwlimit", true),
        flag("compress", true),
        flag("level", true),
        flag("format", true),
        flag("exclude", true),
        flag("exclude-from", true),
        flag("parallel", true),
        flag("keep-last", true),
        flag("max-duration", true),
        flag("dry-run", false),
        flag("no-verify", false),
        flag("one-file-system", false),
    ]
}

/// The configuration file (`robusto.toml`): [`config::profile_names`] and
/// [`config::load_profile`] of each profile it names (and of one it does not): a profile that is
/// listed is found, one that is not is not, and what is read only names known flags.
pub fn config(data: &[u8]) {
    let dir = Scratch::new("config");
    let path = dir.path().join("robusto.toml");
    if let Err(e) = fs::write(&path, data) {
        panic!("cannot write {}: {e}", path.display());
    }
    let flags = push_flags();
    let ids: BTreeSet<&str> = flags.iter().map(|f| f.id.as_str()).collect();
    let names = match config::profile_names(&path) {
        Ok(n) => n,
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::BadValue { .. }
                ),
                "{e}"
            );
            assert!(
                config::load_profile(&path, "x", &flags).is_err(),
                "a file whose profiles cannot be listed has a profile"
            );
            return;
        }
    };
    let mut unlisted = String::from("not-a-profile");
    while names.contains(&unlisted) {
        unlisted.push('-');
    }
    for name in names.iter().chain([&unlisted]) {
        match config::load_profile(&path, name, &flags) {
            Ok(p) => {
                assert!(name != &unlisted, "found profile {name:?} that is not listed");
                assert_eq!(&p.name, name);
                for id in p.values.keys() {
                    assert!(ids.contains(id.as_str()), "value under an unknown flag id {id:?}");
                }
            }
            Err(ConfigError::NoProfile { .. }) => {
                assert!(name == &unlisted, "listed profile {name:?} not found");
            }
            Err(e) => assert!(
                matches!(e, ConfigError::UnknownKey { .. } | ConfigError::BadValue { .. }),
                "{e}"
            ),
        }
    }
}

/// Sizes and durations as people type them ([`units::parse_size`], [`units::parse_duration`]):
/// what is read comes back equal from its plain spellings (`1048576`, `1M`; `90`, `1s500ms`).
pub fn units(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = units::parse_size(text) {
        assert_eq!(units::parse_size(&n.to_string()), Ok(n), "size {text:?}");
        for (suffix, shift) in [("K", 10), ("MiB", 20), ("g", 30), ("TB", 40)] {
            if n != 0 && n.trailing_zeros() >= shift {
                let spelled = format!("{}{suffix}", n >> shift);
                assert_eq!(units::parse_size(&spelled), Ok(n), "size {text:?} as {spelled:?}");
            }
        }
        let _ = units::format_bytes(n);
    }
    if let Ok(d) = units::parse_duration(text) {
        let nanos = d.subsec_nanos();
        assert_eq!(nanos % 1_000_000, 0, "duration {text:?} finer than a millisecond");
        let spelled = if nanos == 0 {
            d.as_secs().to_string()
        } else {
            format!("{}s{}ms", d.as_secs(), nanos / 1_000_000)
        };
        assert_eq!(
            units::parse_duration(&spelled),
            Ok(d),
            "duration {text:?} as {spelled:?}"
        );
    }
}

/// Rates and timetables (`--bwlimit`, [`Timetable::parse`]): the limit at each minute of the day
/// is one of the table's, each entry holds at its own minute, a rate is never 0, and the
/// throttle ([`Throttle::reserve`]) answers every request with a finite wait.
pub fn bwlimit(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = Timetable::parse(text) else {
        return;
    };
    let limits: Vec<Limit> = (0..1440).map(|m| table.limit_at(m)).collect();
    for l in &limits {
        assert_ne!(*l, Limit::Rate(0), "a rate of 0 from {text:?}");
    }
    // each `HH:MM,RATE` holds from its own minute
    for part in text.split_whitespace() {
        let Some((time, rate)) = part.split_once(',') else {
            continue;
        };
        let Some((h, m)) = time.split_once(':') else {
            continue;
        };
        let (Ok(h), Ok(m)) = (h.parse::<u32>(), m.parse::<u32>()) else {
            continue;
        };
        let Ok(single) = Timetable::parse(&format!("00:00,{rate}")) else {
            panic!("{rate:?} is a rate in {text:?} but not alone");
        };
        assert_eq!(
            limits[(h * 60 + m) as usize],
            single.limit_at(0),
            "{part:?} in {text:?}"
        );
    }
    let throttle = Throttle::new(table);
    for n in [0, 1, 64 << 10, 8 << 20, 1 << 30] {
        let wait = throttle.reserve(n);
        assert!(wait < Duration::from_secs(1 << 40), "a wait of {wait:?}");
    }
}

/// A zip archive given to `robusto restore` ([`restore`]; see `restore_archive`).
pub fn restore_zip(data: &[u8]) {
    restore_archive(data, None);
}

/// A tar archive, plain, gzip or zstd, given to `robusto restore` ([`restore`]; see
/// `restore_archive`): alone, and as the second link of an incremental chain on a small full
/// archive, so that its dumpdirs (GNU `D` entries) delete from what the first link restored.
pub fn restore_tar(data: &[u8]) {
    restore_archive(data, None);
    restore_archive(data, Some(&base_link()));
}

/// A small full archive for a chain: folders, files, a link.
fn base_link() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        if let Some(l) = link
            && let Err(e) = h.set_link_name(l)
        {
            panic!("link name: {e}");
        }
        if let Err(e) = b.append_data(&mut h, name, data) {
            panic!("base archive: {e}");
        }
    };
    add("keep/", tar::EntryType::Directory, b"", None);
    add("keep/a.txt", tar::EntryType::Regular, b"kept\n", None);
    add("keep/gone.txt", tar::EntryType::Regular, b"deleted later\n", None);
    add("d/", tar::EntryType::Directory, b"", None);
    add("d/e/", tar::EntryType::Directory, b"", None);
    add("d/e/f.txt", tar::EntryType::Regular, b"deep\n", None);
    add("link", tar::EntryType::Symlink, b"", Some("keep/a.txt"));
    match b.into_inner() {
        Ok(bytes) => bytes,
        Err(e) => panic!("base archive: {e}"),
    }
}

/// The start of a restore's staging folder's name.
const STAGING_PREFIX: &str = ".robusto-restore-";

/// `data` as an archive file, listed (dry run) and then restored into a folder that does not
/// exist yet, two levels below a scratch folder that holds only the archive (and `base`, the
/// first link of a chain, if given). Whatever the bytes:
/// a dry run writes nothing; a restore that succeeds wrote only inside its folder and left no
/// staging folder; one that fails leaves the scratch folder as it was (the folders made for it
/// gone); the archive itself is never touched; a restore that succeeds has a dry run that does.
fn restore_archive(data: &[u8], base: Option<&[u8]>) {
    let dir = Scratch::new("restore");
    let archive = dir.path().join("archive");
    if let Err(e) = fs::write(&archive, data) {
        panic!("cannot write {}: {e}", archive.display());
    }
    let mut chain = Vec::new();
    if let Some(base) = base {
        let path = dir.path().join("base");
        if let Err(e) = fs::write(&path, base) {
            panic!("cannot write {}: {e}", path.display());
        }
        chain.push(path);
    }
    let before = names(dir.path());
    let into = dir.path().join("out").join("into");
    let mut opts = RestoreOptions {
        archive: archive.clone(),
        into: into.clone(),
        dry_run: true,
        verify: false,
        chain,
    };
    let dry = restore(&opts);
    assert_eq!(names(dir.path()), before, "a dry run wrote something");
    opts.dry_run = false;
    let real = restore(&opts);
    assert!(
        fs::read(&archive).is_ok_and(|now| now == data),
        "the restore changed the archive"
    );
    match real {
        Ok(report) => {
            assert!(dry.is_ok(), "the restore succeeded but its dry run failed: {dry:?}");
            let mut expected = before.clone();
            expected.push("out".into());
            expected.sort();
            assert_eq!(names(dir.path()), expected, "written beside the target folder");
            assert_eq!(
                names(&dir.path().join("out")),
                ["into"],
                "written beside the target folder"
            );
            for entry in walkdir::WalkDir::new(&into).into_iter().flatten() {
                let name = entry.file_name().to_string_lossy();
                assert!(!name.starts_with(STAGING_PREFIX), "staging folder left: {name}");
            }
            assert!(report.entries <= 1 << 32);
        }
        Err(e) => {
            assert_eq!(names(dir.path()), before, "a failed restore left something behind: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::journal::Part;

    fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[test]
    fn valid_inputs_pass_every_target() {
        upload_metadata(b"filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential");
        upload_checksum(b"md5 XUFAKrxLKna5cZ2REBfFkg==");
        upload_concat(b"final;/files/fcfc95f8ce686a06ff5376fadfd1e485");
        offsets(b"10\nbytes=2-4");
        units(b"1h30m");
        units(b"1.5G");
        bwlimit(b"08:00,512K 19:00,off");
        config(b"[profile.p]\nto = \"/x\"\ndry-run = true\n");
        restore_tar(b"not an archive");
    }

    #[test]
    fn a_saved_md5_state_round_trips() {
        let mut h = crate::protocol::ChecksumAlgorithm::Md5.hasher();
        h.update(b"abc");
        let Some(state) = h.saved_state() else {
            panic!("no state");
        };
        upload_checksum(state.as_bytes());
    }

    #[test]
    fn the_properties_catch_what_they_guard() {
        let md5 = Md5::of(b"x");
        let state = |parts: Vec<(u64, u64)>| JournalState {
            version: journal::VERSION,
            file: "f".into(),
            target: "t".into(),
            size: 10,
            md5,
            chunk_size: 4,
            parts: parts
                .into_iter()
                .map(|(start, end)| Part { start, end, url: None })
                .collect(),
            final_url: None,
            complete: false,
            follows: false,
        };
        assert!(!fails(|| assert_usable_journal(&state(vec![(0, 4), (4, 10)]))));
        for bad in [
            vec![],
            vec![(0, 4)],
            vec![(0, 4), (5, 10)],
            vec![(4, 0), (0, 10)],
            vec![(0, 0), (0, 10)],
        ] {
            assert!(fails(|| assert_usable_journal(&state(bad.clone()))), "{bad:?}");
        }
        let chunk = |offset, len| ChunkDigest {
            offset,
            len,
            md5: Md5::of(b""),
        };
        let fp = crate::fingerprint::Fingerprint {
            size: 10,
            md5,
            chunk_size: 4,
            chunks: vec![chunk(0, 4), chunk(4, 4), chunk(8, 2)],
        };
        let good = Manifest::new(Path::new("a"), "raw", "none", None, fp, SourceInfo::default());
        assert!(!fails(|| assert_usable_manifest(&good)));
        let mut bad = good.clone();
        bad.chunks[1].len = 3;
        assert!(fails(move || assert_usable_manifest(&bad)));
        let mut bad = good.clone();
        bad.chunk_size = 0;
        assert!(fails(move || assert_usable_manifest(&bad)));
    }

    #[test]
    fn a_restore_leaves_nothing_when_it_fails() {
        // a tar whose second entry escapes: the first must not stay behind
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        let _ = b.append_data(&mut h, "ok.txt", &b"ok"[..]);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Symlink);
        let _ = h.set_link_name("/");
        let _ = b.append_data(&mut h, "up", &b""[..]);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        let _ = b.append_data(&mut h, "up/tmp/x", &b"no"[..]);
        let Ok(bytes) = b.into_inner() else {
            panic!("tar");
        };
        restore_tar(&bytes);
    }
}
