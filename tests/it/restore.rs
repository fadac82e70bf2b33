//! `robusto restore` through the real binary: round trips in every format (modes, mtimes,
//! symlinks), verification before extraction, crafted archives that try to escape, and damaged
//! archives (bad CRC, flipped byte in a compressed stream, truncation) that leave the target
//! folder exactly as it was.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::support::*;

#[test]
fn pack_then_restore_gives_the_same_tree_in_every_format() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    for (name, flags) in [
        ("a.zip", &["--compress", "deflate"][..]),
        ("b.zip", &["--compress", "zstd", "-l", "9"]),
        ("c.zip", &["--compress", "none"]),
        ("d.tar", &["--format", "tar", "--compress", "none"]),
        ("e.tar.gz", &["--format", "tar", "--compress", "gzip"]),
        ("f.tar.zst", &["--format", "tar", "--compress", "zstd"]),
    ] {
        let archive = env.join(name);
        env.pack(&tree, &archive).args(flags).ok();
        let out = env.join(format!("out-{name}"));
        env.restore(&archive, &out).ok();
        assert_same_tree(&tree, &out.join("tree"));
    }
}

#[test]
fn a_damaged_archive_is_not_extracted() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let archive = env.join("t.tar");
    env.pack(&tree, &archive)
        .args(["--format", "tar", "--compress", "none", "--chunk-size", "64K"])
        .ok();
    let mut bytes = fs::read(&archive).unwrap();
    bytes[70_000] ^= 1;
    fs::write(&archive, &bytes).unwrap();
    let out = env.join("out");
    let restore = env.restore(&archive, &out);
    let r = restore.code(1);
    assert!(r.stderr.contains("chunk 1 (bytes 65536..131072)"), "{}", r.stderr);
    assert!(!out.exists(), "nothing extracted");
    fs::remove_file(robusto::manifest::path_for(&archive)).unwrap();
    let r = restore.code(1);
    assert!(r.stderr.contains("--no-verify"), "{}", r.stderr);
}

#[test]
fn dry_run_lists_and_writes_nothing() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let archive = env.join("l.zip");
    env.pack(&tree, &archive).ok();
    let out = env.join("never");
    let r = env.restore(&archive, &out).arg("--dry-run").ok();
    assert!(!out.exists());
    assert!(
        r.stdout
            .contains("- 0755           18 2021-09-13T12:26:40Z tree/run.sh"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("l 0777           10 2021-09-13T12:26:40Z tree/link-to-readme -> README.txt"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("d 0750            0 2021-09-13T12:26:40Z tree/docs"),
        "{}",
        r.stdout
    );
}

fn crafted_tar(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, kind, content) in entries {
        let mut h = tar::Header::new_gnu();
        // write the name bytes directly: the tar crate itself refuses '..' in set_path
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name(content).unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(content.len() as u64);
            h.set_cksum();
            b.append(&h, content.as_bytes()).unwrap();
        }
    }
    b.finish().unwrap();
}

#[test]
fn crafted_tar_with_dotdot_is_refused() {
    let env = TestEnv::new();
    let archive = env.join("evil.tar");
    crafted_tar(
        &archive,
        &[
            ("ok.txt", tar::EntryType::Regular, "fine"),
            ("../escaped.txt", tar::EntryType::Regular, "gotcha"),
        ],
    );
    let r = env.restore(&archive, "out").arg("--no-verify").code(1);
    assert!(
        r.stderr
            .contains("refusing entry '../escaped.txt': '..' would leave the target folder"),
        "{}",
        r.stderr
    );
    assert!(!env.join("escaped.txt").exists());
}

