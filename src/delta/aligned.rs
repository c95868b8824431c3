//! Diffing a window whose blocks mostly sit where they sat in the base (an
//! in-place edit of a large file, the common case): such blocks are found by
//! hashing the window's blocks all at once (fast_rsync's signature hashes
//! several blocks per instruction stream) and comparing each with the base's
//! entry at the same index, instead of fast_rsync's diff hashing every
//! candidate block on its own. Whatever does not match in place goes through
//! the ordinary rolling diff, so moved data is still found. The output is an
//! ordinary delta segment; like any match, it is checked by the standby's
//! BLAKE3 of the result.

use fast_rsync::{IndexedSignature, Signature, SignatureOptions};

use super::{DeltaError, DELTA_MAGIC};

/// The base's signature as seen from one new-file window.
pub(super) struct Base<'a> {
    pub ix: &'a IndexedSignature<'a>,
    /// The base's block entries (rolling sum, then strong hash prefix).
    pub entries: &'a [u8],
    pub opts: SignatureOptions,
}

impl Base<'_> {
    fn entry_len(&self) -> usize {
        4 + self.opts.crypto_hash_size as usize
    }

    /// Whole base blocks that are known to be full length: all but the
    /// last, which may be short (its entry is then a shorter block's).
    fn full_blocks(&self) -> u64 {
        (self.entries.len() / self.entry_len()).saturating_sub(1) as u64
    }

    /// The base's entry for block `g`, if that block is full length.
    fn entry(&self, g: u64) -> Option<&[u8]> {
        if g >= self.full_blocks() {
            return None;
        }
        let e = self.entry_len();
        let at = usize::try_from(g).ok()?.checked_mul(e)?;
        self.entries.get(at..at.checked_add(e)?)
    }

    /// Entry `j` of a window signature's body.
    fn own<'s>(&self, body: &'s [u8], j: usize) -> &'s [u8] {
        let e = self.entry_len();
        &body[j * e..(j + 1) * e]
    }

    /// Whether full block `j` of `window` (at new-file offset `pos`) equals
    /// the base's block at the same offset, hashed on its own.
    fn probe(&self, pos: u64, window: &[u8], j: usize) -> bool {
        let b = self.opts.block_size as usize;
        let Some(want) = self.entry(pos / b as u64 + j as u64) else {
            return false;
        };
        let sig = Signature::calculate(&window[j * b..(j + 1) * b], self.opts);
        sig.serialized().get(HEADER..) == Some(want)
    }
}

/// Header of a serialized signature (magic, block size, strong length).
const HEADER: usize = 12;

