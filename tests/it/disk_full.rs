//! The client's disk fills up: `pack -o` on a full disk and `push` with its staging folder on a
//! full disk exit 1, say that the disk is full and where, and leave nothing half-written (no
//! archive, no `.partial`, no manifest, no spill file; `push` sends nothing). The disk is a small
//! tmpfs mounted for the test, which needs root (as on CI).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{TestEnv, sh};

/// A small tmpfs mounted at a folder for one test; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `2m`) at `dir`, made if missing.
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "this test fills a disk by mounting a small tmpfs, which needs root: run the tests as root (CI does)"
        );
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs at {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Every file and folder on it, relative, sorted.
    fn listing(&self) -> Vec<String> {
        let mut all: Vec<String> = walkdir::WalkDir::new(&self.dir)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                e.path().strip_prefix(&self.dir).unwrap().to_string_lossy().into_owned()
            })
            .collect();
        all.sort();
        all
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // still busy (a process of a failed test): detach it now, it goes when unused
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A tree that does not fit in 2 MiB, even compressed: 3 MiB of noise, some text.
fn big_tree(env: &TestEnv) -> PathBuf {
    let root = env.mkdir("tree");
    env.write("tree/noise.bin", super::support::noise(3 << 20, 11));
    env.write("tree/a/small.txt", b"small\n");
    root
}

#[test]
fn pack_onto_a_full_disk_exits_1_and_leaves_nothing() {
    let env = TestEnv::new();
    let tree = big_tree(&env);
    let disk = Tmpfs::mount(&env.join("disk"), "2m");
    for (name, flags) in [
        ("a.zip", &["--compress", "none"][..]),
        ("b.zip", &["--compress", "deflate"]),
        ("c.tar.zst", &["--format", "tar", "--compress", "zstd"]),
    ] {
        let out = disk.dir.join(name);
        let r = env.pack(&tree, &out).args(flags).code(1);
        assert!(r.stderr.contains("the disk is full"), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(&disk.dir.display().to_string()),
            "{name}: the message names the path: {}",
            r.stderr
        );
        assert!(
            disk.listing().is_empty(),
            "{name}: nothing is left on the full disk: {:?}",
            disk.listing()
        );
    }
}

#[test]
fn push_with_its_staging_on_a_full_disk_exits_1_sends_nothing_and_leaves_nothing() {
    let env = TestEnv::new();
    let tree = big_tree(&env);
    let state = Tmpfs::mount(&env.state(), "2m");
    let dest = env.join("dest");
    for flags in [&["--compress", "none"][..], &["--format", "tar", "--compress", "zstd"]] {
        let r = env.push(&tree, dest.to_str().unwrap()).args(flags).code(1);
        assert!(r.stderr.contains("the disk is full"), "{flags:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(&state.dir.display().to_string()),
            "{flags:?}: the message names the path: {}",
            r.stderr
        );
        assert!(
            r.stdout.trim().is_empty(),
            "{flags:?}: no upload URL is printed: {}",
            r.stdout
        );
        // Sending follows packing: what was sent before the disk filled is never published
        // (the sender terminates that upload; one left unfinished expires).
        let published = sh(&format!("find '{}' -type f", dest.join("files").display()));
        assert!(
            published.stdout.trim().is_empty(),
            "{flags:?}: nothing published in {}: {}",
            dest.display(),
            published.stdout
        );
        let left: Vec<_> = state
            .listing()
            .into_iter()
            .filter(|p| p.starts_with("staging/"))
            .collect();
        assert!(
            left.is_empty(),
            "{flags:?}: nothing left in the staging folder: {left:?}"
        );
    }
}

#[test]
fn restore_onto_a_full_disk_exits_1_and_leaves_the_folder_as_it_was() {
    let env = TestEnv::new();
    let tree = big_tree(&env);
    let archive = env.join("big.tar");
    env.pack(&tree, &archive)
        .args(["--format", "tar", "--compress", "none"])
        .ok();
    let disk = Tmpfs::mount(&env.join("disk"), "2m");
    env.write("disk/mine.txt", b"mine\n");
    let before = disk.listing();
    let r = env.restore(&archive, &disk.dir).code(1);
    assert!(r.stderr.contains("the disk is full"), "{}", r.stderr);
    assert!(r.stderr.contains(&disk.dir.display().to_string()), "{}", r.stderr);
    assert_eq!(disk.listing(), before, "no partial restore, no staging folder");
    assert_eq!(fs::read(disk.dir.join("mine.txt")).unwrap(), b"mine\n");
}