#[test]
fn crafted_tar_writing_through_an_absolute_symlink_is_refused() {
    let env = TestEnv::new();
    let outside = env.mkdir("outside");
    let archive = env.join("link.tar");
    crafted_tar(
        &archive,
        &[
            ("evil", tar::EntryType::Symlink, outside.to_str().unwrap()),
            ("evil/pwned.txt", tar::EntryType::Regular, "gotcha"),
        ],
    );
    let out = env.join("out");
    let r = env.restore(&archive, &out).arg("--no-verify").code(1);
    assert!(
        r.stderr
            .contains("refusing entry 'evil/pwned.txt': a folder above it is a symlink"),
        "{}",
        r.stderr
    );
    assert!(!outside.join("pwned.txt").exists(), "nothing written through the link");
    assert!(
        !out.exists(),
        "a refused restore leaves nothing behind, not even the link before the refused entry"
    );

    let absolute = env.join("abs.tar");
    crafted_tar(
        &absolute,
        &[("/tmp/robusto-abs-escape.txt", tar::EntryType::Regular, "x")],
    );
    let r = env.restore(&absolute, "out2").arg("--no-verify").code(1);
    assert!(r.stderr.contains("absolute path"), "{}", r.stderr);
    assert!(!Path::new("/tmp/robusto-abs-escape.txt").exists());
}

#[test]
fn crafted_zip_with_dotdot_is_refused_before_anything_is_written() {
    let env = TestEnv::new();
    let archive = env.join("evil.zip");
    let mut z = zip::ZipWriter::new(fs::File::create(&archive).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    z.start_file("first.txt", opts).unwrap();
    z.write_all(b"fine").unwrap();
    z.start_file("../../escaped.txt", opts).unwrap();
    z.write_all(b"gotcha").unwrap();
    z.finish().unwrap();
    let out = env.join("a/b");
    let r = env.restore(&archive, &out).arg("--no-verify").code(1);
    assert!(r.stderr.contains("refusing entry '../../escaped.txt'"), "{}", r.stderr);
    assert!(!env.join("escaped.txt").exists() && !env.join("a/escaped.txt").exists());
    assert!(
        !out.join("first.txt").exists(),
        "a zip is checked whole before extraction"
    );
}

#[test]
fn setuid_bits_and_owners_survive_a_restore() {
    let env = TestEnv::new();
    let root = env.mkdir("s");
    chmod(env.write("s/tool", b"#!/bin/sh\n"), 0o4755);
    set_mtimes(&root, MTIME);
    let archive = env.join("s.tar");
    env.pack(&root, &archive)
        .args(["--format", "tar", "--compress", "none"])
        .ok();
    let out = env.join("out");
    env.restore(&archive, &out).ok();
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(out.join("s/tool")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o4755,
        "chown (as root) must not clear the setuid bit"
    );
    assert_eq!(m.uid(), fs::metadata(root.join("tool")).unwrap().uid());
}

/// The folder a failed restore goes into: files of its own (one with the name of an entry of the
/// awkward tree, `tree/README.txt`), and an mtime of its own.
fn occupied_folder(env: &TestEnv) -> std::path::PathBuf {
    let out = env.mkdir("out");
    env.write("out/mine.txt", b"not from the archive\n");
    env.write("out/tree/README.txt", b"the old README\n");
    set_mtimes(&out, MTIME - 100);
    out
}

/// Restores `archive` with `--no-verify` into `out`, which must fail (exit 1) with a message
/// naming the archive and containing every one of `says`, and leave `out` exactly as it was:
/// the same entries, bytes, modes and mtimes, and no staging folder.
fn assert_refused_and_untouched(env: &TestEnv, archive: &Path, out: &Path, says: &[&str]) {
    let before = snapshot(out);
    let r = env.restore(archive, out).arg("--no-verify").code(1);
    assert!(
        r.stderr.contains(&archive.display().to_string()),
        "the message names the archive: {}",
        r.stderr
    );
    for s in says {
        assert!(r.stderr.contains(s), "the message says {s:?}: {}", r.stderr);
    }
    let left: Vec<_> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".robusto"))
        .collect();
    assert!(left.is_empty(), "no staging folder is left: {left:?}");
    assert_eq!(snapshot(out), before, "{} is as it was", out.display());
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes are in the archive")
}