/// One delta segment for `window`, the new file's bytes at `pos` (a
/// multiple of the block size), into `out`.
pub(super) fn diff_at(
    base: &Base<'_>,
    pos: u64,
    window: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DeltaError> {
    out.clear();
    let b = base.opts.block_size as usize;
    let full = window.len() / b;
    // Only in-place candidates are worth hashing whole: probe the window's
    // first and last blocks, else it is an ordinary rolling diff.
    if !pos.is_multiple_of(b as u64)
        || full == 0
        || !(base.probe(pos, window, 0) || base.probe(pos, window, full - 1))
    {
        return plain(base, window, out);
    }
    let sig = Signature::calculate(&window[..full * b], base.opts);
    let body = &sig.serialized()[HEADER..];
    let same = |j: usize| base.entry(pos / b as u64 + j as u64) == Some(base.own(body, j));
    out.extend_from_slice(&DELTA_MAGIC.to_be_bytes());
    let mut j = 0;
    let mut part = Vec::new();
    while j < full {
        let start = j;
        let matched = same(j);
        while j < full && same(j) == matched {
            j += 1;
        }
        if matched {
            copy_command(pos + (start * b) as u64, ((j - start) * b) as u64, out);
        } else {
            // A partial last block joins the unmatched run before it.
            let end = if j == full { window.len() } else { j * b };
            body_of(base, &window[start * b..end], &mut part, out)?;
        }
    }
    if full * b < window.len() && same(full - 1) {
        body_of(base, &window[full * b..], &mut part, out)?;
    }
    out.push(0); // END
    Ok(())
}

fn plain(base: &Base<'_>, window: &[u8], out: &mut Vec<u8>) -> Result<(), DeltaError> {
    fast_rsync::diff(base.ix, window, out).map_err(|e| DeltaError::Diff(e.to_string()))
}

/// The rolling diff of `data`, its commands (without magic and END)
/// appended to `out`.
fn body_of(
    base: &Base<'_>,
    data: &[u8],
    part: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), DeltaError> {
    part.clear();
    plain(base, data, part)?;
    match part.get(4..part.len().saturating_sub(1)) {
        Some(cmds) if part.last() == Some(&0) => {
            out.extend_from_slice(cmds);
            Ok(())
        }
        _ => Err(DeltaError::Diff("unexpected delta framing".into())),
    }
}

/// A COPY command in the librsync format: opcode 0x45 + 4 × (offset width
/// class) + (length width class), then both big-endian.
fn copy_command(offset: u64, len: u64, out: &mut Vec<u8>) {
    fn class(v: u64) -> u8 {
        match v {
            0..=0xff => 0,
            0x100..=0xffff => 1,
            0x1_0000..=0xffff_ffff => 2,
            _ => 3,
        }
    }
    let (co, cl) = (class(offset), class(len));
    out.push(0x45 + co * 4 + cl);
    for (v, c) in [(offset, co), (len, cl)] {
        out.extend_from_slice(&v.to_be_bytes()[8 - (1 << c)..]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{apply_segment, options_for, signature, Differ};
    use syncd_testkit::rng::Rng;

    /// Diffs `new` window by window with `diff_at`, applies the segments to
    /// `base`, checks the result, and returns the segments.
    fn through(base: &[u8], new: &[u8]) -> Vec<Vec<u8>> {
        let (block, strong) = options_for(base.len() as u64);
        let d = Differ::new(signature(base, base.len() as u64, block, strong).unwrap()).unwrap();
        let ix = d.indexed();
        let (mut out, mut segs) = (Vec::new(), Vec::new());
        for (i, w) in new.chunks(d.window()).enumerate() {
            let mut seg = Vec::new();
            ix.diff_at((i * d.window()) as u64, w, &mut seg).unwrap();
            apply_segment(base, &seg, &mut out, w.len()).unwrap();
            segs.push(seg);
        }
        assert!(out == new, "round trip differs");
        segs
    }

    fn plain_len(base: &[u8], new: &[u8]) -> usize {
        let (block, strong) = options_for(base.len() as u64);
        let d = Differ::new(signature(base, base.len() as u64, block, strong).unwrap()).unwrap();
        let ix = d.indexed();
        let mut seg = Vec::new();
        new.chunks(d.window())
            .map(|w| {
                ix.diff(w, &mut seg).unwrap();
                seg.len()
            })
            .sum()
    }

    #[test]
    fn in_place_edits_round_trip_no_bigger_than_the_rolling_diff() {
        let base = Rng(21).bytes(9 * (1 << 20) + 4567);
        let mut new = base.clone();
        // Edits at window starts, ends, across a window edge, a block's
        // middle, and the short last block.
        for (at, n) in [
            (0, 100),
            (super::super::WINDOW - 50, 100),
            (5 << 20, 70_000),
            ((7 << 20) + 3, 1),
            (base.len() - 10, 10),
        ] {
            new[at..at + n].copy_from_slice(&Rng(at as u64 | 1).bytes(n));
        }
        let segs = through(&base, &new);
        let ours: usize = segs.iter().map(Vec::len).sum();
        assert!(ours <= plain_len(&base, &new) + 64, "{ours}");
        assert!(ours < 200 << 10, "{ours}");
        // An untouched window is one copy of itself.
        let same = through(&base, &base);
        assert!(same.iter().take(2).all(|s| s.len() <= 16), "{:?}", same[0]);
    }

    /// Blocks that repeat in the base: the rolling diff points every one at
    /// the same base block (one command each); in place, one copy.
    #[test]
    fn repeated_blocks_stay_one_copy_in_place() {
        let base = vec![0u8; 3 << 20];
        let segs = through(&base, &base);
        let ours: usize = segs.iter().map(Vec::len).sum();
        // (The base's last block, which may be short, is left to the
        // rolling diff: a second command.)
        assert!(ours <= 32, "{ours}");
        assert!(plain_len(&base, &base) > 1000);
    }

    #[test]
    fn moved_truncated_grown_and_foreign_data_still_diff() {
        let base = Rng(22).bytes(6 * (1 << 20) + 99);
        // Inserted bytes shift everything after them off the base's offsets.
        let mut shifted = base.clone();
        shifted.splice(3 << 20..3 << 20, Rng(3).bytes(777));
        let segs = through(&base, &shifted);
        assert!(segs.iter().map(Vec::len).sum::<usize>() < 64 << 10);
        // A base shorter or longer than the new file, or unrelated to it.
        through(&base[..(2 << 20) + 5], &base);
        through(&base, &base[..(2 << 20) + 5]);
        let other = Rng(23).bytes(5 << 20);
        let segs = through(&base, &other);
        assert!(segs.iter().map(Vec::len).sum::<usize>() > 5 << 20);
        through(&base, &[]);
        through(&[], &other[..5000]);
    }

    #[test]
    fn windows_off_block_boundaries_fall_back() {
        let base = Rng(24).bytes(3 << 20);
        let (block, strong) = options_for(base.len() as u64);
        let d =
            Differ::new(signature(&base[..], base.len() as u64, block, strong).unwrap()).unwrap();
        let ix = d.indexed();
        let (mut a, mut b, mut out) = (Vec::new(), Vec::new(), Vec::new());
        let w = &base[5..(1 << 20) + 5];
        ix.diff_at(5, w, &mut a).unwrap();
        ix.diff(w, &mut b).unwrap();
        assert_eq!(a, b);
        apply_segment(&base, &a, &mut out, w.len()).unwrap();
        assert_eq!(out, w);
    }
}
