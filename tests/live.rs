//! Live replication end to end: real `syncd --role primary` and `--role
//! standby` processes on loopback, a real workload on the primary's export.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pair, Rng};

/// Starting a primary is serialised: the overflow test shrinks the global
/// inotify queue limit while its primary starts.
static START: Mutex<()> = Mutex::new(());

fn start_primary(p: &mut Pair) {
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    p.start_primary();
}

/// Every file, directory and symlink under `root`, relative (none of them
/// syncd's own).
fn list(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for e in walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .flatten()
    {
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        assert!(
            !rel.starts_with(".syncd"),
            "syncd's own {rel:?} in the export"
        );
        if e.file_type().is_dir() {
            dirs.push(rel);
        } else {
            files.push(rel);
        }
    }
    (files, dirs)
}

/// A random mix of what users do to an export, `ops` operations long.
fn workload(root: &Path, seed: u64, ops: usize, stop: &AtomicBool) -> usize {
    let mut r = Rng(seed | 1);
    let (mut files, mut dirs) = list(root);
    let mut done = 0;
    for i in 0..ops {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if i % 25 == 0 {
            (files, dirs) = list(root);
        }
        let dir = if dirs.is_empty() || r.below(4) == 0 {
            PathBuf::new()
        } else {
            dirs[r.below(dirs.len())].clone()
        };
        let name = format!("n{seed}-{i}");
        let res: std::io::Result<()> = (|| {
            match r.below(14) {
                0..=3 => {
                    let len = if r.below(10) == 0 {
                        200_000
                    } else {
                        r.below(20_000)
                    };
                    let p = root.join(&dir).join(&name);
                    let data = r.bytes(len);
                    std::fs::write(&p, data)?;
                    files.push(dir.join(&name));
                }
                4 => {
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    let mut h = std::fs::OpenOptions::new()
                        .append(true)
                        .open(root.join(f))?;
                    let n = r.below(5000);
                    h.write_all(&r.bytes(n))?;
                }
                5 => {
                    // Overwrite in place (truncate + write), sometimes a small edit of a big file.
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    let p = root.join(f);
                    let mut data = std::fs::read(&p)?;
                    if data.len() > 100_000 {
                        let at = r.below(data.len() - 100);
                        data[at..at + 100].copy_from_slice(&r.bytes(100));
                    } else {
                        let n = r.below(30_000);
                        data = r.bytes(n);
                    }
                    std::fs::write(&p, data)?;
                }
                6 => {
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    let h = std::fs::OpenOptions::new().write(true).open(root.join(f))?;
                    let len = h.metadata()?.len();
                    h.set_len(len / 2)?;
                }
                7 => {
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    std::fs::rename(root.join(&f), root.join(&dir).join(&name))?;
                }
                8 => {
                    // Rename a non-empty directory.
                    let d = dirs.get(r.below(dirs.len())).cloned().unwrap_or_default();
                    let to = root.join(&name);
                    if !to.starts_with(root.join(&d)) {
                        std::fs::rename(root.join(&d), to)?;
                    }
                    (files, dirs) = list(root);
                }
                9 => {
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    std::fs::remove_file(root.join(f))?;
                }
                10 => {
                    let f = files.get(r.below(files.len())).cloned().unwrap_or_default();
                    let mode = [0o600, 0o644, 0o640, 0o755][r.below(4)];
                    std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(mode))?;
                }
                11 => {
                    std::os::unix::fs::symlink(
                        format!("target-{}", r.below(100)),
                        root.join(&dir).join(format!("{name}.lnk")),
                    )?;
                }
                12 => {
                    let mut n = name.clone().into_bytes();
                    n.extend_from_slice(b"-\xff\xfe");
                    std::fs::write(root.join(&dir).join(OsStr::from_bytes(&n)), b"latin")?;
                }
                _ => {
                    // A deep `mkdir -p` filled at once (before any watch can exist).
                    let deep = dir.join(format!("{name}/a/b/c/d"));
                    std::fs::create_dir_all(root.join(&deep))?;
                    for k in 0..5 {
                        std::fs::write(root.join(&deep).join(format!("f{k}")), r.bytes(100))?;
                    }
                    if r.below(3) == 0 {
                        let d = dirs.get(r.below(dirs.len())).cloned().unwrap_or_default();
                        if !d.as_os_str().is_empty() {
                            std::fs::remove_dir_all(root.join(d))?;
                        }
                    }
                    (files, dirs) = list(root);
                }
            }
            Ok(())
        })();
        if res.is_ok() {
            done += 1;
        }
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done
}