#[test]
fn a_zip_entry_with_a_bad_crc_is_not_restored_and_nothing_else_either() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let archive = env.join("stored.zip");
    env.pack(&tree, &archive).args(["--compress", "none"]).ok();
    // one byte in the middle of noise.bin's stored data: its CRC no longer matches
    let mut bytes = fs::read(&archive).unwrap();
    let at = find(&bytes, &noise(2 << 20, 7)[1 << 20..(1 << 20) + 64]);
    bytes[at] ^= 0x20;
    fs::write(&archive, &bytes).unwrap();
    let out = occupied_folder(&env);
    assert_refused_and_untouched(&env, &archive, &out, &["entry 'tree/noise.bin': CRC mismatch"]);
    assert_eq!(fs::read(out.join("tree/README.txt")).unwrap(), b"the old README\n");
}

/// Packs the awkward tree as a tar compressed with `codec`, and flips one byte in the middle of
/// the compressed stream.
fn damaged_tar(env: &TestEnv, codec: &str, name: &str) -> std::path::PathBuf {
    let tree = env.awkward_tree();
    let archive = env.join(name);
    env.pack(&tree, &archive)
        .args(["--format", "tar", "--compress", codec])
        .ok();
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&archive, &bytes).unwrap();
    archive
}

#[test]
fn a_tar_zst_with_a_flipped_byte_leaves_the_folder_as_it_was() {
    let env = TestEnv::new();
    let archive = damaged_tar(&env, "zstd", "d.tar.zst");
    let out = occupied_folder(&env);
    assert_refused_and_untouched(&env, &archive, &out, &["zstd", "the archive is damaged"]);
}

#[test]
fn a_tar_gz_with_a_flipped_byte_leaves_the_folder_as_it_was() {
    let env = TestEnv::new();
    let archive = damaged_tar(&env, "gzip", "d.tar.gz");
    let out = occupied_folder(&env);
    assert_refused_and_untouched(&env, &archive, &out, &["gzip", "the archive is damaged"]);
}

#[test]
fn a_failed_restore_keeps_the_old_bytes_of_a_file_of_the_same_name() {
    let env = TestEnv::new();
    let archive = damaged_tar(&env, "zstd", "same-name.tar.zst");
    let out = env.mkdir("out");
    // every file of the tree is already there, with other bytes: none may be replaced
    for name in [
        "README.txt",
        "numbers.txt",
        "noise.bin",
        "run.sh",
        "nested/big-text.log",
    ] {
        env.write(format!("out/tree/{name}"), format!("old {name}\n"));
    }
    assert_refused_and_untouched(&env, &archive, &out, &["the archive is damaged"]);
    assert_eq!(fs::read(out.join("tree/README.txt")).unwrap(), b"old README.txt\n");
    assert_eq!(fs::read(out.join("tree/noise.bin")).unwrap(), b"old noise.bin\n");
}

#[test]
fn a_truncated_tar_leaves_the_folder_as_it_was() {
    let env = TestEnv::new();
    let tree = env.awkward_tree();
    let archive = env.join("t.tar");
    env.pack(&tree, &archive)
        .args(["--format", "tar", "--compress", "none"])
        .ok();
    let whole = fs::read(&archive).unwrap();
    let out = occupied_folder(&env);
    // cut in the middle (inside an entry's data), inside a header, and at the end-of-archive
    // blocks (every entry whole, the end marker gone)
    let header = find(&whole, b"ustar") - 257;
    let second = header + 512 + find(&whole[header + 512..], b"ustar") - 257;
    for cut in [whole.len() / 2, second + 100, whole.len() - 1024] {
        fs::write(&archive, &whole[..cut]).unwrap();
        assert_refused_and_untouched(&env, &archive, &out, &["truncated"]);
    }
    // and a folder that did not exist is not left behind
    let fresh = env.join("fresh/inner");
    let r = env.restore(&archive, &fresh).arg("--no-verify").code(1);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    assert!(
        !env.join("fresh").exists(),
        "the folders made for the restore are removed"
    );
}
