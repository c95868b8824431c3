//! End-to-end: real `syncd` processes on loopback.

mod common;
#[path = "../src/demo/tree.rs"]
mod tree;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Pair;

fn set_mtime_ns(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Every kind the issue names: files with odd modes and ns mtimes, empty
/// dirs, symlinks (relative, absolute, dangling), hard links, zero-length
/// files, non-UTF-8 names, and a FIFO that must be skipped.
fn rich_tree(root: &Path) {
    tree::generate_tree(root, 300, 7).unwrap();
    std::fs::create_dir_all(root.join("deep/a/b/c/d/e")).unwrap();
    std::fs::write(root.join("deep/a/b/c/d/e/leaf"), b"leaf").unwrap();
    std::fs::write(root.join("exec.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("exec.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::create_dir(root.join("private")).unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime_ns(&root.join("exec.sh"), 1_600_000_000, 123_456_789);
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("deep/a", root.join("dir-link")).unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"bin\xff\xfename")),
        b"raw bytes",
    )
    .unwrap();
    std::fs::hard_link(root.join("exec.sh"), root.join("deep/exec-hardlink")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o644),
        0,
    )
    .unwrap();
    if rustix::process::geteuid().is_root() {
        // Ownership is kept when the standby runs as root (CI does).
        let (u, g) = unsafe {
            (
                rustix::fs::Uid::from_raw(1234),
                rustix::fs::Gid::from_raw(5678),
            )
        };
        rustix::fs::chown(root.join("d03"), Some(u), Some(g)).unwrap();
        rustix::fs::chown(root.join("exec.sh"), Some(u), Some(g)).unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("dir-link"),
            Some(u),
            None,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    } else {
        eprintln!("note: not root, ownership is not exercised");
    }
    set_mtime_ns(&root.join("deep/a"), 1_500_000_000, 1);
}

/// Nests `levels` directories of 250-byte names under `top`, each holding a
/// file `f`, creating them relative to descriptors (the total path may
/// exceed PATH_MAX); returns each level's path relative to `top`.
fn deep_chain(top: &Path, levels: usize) -> Vec<String> {
    use rustix::fs::{Mode, OFlags};
    let name = "d".repeat(250);
    let mut dir = rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let (mut rels, mut rel) = (Vec::new(), String::new());
    for _ in 0..levels {
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let f = rustix::fs::openat(
            &dir,
            "f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep").unwrap();
        rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        rels.push(rel.clone());
    }
    rels
}

/// A local user on either node nests directories past PATH_MAX: the rest
/// of the tree still replicates, the part too deep for the wire is reported
/// as skipped, and the standby's own deep tree is removed like any other.
#[test]
fn a_path_longer_than_path_max_on_either_side_does_not_stop_replication() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("plain"), b"plain").unwrap();
    std::fs::create_dir(p.primary().join("z")).unwrap();
    std::fs::write(p.primary().join("z/after"), b"after").unwrap();
    let rels = deep_chain(&p.primary().join("z"), 20);
    std::fs::create_dir(p.standby_dir().join("junk")).unwrap();
    deep_chain(&p.standby_dir().join("junk"), 20);
    p.start_standby();
    let out = p.resync(&[]);
    assert!(out.contains("skipped 1"), "{out}");
    assert_eq!(
        std::fs::read(p.standby_dir().join("plain")).unwrap(),
        b"plain"
    );
    assert_eq!(
        std::fs::read(p.standby_dir().join("z/after")).unwrap(),
        b"after"
    );
    // Deep, but short enough for the wire (and for absolute paths here): replicated.
    let ok = rels.iter().rposition(|r| r.len() + 4 <= 4000).unwrap();
    assert!(ok >= 10);
    assert_eq!(
        std::fs::read(p.standby_dir().join(format!("z/{}/f", rels[ok]))).unwrap(),
        b"deep"
    );
    assert!(!p.standby_dir().join("junk").exists(), "{out}");
    assert!(!p.log().contains("ERROR"), "{}", p.log());
}