fn seed_tree(root: &Path) {
    for d in 0..5 {
        std::fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
        for f in 0..10 {
            std::fs::write(root.join(format!("d{d}/f{f}")), vec![d as u8; 1000 + f]).unwrap();
        }
    }
}

#[test]
fn random_workload_converges_and_is_observable() {
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let stop = AtomicBool::new(false);
    let done = workload(&p.primary(), 7, 1500, &stop);
    assert!(done > 1000, "workload mostly failed: {done}");
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    assert!(p.metric("events_total") > 100.0);
    assert!(p.metric("renames_total") > 0.0, "renames were not replayed");
    assert!(p.metric("batches_total") > 1.0);
    assert_eq!(p.metric("connected"), 1.0);
    let st = p.syncd(&["status", "--config", "primary.toml"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && text.contains("role: primary") && text.contains("lag: "),
        "{text}"
    );
    assert!(p.stop_primary(), "primary did not exit cleanly on SIGTERM");
    assert!(p.primary_log().contains("primary stopped"));
}

/// A renamed big file costs a rename on the wire, not a copy.
#[test]
fn rename_of_a_big_file_moves_no_content() {
    let mut p = Pair::new();
    std::fs::create_dir(p.primary().join("dir")).unwrap();
    std::fs::write(p.primary().join("dir/big"), Rng(3).bytes(8 << 20)).unwrap();
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let tx0 = p.metric("wire_tx_bytes_total");
    let whole0 = p.metric("files_sent_whole_total");
    std::fs::rename(p.primary().join("dir"), p.primary().join("moved")).unwrap();
    p.wait_equal(Duration::from_secs(20));
    let sent = p.metric("wire_tx_bytes_total") - tx0;
    assert!(sent < 64.0 * 1024.0, "a rename sent {sent} bytes");
    assert_eq!(p.metric("files_sent_whole_total"), whole0);
    assert_eq!(p.metric("files_sent_delta_total"), 0.0);
}

/// Moved in from outside the export: a create of the whole subtree; moved
/// out: a delete.
#[test]
fn moves_into_and_out_of_the_export() {
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let outside = p.path("outside");
    std::fs::create_dir_all(outside.join("tree/a/b")).unwrap();
    for i in 0..20 {
        std::fs::write(outside.join(format!("tree/a/b/f{i}")), vec![i as u8; 3000]).unwrap();
    }
    std::fs::write(outside.join("tree/top"), b"top").unwrap();
    std::fs::write(outside.join("loose"), b"a single file").unwrap();
    std::fs::rename(outside.join("tree"), p.primary().join("d1/tree")).unwrap();
    std::fs::rename(outside.join("loose"), p.primary().join("loose")).unwrap();
    std::fs::rename(p.primary().join("d2"), outside.join("d2")).unwrap();
    std::fs::rename(p.primary().join("d0/f3"), outside.join("f3")).unwrap();
    p.wait_equal(Duration::from_secs(20));
    p.assert_equal();
    let s = p.standby_dir();
    assert_eq!(
        std::fs::read(s.join("d1/tree/a/b/f7")).unwrap(),
        vec![7u8; 3000]
    );
    assert_eq!(std::fs::read(s.join("loose")).unwrap(), b"a single file");
    assert!(!s.join("d2").exists() && !s.join("d0/f3").exists());
    assert!(p.metric("deletes_total") >= 2.0);
}

/// Hard links made while live arrive as links, also when the other name is
/// outside the batch (`ln` to an old file, a `cp -al` snapshot), without
/// sending content.
#[test]
fn hard_links_made_live_stay_links() {
    use std::os::unix::fs::MetadataExt;
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let whole0 = p.metric("files_sent_whole_total");
    let pr = p.primary();
    std::fs::hard_link(pr.join("d0/f1"), pr.join("d1/link")).unwrap();
    std::fs::create_dir(pr.join("snap")).unwrap();
    for f in 0..10 {
        std::fs::hard_link(pr.join(format!("d2/f{f}")), pr.join(format!("snap/f{f}"))).unwrap();
    }
    p.wait_equal(Duration::from_secs(20));
    p.assert_equal();
    let ino = |rel: &str| std::fs::metadata(p.standby_dir().join(rel)).unwrap().ino();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ino("d0/f1") != ino("d1/link")
        || (0..10).any(|f| ino(&format!("d2/f{f}")) != ino(&format!("snap/f{f}")))
    {
        assert!(Instant::now() < deadline, "not linked on the standby");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        p.metric("files_sent_whole_total"),
        whole0,
        "content was sent for a hard link"
    );
    // Written in place through one name: the inotify events name only that
    // one, yet the other name on the standby must show the new content too.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(pr.join("d0/f1"))
        .unwrap();
    f.write_all(b"appended through one name").unwrap();
    drop(f);
    p.wait_equal(Duration::from_secs(20));
    p.assert_equal();
    assert_eq!(ino("d0/f1"), ino("d1/link"), "the link was broken");
    assert!(std::fs::read(p.standby_dir().join("d1/link"))
        .unwrap()
        .ends_with(b"appended through one name"));
}

/// A huge file travels on its own stream: small files written after it
/// arrive while it is still on its way, not after it.
#[test]
fn small_files_are_not_held_up_by_a_big_one() {
    let mut p = Pair::new();
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    // Seconds on loopback (sent, written, flushed), against milliseconds for a small file.
    {
        let mut f = std::fs::File::create(p.primary().join("big")).unwrap();
        let chunk = Rng(9).bytes(1 << 20);
        for _ in 0..768 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
    }
    std::fs::write(p.primary().join("small"), b"after the big one").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let small = p.standby_dir().join("small");
    while std::fs::read(&small).ok().as_deref() != Some(b"after the big one".as_slice()) {
        assert!(Instant::now() < deadline, "small file never arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        !p.standby_dir().join("big").exists(),
        "the small file only arrived after the big one"
    );
    p.wait_equal(Duration::from_secs(120));
    p.assert_equal();
    assert_eq!(p.metric("files_sent_whole_total"), 2.0);
}

#[test]
fn standby_killed_mid_workload_then_restarted_converges() {
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    // The ledger of what syncd placed is kept from here on: the kill below
    // lands among its placements.
    let t = Instant::now();
    while !p
        .log()
        .contains("local writes on this follower are detected from now on")
    {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let root = p.primary();
    let s2 = stop.clone();
    let w = std::thread::spawn(move || workload(&root, 11, 3000, &s2));
    std::thread::sleep(Duration::from_millis(700));
    p.kill_standby(); // kill -9
    std::thread::sleep(Duration::from_millis(700));
    p.start_standby();
    let done = w.join().unwrap();
    assert!(done > 1000);
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    assert!(p.metric("connects_total") >= 2.0, "never reconnected");
    // What the killed standby had placed but not yet recorded is still
    // syncd's own after the restart, not a write made on the follower.
    assert!(
        !p.log().contains("written on this follower"),
        "syncd's own placements taken for local writes:\n{}",
        p.log()
    );
}

/// More large files changing at once than there are streams for them: a
/// batch that starts one waits for another to end. That one is compared
/// once more like any transfer's end: its placement on the standby changed
/// its directory's mtime after its own batch set it, and a write made while
/// it ran was skipped by the batches meanwhile.
#[test]
fn large_files_ending_while_others_wait_for_a_stream_are_compared_again() {
    let mut p = Pair::new();
    let dirs = 2 * syncd::primary::transfer::MAX_STREAMS;
    let big =
        |d: usize, gen: usize| Rng((gen * dirs + d) as u64 + 1).bytes((2 << 20) + gen * 100 + d);
    for d in 0..dirs {
        std::fs::create_dir(p.primary().join(format!("d{d}"))).unwrap();
        std::fs::write(p.primary().join(format!("d{d}/big")), big(d, 0)).unwrap();
    }
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    for round in 1..=3 {
        // Each file twice: the second write often lands while the first's
        // transfer runs, and the batches then skip it as busy.
        for gen in [2 * round - 1, 2 * round] {
            for d in 0..dirs {
                std::fs::write(p.primary().join(format!("d{d}/big")), big(d, gen)).unwrap();
            }
        }
        p.wait_equal(Duration::from_secs(120));
    }
    p.assert_equal();
    assert!(
        p.primary_log()
            .contains("every stream busy: waiting for a transfer to end"),
        "no batch waited for a stream: the case was not exercised"
    );
}

#[test]
fn standby_away_while_primary_changes_then_back() {
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    p.kill_standby();
    let stop = AtomicBool::new(false);
    workload(&p.primary(), 23, 400, &stop);
    let t = Instant::now();
    while p.metric("connected") != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "dead standby never noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.start_standby();
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
}

/// Restores a sysctl on drop.
struct Sysctl(&'static str, String);
impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

#[test]
fn inotify_overflow_still_converges() {
    const Q: &str = "/proc/sys/fs/inotify/max_queued_events";
    let Ok(old) = std::fs::read_to_string(Q) else {
        syncd_testkit::skip::skip("inotify_overflow_still_converges", &format!("no {Q}"));
        return;
    };
    let mut p = Pair::new();
    seed_tree(&p.primary());
    p.start_standby();
    {
        let _g = START.lock().unwrap_or_else(|e| e.into_inner());
        // The limit is taken when the inotify instance is created: shrink it
        // just for this primary's start.
        if std::fs::write(Q, "16").is_err() {
            syncd_testkit::skip::skip(
                "inotify_overflow_still_converges",
                &format!("cannot set {Q} (needs root)"),
            );
            return;
        }
        let _restore = Sysctl(Q, old);
        p.start_primary();
    }
    p.wait_live();
    // A burst far beyond 16 queued events while the primary cannot read them.
    let pid = rustix::process::Pid::from_raw(p.primary.as_ref().unwrap().id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::Stop).unwrap();
    // Into watched directories (a new directory is watched only once the
    // stopped primary reads its creation, so files in it queue nothing).
    for d in 0..10 {
        let dir = p.primary().join(format!("d{}", d % 5));
        for f in 0..100 {
            std::fs::write(dir.join(format!("burst{d}-{f}")), [d as u8; 10]).unwrap();
        }
    }
    rustix::process::kill_process(pid, rustix::process::Signal::Cont).unwrap();
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    assert!(p.metric("overflows_total") >= 1.0, "no overflow was seen");
}

/// Content that proves it is complete: length, then a repeated byte.
fn whole(gen: u8, len: usize) -> Vec<u8> {
    let mut v = (len as u64).to_le_bytes().to_vec();
    v.resize(len, gen);
    v
}

fn is_whole(b: &[u8]) -> bool {
    if b.len() < 9 {
        return false;
    }
    let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    len == b.len() && b[8..].iter().all(|&x| x == b[8])
}

#[test]
fn a_reader_of_the_standby_never_sees_a_partial_file() {
    let mut p = Pair::new();
    // The settle rule ships a file held open and quiet for `settle_ms` as it
    // is (documented; a writer stalled mid-file on a loaded machine is such
    // a file): out of reach here, so only the lease and close rules decide.
    let cfg = p.path("primary.toml");
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str("\n[sync]\nsettle_ms = 600000\n");
    std::fs::write(&cfg, toml).unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    for n in &names {
        std::fs::write(p.primary().join(n), whole(0, 100_000)).unwrap();
    }
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, sdir, n2) = (stop.clone(), p.standby_dir(), names.clone());
    let reader = std::thread::spawn(move || {
        let (mut reads, mut bad) = (0u64, Vec::new());
        while !s2.load(Ordering::Relaxed) {
            for n in &n2 {
                if let Ok(b) = std::fs::read(sdir.join(n)) {
                    reads += 1;
                    if !is_whole(&b) {
                        bad.push((n.clone(), b.len()));
                    }
                }
            }
        }
        (reads, bad)
    });
    let t = Instant::now();
    let mut gen = 1u8;
    while t.elapsed() < Duration::from_secs(4) {
        for n in &names {
            // Written in place in pieces, so the primary itself is partial for a while.
            let data = whole(gen, 100_000 + gen as usize * 1000);
            let mut f = std::fs::File::create(p.primary().join(n)).unwrap();
            for c in data.chunks(16_384) {
                f.write_all(c).unwrap();
            }
            drop(f);
            gen = gen.wrapping_add(1).max(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    p.wait_equal(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(reads > 100, "reader barely ran: {reads}");
    assert!(
        bad.is_empty(),
        "partial files seen on the standby: {bad:?}\n{}",
        p.primary_log()
    );
}

#[test]
fn the_watch_does_not_follow_symlinks_out_of_the_export() {
    let mut p = Pair::new();
    // a tree outside the export, reachable through a link inside it
    let outside = p.path("outside");
    for i in 0..40 {
        std::fs::create_dir_all(outside.join(format!("d{i}/sub"))).unwrap();
    }
    std::fs::create_dir_all(p.primary().join("a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, p.primary().join("a/out")).unwrap();
    std::os::unix::fs::symlink("/", p.primary().join("root")).unwrap();
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let pid = p.primary.as_ref().unwrap().id();
    let n = common::watches_of(pid);
    // the export's own directories: the root, a, a/b, the watch's private
    // sync directory (see `lease::Closed`) and at most the state dir
    assert!(
        n <= 5,
        "the primary holds {n} inotify watches: it followed a symlink"
    );
    assert!(
        n >= 3,
        "the primary holds {n} inotify watches: the export is not watched"
    );
    // the links themselves are replicated as links
    let l = std::fs::symlink_metadata(p.standby_dir().join("a/out")).unwrap();
    assert!(l.file_type().is_symlink());
    // and the export itself is still followed live
    std::fs::write(p.primary().join("a/b/f"), b"y").unwrap();
    p.wait_equal(Duration::from_secs(10));
}

/// Reading the export is not a change: the primary's own reads of every file
/// it ships, a backup, or an NFS server serving reads must not fill the
/// kernel's event queue (notify 8 watched IN_OPEN: on a 1,000,000-file tree
/// the first sync's reads overflowed it and forced a second full reconcile).
/// With the queue cut to 64 events, the first sync of 3,000 files and two
/// full reads of the export must see no overflow.
#[test]
fn reading_the_export_queues_no_events() {
    const Q: &str = "/proc/sys/fs/inotify/max_queued_events";
    let name = "reading_the_export_queues_no_events";
    let Ok(old) = std::fs::read_to_string(Q) else {
        syncd_testkit::skip::skip(name, &format!("no {Q}"));
        return;
    };
    let mut p = Pair::new();
    let mut files = Vec::new();
    for d in 0..30 {
        let dir = p.primary().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            files.push(dir.join(format!("f{f}")));
            std::fs::write(files.last().unwrap(), [d as u8; 100]).unwrap();
        }
    }
    p.start_standby();
    {
        let _g = START.lock().unwrap_or_else(|e| e.into_inner());
        if std::fs::write(Q, "64").is_err() {
            syncd_testkit::skip::skip(name, &format!("cannot set {Q} (needs root)"));
            return;
        }
        let _restore = Sysctl(Q, old);
        p.start_primary();
    }
    p.wait_live();
    p.wait_equal(Duration::from_secs(60));
    for _ in 0..2 {
        for f in &files {
            assert_eq!(std::fs::read(f).unwrap().len(), 100);
        }
    }
    // A change after the reads still arrives by its event.
    std::fs::write(p.primary().join("after"), b"x").unwrap();
    p.wait_equal(Duration::from_secs(10));
    assert_eq!(p.metric("overflows_total"), 0.0, "{}", p.primary_log());
}

/// The start watches each directory as its first scan enters it (no
/// separate walk adding every watch first): files written into many
/// directories while the primary starts, scans and goes live all arrive,
/// whether a directory was scanned before or after the write.
#[test]
fn writes_into_many_directories_during_the_start_all_arrive() {
    let mut p = Pair::new();
    let root = p.primary();
    let dirs: Vec<PathBuf> = (0..300)
        .map(|d| root.join(format!("d{d}/s{}", d % 7)))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        for f in 0..4 {
            std::fs::write(d.join(format!("f{f}")), b"seed").unwrap();
        }
    }
    p.start_standby();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (dirs, stop, rounds) = (dirs.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Across the tree in a different order each round, so some
                // writes land just before and some just after the scan.
                for i in 0..dirs.len() {
                    let d = &dirs[(i * 7 + round * 13) % dirs.len()];
                    std::fs::write(d.join(format!("w{}", round % 3)), format!("{round}")).unwrap();
                }
                round += 1;
                rounds.store(round, Ordering::Relaxed);
            }
        })
    };
    start_primary(&mut p);
    p.wait_live();
    // A few whole rounds after "in sync" too: every directory is watched.
    let live_at = rounds.load(Ordering::Relaxed);
    while rounds.load(Ordering::Relaxed) < live_at + 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    assert_eq!(p.metric("overflows_total"), 0.0, "{}", p.primary_log());
}

/// Pipelined commits: a batch starts while the previous one's commit is
/// still awaited, and the standby applies a session's requests in order, so
/// a path rewritten batch after batch ends with its last content (and every
/// new file arrives).
#[test]
fn a_path_rewritten_while_commits_overlap_ends_with_its_last_content() {
    let mut p = Pair::new();
    p.start_standby();
    start_primary(&mut p);
    p.wait_live();
    let t = Instant::now();
    let mut i = 0;
    // At least 2,000 rewrites, until the log shows overlapping batches
    // (the primary logs each batch's timing at debug).
    loop {
        std::fs::write(p.primary().join("same"), format!("version {i}\n")).unwrap();
        if i % 4 == 0 {
            std::fs::write(p.primary().join(format!("n{i}")), format!("{i}\n")).unwrap();
        }
        i += 1;
        if i >= 2000 && i % 200 == 0 && p.primary_log().contains("overlapped=true") {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no batch started while a commit was in flight:\n{}",
            p.primary_log()
        );
    }
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    let last = format!("version {}\n", i - 1);
    assert_eq!(
        std::fs::read_to_string(p.standby_dir().join("same")).unwrap(),
        last
    );
    // The files are on the standby before their commits are answered.
    let t = std::time::Instant::now();
    while p.metric("lag_operations") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(30), "lag never reached 0");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p.stop_primary(), "primary did not exit cleanly on SIGTERM");
}
