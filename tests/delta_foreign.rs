//! Deltas against a base syncd did not write (the standby was seeded by
//! rsync or a restore), then against the result syncd wrote: the signature
//! the standby keeps of that result reuses the base's entries for blocks
//! copied whole, and must be exactly right for the second delta to stay a
//! small delta (a wrong one fails the content check and goes whole).

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, UNIX_EPOCH};

use common::Pair;
use syncd_testkit::rng::Rng;

fn payload(out: &str) -> u64 {
    let n = out
        .split("delta payload ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok());
    n.unwrap_or_else(|| panic!("no delta payload in: {out}"))
}

fn overwrite(p: &std::path::Path, at: u64, seed: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&Rng(seed | 1).bytes(4096), at).unwrap();
}

/// `bytes` on the standby as another tool would leave them: not written by
/// syncd (no cached signature), an old mtime so the file differs.
fn write_foreign(dst: &std::path::Path, bytes: &[u8]) {
    std::fs::write(dst, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(dst)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(946_684_800))
        .unwrap();
}

#[test]
fn a_foreign_base_then_its_own_result_travel_as_small_deltas() {
    let mut p = Pair::new();
    // Several 4 MiB windows, a short last block.
    let base = Rng(1).bytes((24 << 20) + 1234);
    let (src, dst) = (p.primary().join("big.bin"), p.standby_dir().join("big.bin"));
    std::fs::write(&src, &base).unwrap();
    write_foreign(&dst, &base);
    // Unaligned, and across a window edge.
    overwrite(&src, (5 << 20) + 123, 2);
    overwrite(&src, (8 << 20) - 2000, 3);
    p.start_standby();
    let out = p.resync(&[]);
    assert!(out.contains("sent whole 0, sent as delta 1"), "{out}");
    assert!(payload(&out) < 256 << 10, "{out}");
    p.assert_equal();

    // Against what syncd wrote: the kept signature answers, and is right.
    overwrite(&src, 17 << 20, 4);
    let out = p.resync(&[]);
    assert!(out.contains("sent whole 0, sent as delta 1"), "{out}");
    assert!(payload(&out) < 256 << 10, "{out}");
    p.assert_equal();
    // And once more, on a signature that itself reused entries twice.
    overwrite(&src, 1 << 20, 5);
    let out = p.resync(&[]);
    assert!(out.contains("sent whole 0, sent as delta 1"), "{out}");
    assert!(payload(&out) < 256 << 10, "{out}");
    p.assert_equal();
}

/// A foreign base that is only the first part of the file, then one that
/// is another file entirely, then a source with bytes inserted (nothing
/// after them at its base offset): each ends equal, the first and last as
/// small deltas, the unrelated one with about the whole file as payload.
#[test]
fn truncated_unrelated_and_shifted_foreign_bases_end_equal() {
    let mut p = Pair::new();
    let data = Rng(11).bytes((13 << 20) + 77);
    let (src, dst) = (p.primary().join("big.bin"), p.standby_dir().join("big.bin"));
    let foreign = |bytes: &[u8]| write_foreign(&dst, bytes);
    std::fs::write(&src, &data).unwrap();
    foreign(&data[..(9 << 20) + 5]);
    p.start_standby();
    let out = p.resync(&[]);
    assert!(out.contains("sent as delta 1"), "{out}");
    assert!(payload(&out) < (5 << 20), "{out}");
    p.assert_equal();

    foreign(&Rng(12).bytes(data.len()));
    overwrite(&src, 3 << 20, 6);
    let out = p.resync(&[]);
    p.assert_equal();
    if out.contains("sent as delta 1") {
        assert!(payload(&out) > 12 << 20, "{out}");
    }

    let mut shifted = data.clone();
    shifted.splice(6 << 20..6 << 20, Rng(13).bytes(999));
    std::fs::write(&src, &shifted).unwrap();
    foreign(&data);
    let out = p.resync(&[]);
    assert!(out.contains("sent whole 0, sent as delta 1"), "{out}");
    assert!(payload(&out) < 256 << 10, "{out}");
    p.assert_equal();
}
