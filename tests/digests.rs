//! A restart of an in-sync pair compares directory digests (protocol 8):
//! real daemons, a tree deep enough that a change sits three directories
//! down. Whatever changed while both were down must still be found, and an
//! unchanged tree must cost a few bytes, not a manifest.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::Pair;

/// a{0..3}/b{0..4}/c{0..4}/f{0..9}: 1,000 files in 125 directories.
fn seed(root: &Path) {
    for a in 0..5 {
        for b in 0..5 {
            for c in 0..5 {
                let d = root.join(format!("a{a}/b{b}/c{c}"));
                std::fs::create_dir_all(&d).unwrap();
                for f in 0..8 {
                    std::fs::write(d.join(format!("f{f}")), format!("{a}{b}{c}{f} content"))
                        .unwrap();
                }
            }
        }
    }
}

fn synced_pair() -> Pair {
    let mut p = Pair::new();
    seed(&p.primary());
    p.start_standby();
    p.start_primary();
    p.wait_live();
    p.wait_equal(Duration::from_secs(60));
    p
}

fn restart(p: &mut Pair) {
    assert!(p.stop_primary(), "primary did not stop cleanly");
    p.kill_standby();
}

fn start_again(p: &mut Pair) {
    p.start_standby();
    p.start_primary();
    p.wait_live();
    assert!(
        p.primary_log().contains("directory digests compared"),
        "the restart did not compare digests:\n{}",
        p.primary_log()
    );
}

#[test]
fn an_unchanged_tree_restarts_on_a_few_bytes() {
    let mut p = synced_pair();
    restart(&mut p);
    start_again(&mut p);
    // The full manifest of these 1,125 entries is about 40 KB.
    let rx = p.metric("wire_rx_bytes_total");
    assert!(rx < 2048.0, "{rx} bytes received for an unchanged tree");
    assert_eq!(p.metric("files_sent_whole_total"), 0.0);
    p.assert_equal();
}

#[test]
fn changes_made_while_both_were_down_are_found_at_restart() {
    let mut p = synced_pair();
    restart(&mut p);
    let root = p.primary();
    // Same size, in place: only the file's own mtime says so.
    let edited = root.join("a1/b2/c3/f5");
    let before = std::fs::read(&edited).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&edited)
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    assert_eq!(
        std::fs::metadata(&edited).unwrap().len(),
        before.len() as u64
    );
    // A new and a deleted file deep down, a new directory, a removed one.
    std::fs::write(root.join("a2/b0/c1/new"), b"new").unwrap();
    std::fs::remove_file(root.join("a3/b3/c0/f2")).unwrap();
    std::fs::create_dir(root.join("a0/b4/c4/newdir")).unwrap();
    std::fs::write(root.join("a0/b4/c4/newdir/x"), b"x").unwrap();
    std::fs::remove_dir_all(root.join("a4/b1/c2")).unwrap();
    // A mode change alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("a1/b1/c1/f1"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    start_again(&mut p);
    p.wait_equal(Duration::from_secs(30));
    p.assert_equal();
    // Listing the differing directories, not the tree.
    let rx = p.metric("wire_rx_bytes_total");
    assert!(rx < 20_000.0, "{rx} bytes received for six changes");
    let s = std::fs::read(p.standby_dir().join("a1/b2/c3/f5")).unwrap();
    assert_eq!(s[0], b'X');
    assert!(!p.standby_dir().join("a3/b3/c0/f2").exists());
    assert!(!p.standby_dir().join("a4/b1/c2").exists());
}

#[test]
fn a_change_on_the_standby_alone_is_found_too() {
    let mut p = synced_pair();
    restart(&mut p);
    // Someone wrote on the standby while it was down: its digests differ,
    // so the primary puts its own version back.
    std::fs::write(p.standby_dir().join("a2/b2/c2/f0"), b"stray content!").unwrap();
    std::fs::write(p.standby_dir().join("a2/b2/c2/extra"), b"stray").unwrap();
    start_again(&mut p);
    p.wait_equal(Duration::from_secs(30));
    p.assert_equal();
}

fn quick(p: &Pair) -> (bool, String) {
    let o = p.syncd(&["verify", "--quick", "--config", "primary.toml"]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn verify_quick_compares_metadata_by_digests_and_plain_verify_content() {
    let mut p = synced_pair();
    // The daemons stopped, so nothing repairs what we break below.
    restart(&mut p);
    p.start_standby();
    let (ok, out) = quick(&p);
    assert!(ok, "{out}");
    assert!(out.contains("equal"), "{out}");
    // A size change deep down on the standby: found, by name.
    let f = p.standby_dir().join("a3/b1/c4/f6");
    std::fs::write(&f, b"longer than before").unwrap();
    let (ok, out) = quick(&p);
    assert!(!ok, "{out}");
    assert!(out.contains("a3/b1/c4/f6: size"), "{out}");
    assert!(out.contains("1 difference"), "{out}");
    // Same size and mtime, other bytes: only the content says so, and
    // only plain verify reads content.
    let g = p.standby_dir().join("a0/b0/c0/f0");
    let m = std::fs::metadata(&g).unwrap();
    let mut bytes = std::fs::read(&g).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&g, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&g)
        .unwrap()
        .set_modified(m.modified().unwrap())
        .unwrap();
    let (_, out) = quick(&p);
    assert!(!out.contains("a0/b0/c0/f0"), "{out}");
    let (ok, out) = p.verify();
    assert!(!ok);
    assert!(out.contains("a0/b0/c0/f0: content differs"), "{out}");
}

#[test]
fn hard_links_made_while_both_were_down_arrive_as_links() {
    use std::os::unix::fs::MetadataExt;
    let mut p = synced_pair();
    restart(&mut p);
    let root = p.primary();
    // A second name for an old file, in another deep directory.
    std::fs::hard_link(root.join("a1/b1/c1/f3"), root.join("a2/b3/c4/link")).unwrap();
    start_again(&mut p);
    p.wait_equal(Duration::from_secs(30));
    let s = p.standby_dir();
    let (a, b) = (
        std::fs::metadata(s.join("a1/b1/c1/f3")).unwrap(),
        std::fs::metadata(s.join("a2/b3/c4/link")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "not a hard link on the standby");
    // And an unchanged restart after it still agrees.
    restart(&mut p);
    start_again(&mut p);
    p.wait_equal(Duration::from_secs(30));
    assert_eq!(p.metric("files_sent_whole_total"), 0.0);
}