#[test]
fn resync_copies_every_kind_then_sends_nothing() {
    let mut p = Pair::new();
    rich_tree(&p.primary());
    p.start_standby();
    let out = p.resync(&[]);
    assert!(out.contains("sent as delta 0"), "{out}");
    assert!(
        !p.standby_dir().join("fifo").exists(),
        "FIFO must be skipped"
    );
    std::fs::remove_file(p.primary().join("fifo")).unwrap();
    p.assert_equal();
    let st = std::fs::symlink_metadata(p.standby_dir().join("abs-link")).unwrap();
    assert!(st.file_type().is_symlink(), "symlinks are copied as links");
    // Second run of an unchanged tree: nothing moves.
    let out = p.resync(&[]);
    assert!(
        out.contains("sent whole 0, sent as delta 0, deleted 0"),
        "{out}"
    );
    assert!(out.contains("metadata-only 0"), "{out}");
}

/// A standby with few descriptors commits in small batches, each placed by
/// the lane's committer while the lane stages the next (two batches held
/// per lane): thousands of files, links and symlinks across dozens of
/// batches arrive whole, none failing for want of a descriptor.
#[test]
fn many_small_batches_placed_beside_staging_lose_nothing() {
    let mut p = Pair::new();
    let root = p.primary();
    for d in 0..20 {
        std::fs::create_dir(root.join(format!("d{d:02}"))).unwrap();
        for f in 0..150 {
            let body = format!("{d}/{f} ").repeat(1 + f % 7);
            std::fs::write(root.join(format!("d{d:02}/f{f:03}")), body).unwrap();
        }
        std::os::unix::fs::symlink("f000", root.join(format!("d{d:02}/l"))).unwrap();
        std::fs::hard_link(
            root.join(format!("d{d:02}/f001")),
            root.join(format!("d{d:02}/h")),
        )
        .unwrap();
    }
    // (600 - 256 reserved) / (2 lanes or more × 2 batches): under 90 files
    // a batch, so 3,000 files take over 30 batches.
    p.start_standby_with_nofile(600);
    let out = p.resync(&[]);
    eprintln!("{out}");
    assert!(out.contains("sent whole 3000,"), "{out}");
    assert!(out.contains("symlinks 20, hard links 20"), "{out}");
    p.assert_equal();
    let log = p.log();
    // No failure (each is a warning), no descriptor shortage; only the
    // new node's notice.
    let warned: Vec<_> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && !l.contains("may hold writes the primary never"))
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
    let batches = log.matches("a lane's full batch").count();
    assert!(batches >= 30, "{batches} full batches: {log}");
    // Nothing left to send.
    let again = p.resync(&[]);
    assert!(again.contains("sent whole 0,"), "{again}");
}

/// A root standby gives a temporary file its owner before the rename, so
/// one killed in between leaves it owned by someone else: the next
/// standby removes it all the same (named by an earlier standby's pid),
/// and keeps a file of that shape named by another pid.
#[test]
fn a_temporary_file_a_killed_standby_left_goes_whoever_owns_it() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, ownership is not exercised");
        return;
    }
    let mut p = Pair::new();
    std::fs::write(p.primary().join("a"), b"a").unwrap();
    p.start_standby();
    let pid = p.standby.as_ref().unwrap().id();
    p.kill_standby();
    let left = p.standby_dir().join(format!(".syncd-{pid}.3.tmp"));
    let other = p.standby_dir().join(".syncd-1.3.tmp");
    // SAFETY: plain ids, not the caller's (what `rich_tree` does too).
    let (u, g) = unsafe {
        (
            rustix::fs::Uid::from_raw(1234),
            rustix::fs::Gid::from_raw(5678),
        )
    };
    for f in [&left, &other] {
        std::fs::write(f, b"half-placed").unwrap();
        rustix::fs::chown(f, Some(u), Some(g)).unwrap();
    }
    p.start_standby();
    let out = p.resync(&[]);
    assert!(!left.exists(), "{out}\n{}", p.log());
    assert!(other.exists(), "not an earlier standby's: kept");
    assert!(p.log().contains("removed a temporary file"), "{}", p.log());
    assert_eq!(std::fs::read(p.standby_dir().join("a")).unwrap(), b"a");
}

#[test]
fn edits_deletes_renames_and_type_changes_converge() {
    let mut p = Pair::new();
    rich_tree(&p.primary());
    std::fs::remove_file(p.primary().join("fifo")).unwrap();
    p.start_standby();
    p.resync(&[]);
    let r = p.primary();
    // A delta: change 4 KiB in the middle of the 8 MiB file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("big.bin"))
            .unwrap();
        f.write_all_at(&[1u8; 4096], 3 << 20).unwrap();
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(r.join("d00/e00/f00000.dat"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"appended"))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(r.join("d01/e01/f00001.dat"))
        .unwrap()
        .set_len(3)
        .unwrap();
    std::fs::rename(r.join("deep/a"), r.join("deep/renamed")).unwrap();
    std::fs::remove_file(r.join("exec.sh")).unwrap();
    std::fs::set_permissions(r.join("d02"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::remove_dir_all(r.join("empty")).unwrap();
    std::fs::write(r.join("empty"), b"now a file").unwrap();
    std::fs::remove_file(r.join("zero-length")).unwrap();
    std::fs::create_dir(r.join("zero-length")).unwrap();
    std::fs::remove_file(r.join("dir-link")).unwrap();
    std::fs::create_dir(r.join("dir-link")).unwrap();
    let out = p.resync(&[]);
    assert!(out.contains("sent as delta 1"), "{out}");
    p.assert_equal();

    // --dry-run changes nothing; --no-delete keeps extras.
    std::fs::write(p.standby_dir().join("extra"), b"only here").unwrap();
    std::fs::write(r.join("fresh"), b"new").unwrap();
    let out = p.resync(&["--dry-run"]);
    assert!(
        out.contains("delete extra") && out.contains("send   fresh"),
        "{out}"
    );
    assert!(!p.standby_dir().join("fresh").exists());
    p.resync(&["--no-delete"]);
    assert!(p.standby_dir().join("extra").exists());
    assert!(p.standby_dir().join("fresh").exists());
    let (ok, out) = p.verify();
    assert!(!ok && out.contains("extra: only on standby"), "{out}");
    p.resync(&[]);
    p.assert_equal();
}

#[test]
fn checksum_finds_same_size_same_mtime_changes() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("f"), b"aaaa").unwrap();
    p.start_standby();
    p.resync(&[]);
    // Same size and mtime, different content: only --checksum notices.
    std::fs::write(p.standby_dir().join("f"), b"bbbb").unwrap();
    let m = std::fs::metadata(p.primary().join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    set_mtime_ns(&p.standby_dir().join("f"), m.mtime(), m.mtime_nsec());
    let out = p.resync(&[]);
    assert!(out.contains("sent whole 0"), "{out}");
    let (ok, _) = p.verify();
    assert!(!ok, "verify must hash contents");
    let out = p.resync(&["--checksum"]);
    assert!(out.contains("sent whole 1"), "{out}");
    p.assert_equal();
}

#[test]
fn wrong_certificate_is_refused_before_any_data() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("secret"), b"data").unwrap();
    p.start_standby();
    let o = p.syncd(&["resync", "--config", "mallory.toml"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot connect") || err.contains("certificate"),
        "{err}"
    );
    assert!(!p.standby_dir().join("secret").exists());
    let t = Instant::now();
    while !p.log().contains("not the pinned one") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "standby log lacks the reason: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the primary refuses a standby it does not pin.
    let cfg = std::fs::read_to_string(p.path("primary.toml"))
        .unwrap()
        .replace("standby-keys/node.crt\"\n", "mallory-keys/node.crt\"\n");
    std::fs::write(p.path("primary-wrongpin.toml"), cfg).unwrap();
    let o = p.syncd(&["resync", "--config", "primary-wrongpin.toml"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pinned"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!p.standby_dir().join("secret").exists());
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let p = Pair::new();
    std::fs::write(p.path("bad.toml"), "export = \"primary\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\nlisten = 7400\n").unwrap();
    let o = p.syncd(&["--role", "standby", "--config", "bad.toml", "--check"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bad.toml") && e.contains("line 5"), "{e}");
    let o = p.syncd(&["--role", "standby", "--config", "standby.toml", "--check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let busy = std::net::UdpSocket::bind(("127.0.0.1", p.port)).unwrap();
    let o = p.syncd(&["--role", "standby", "--config", "standby.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("listen") && e.contains("in use"), "{e}");
    drop(busy);
}

#[test]
fn export_id_and_version_mismatch_are_refused() {
    let mut p = Pair::new();
    p.start_standby();
    let cfg = std::fs::read_to_string(p.path("primary.toml")).unwrap() + "export_id = \"other\"\n";
    std::fs::write(p.path("other.toml"), cfg).unwrap();
    let o = p.syncd(&["resync", "--config", "other.toml"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("export_id"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Plays a hostile primary (with the right certificate) against the real standby.
#[test]
fn hostile_paths_are_refused_and_nothing_escapes() {
    use syncd::primary::Session;
    use syncd::wire::{Encoding, Meta, Purpose, Request};
    use syncd_proto::path::RelPath;
    let mut p = Pair::new();
    let outside = p.path("outside");
    std::fs::create_dir(&outside).unwrap();
    p.start_standby();
    let cfg = syncd::config::Config::load(&p.path("primary.toml")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
    };
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    rt.block_on(async {
        // `..` and absolute paths cannot even be decoded: the standby ends the session.
        for (placeholder, evil) in [
            (&b"xx/outside/pwn"[..], &b"../outside/pwn"[..]),
            (b"xtmp/pwn", b"/tmp/pwn"),
            (b"a/xx/xx/b", b"a/../../b"),
        ] {
            let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
            let req = Request::Mkdir {
                path: RelPath::new(placeholder.to_vec()).unwrap(),
                meta,
            };
            let mut bytes = postcard::to_stdvec(&req).unwrap();
            let at = bytes
                .windows(placeholder.len())
                .position(|w| w == placeholder)
                .unwrap();
            bytes[at..at + evil.len()].copy_from_slice(evil);
            s.send_frame(&bytes).await.unwrap();
            let r = s.barrier(1).await;
            assert!(
                r.is_err(),
                "hostile path {:?} was accepted",
                String::from_utf8_lossy(evil)
            );
        }
        // A symlink planted in a parent directory does not lead outside.
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        let rp = |s: &str| RelPath::new(s.as_bytes().to_vec()).unwrap();
        s.send(&Request::Symlink {
            path: rp("evil"),
            target: outside.as_os_str().as_bytes().to_vec(),
            meta,
        })
        .await
        .unwrap();
        s.barrier(1).await.unwrap();
        s.send(&Request::FileBegin {
            id: 1,
            path: rp("evil/pwned"),
            meta,
            size: 3,
            encoding: Encoding::Whole,
        })
        .await
        .unwrap();
        s.send(&Request::FileData {
            id: 1,
            data: b"bad".to_vec(),
        })
        .await
        .unwrap();
        s.send(&Request::FileEnd {
            id: 1,
            hash: *blake3::hash(b"bad").as_bytes(),
        })
        .await
        .unwrap();
        s.send(&Request::Mkdir {
            path: rp("evil/dir"),
            meta,
        })
        .await
        .unwrap();
        s.send(&Request::Link {
            path: rp("evil/hard"),
            leader: rp("evil"),
        })
        .await
        .unwrap();
        let failures = s.barrier(2).await.unwrap();
        assert!(failures.len() >= 2, "{failures:?}");
        // More data than announced, and a wrong hash, are never committed.
        s.send(&Request::FileBegin {
            id: 2,
            path: rp("liar"),
            meta,
            size: 2,
            encoding: Encoding::Whole,
        })
        .await
        .unwrap();
        s.send(&Request::FileData {
            id: 2,
            data: b"abc".to_vec(),
        })
        .await
        .unwrap();
        s.send(&Request::FileEnd {
            id: 2,
            hash: [0; 32],
        })
        .await
        .unwrap();
        s.send(&Request::FileBegin {
            id: 3,
            path: rp("badhash"),
            meta,
            size: 3,
            encoding: Encoding::Whole,
        })
        .await
        .unwrap();
        s.send(&Request::FileData {
            id: 3,
            data: b"abc".to_vec(),
        })
        .await
        .unwrap();
        s.send(&Request::FileEnd {
            id: 3,
            hash: [0; 32],
        })
        .await
        .unwrap();
        let failures = s.barrier(3).await.unwrap();
        assert_eq!(failures.len(), 2, "{failures:?}");
        // A garbage frame ends the session (and only the session).
        s.send_frame(&[0u8; 0]).await.unwrap();
        let _ = s.finish().await;
    });
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside the export"
    );
    assert!(!p.standby_dir().join("liar").exists());
    assert!(!p.standby_dir().join("badhash").exists());
    // The standby is still alive and serving.
    std::fs::write(p.primary().join("ok"), b"fine").unwrap();
    p.resync(&[]);
    assert_eq!(std::fs::read(p.standby_dir().join("ok")).unwrap(), b"fine");
}

/// kill -9 of the standby in the middle of a large transfer: no partial file
/// is ever visible under its real name, and the next resync completes it.
#[test]
fn standby_killed_mid_transfer_leaves_no_partial_file() {
    let mut p = Pair::new();
    let size: usize = 256 << 20;
    {
        use std::io::Write;
        let f = std::fs::File::create(p.primary().join("large.bin")).unwrap();
        // Incompressible pseudo-random content, quickly (BLAKE3's XOF).
        let mut xof = blake3::Hasher::new().update(b"seed").finalize_xof();
        let mut w = std::io::BufWriter::new(f);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            xof.fill(&mut buf);
            w.write_all(&buf).unwrap();
        }
        w.flush().unwrap();
    }
    let expect = syncd::scan::hash_file(&p.primary().join("large.bin")).unwrap();
    p.start_standby();
    let pid = p.standby.as_ref().unwrap().id();
    let target = p.standby_dir().join("large.bin");
    let staging = p.standby_dir().join(".syncd/staging");
    let mut resync = std::process::Command::new(common::BIN)
        .args(["resync", "--config", "primary.toml"])
        .current_dir(p.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Watch until a good part of the file is staged, checking the real name all along.
    let t = Instant::now();
    loop {
        assert!(
            !target.exists(),
            "the file appeared under its real name before it was complete"
        );
        // Content is staged in an unnamed (O_TMPFILE) file, or a named one
        // under .syncd/staging on filesystems without O_TMPFILE: either way
        // it is reachable only through the standby's open descriptors.
        let staged: u64 = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| {
                    let e = e.ok()?;
                    let l = std::fs::read_link(e.path()).ok()?;
                    let s = l.to_string_lossy();
                    (s.ends_with("(deleted)") || s.contains(".syncd/staging"))
                        .then(|| std::fs::metadata(e.path()).ok().map(|m| m.len()))?
                })
                .sum()
            })
            .unwrap_or(0);
        if staged > (size as u64) / 4 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "transfer did not progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kill_standby();
    let _ = resync.wait();
    assert!(!target.exists(), "partial file visible after kill -9");
    p.start_standby();
    assert_eq!(
        std::fs::read_dir(&staging).map_or(0, |d| d.count()),
        0,
        "staging leftovers were not cleaned at start"
    );
    p.resync(&[]);
    assert_eq!(syncd::scan::hash_file(&target).unwrap(), expect);
    p.assert_equal();
}

/// `syncd pair check`: a matching pair passes, with the running peer's
/// handshake; a node holding a certificate the peer does not pin is
/// reported from the configs and from the handshake, exit 1.
#[test]
fn pair_check_reports_a_matching_pair_and_a_wrong_pin() {
    let mut p = Pair::new();
    p.start_standby();
    let cfg = |n: &str| p.path(n).to_str().unwrap().to_string();
    let (primary, standby, mallory) = (
        cfg("primary.toml"),
        cfg("standby.toml"),
        cfg("mallory.toml"),
    );

    let o = p.syncd(&[
        "pair",
        "check",
        "--config",
        &primary,
        "--peer-config",
        &standby,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("reached the peer \"") && out.contains("pins match both ways"),
        "{out}"
    );
    assert!(out.contains("0 errors, 0 warnings"), "{out}");

    let o = p.syncd(&[
        "pair",
        "check",
        "--config",
        &mallory,
        "--peer-config",
        &standby,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("error: the peer pins sha256:") && out.contains("cannot reach the peer"),
        "{out}"
    );

    // Offline: only the files.
    let o = p.syncd(&[
        "pair",
        "check",
        "--offline",
        "--config",
        &mallory,
        "--peer-config",
        &standby,
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(!out.contains("reach"), "{out}");
}

/// The exit codes README documents, exactly: `verify` 0 when equal, 1 on a
/// difference (and then changes nothing), 2 when it cannot connect.
#[test]
fn verify_exit_codes_are_exact_and_verify_changes_nothing() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("a.txt"), b"same").unwrap();
    p.start_standby();
    p.resync(&[]);
    let o = p.syncd(&["verify", "--config", "primary.toml"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::write(p.standby_dir().join("a.txt"), b"diff").unwrap();
    std::fs::write(p.standby_dir().join("extra.txt"), b"only here").unwrap();
    let o = p.syncd(&["verify", "--config", "primary.toml"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("a.txt") && out.contains("extra.txt"), "{out}");
    // A verify session is read-only.
    assert_eq!(
        std::fs::read(p.standby_dir().join("a.txt")).unwrap(),
        b"diff"
    );
    assert!(p.standby_dir().join("extra.txt").exists());
    p.kill_standby();
    let o = p.syncd(&["verify", "--config", "primary.toml"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
