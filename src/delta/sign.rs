//! Block signatures: built from a stream (what the standby writes), or from
//! a file on several cores. A signature's block entries are independent of
//! each other, so per-window signatures concatenate to the one-shot one.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use fast_rsync::{Signature, SignatureOptions};

use super::{check_options, DeltaError, WINDOW};

/// Every signature starts with this much header (magic, block, strong).
const HEADER: usize = 12;

/// Helper threads for signing, process-wide. Each call signs on its own
/// thread plus the helpers it can take here, so however many lanes sign at
/// once (a peer asks for as many signatures as it likes), at most this many
/// more windows ([`WINDOW`] bytes each) are in memory.
static HELPERS: Permits = Permits::new(4);

/// A counting pool taken from without waiting: a caller gets what is free.
struct Permits(AtomicUsize);

/// Permits taken from a [`Permits`]; given back on drop.
struct Taken<'a> {
    pool: &'a Permits,
    n: usize,
}

impl Permits {
    const fn new(n: usize) -> Permits {
        Permits(AtomicUsize::new(n))
    }

    /// Up to `want` permits, as many as are free now (maybe none).
    fn take(&self, want: usize) -> Taken<'_> {
        let mut free = self.0.load(Ordering::Relaxed);
        loop {
            let n = free.min(want);
            match self
                .0
                .compare_exchange_weak(free, free - n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Taken { pool: self, n },
                Err(now) => free = now,
            }
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.pool.0.fetch_add(self.n, Ordering::AcqRel);
    }
}

fn window_for(block: u32) -> usize {
    (WINDOW / block as usize).max(1) * block as usize
}

/// Builds a signature from data as it streams past (e.g. while the standby
/// writes a file), one window at a time.
pub struct SigBuilder {
    opts: SignatureOptions,
    pub(super) win: usize,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl SigBuilder {
    pub fn new(block: u32, strong: u32, size: u64) -> Result<SigBuilder, DeltaError> {
        check_options(block, strong, size)?;
        Ok(SigBuilder {
            opts: SignatureOptions {
                block_size: block,
                crypto_hash_size: strong,
            },
            win: window_for(block),
            buf: Vec::new(),
            out: Vec::new(),
        })
    }

    fn emit(&mut self) {
        let sig = Signature::calculate(&self.buf, self.opts);
        let bytes = sig.serialized();
        // Every window's signature starts with the same header; keep the first.
        self.out.extend_from_slice(if self.out.is_empty() {
            bytes
        } else {
            &bytes[HEADER..]
        });
        self.buf.clear();
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let k = (self.win - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.buf.len() == self.win {
                self.emit();
            }
        }
    }

    /// Bytes of one block entry.
    pub fn entry_len(&self) -> usize {
        4 + self.opts.crypto_hash_size as usize
    }

    pub fn block(&self) -> u32 {
        self.opts.block_size
    }

    /// Whether the data so far ends on a block boundary.
    pub fn aligned(&self) -> bool {
        self.buf.len().is_multiple_of(self.opts.block_size as usize)
    }

    /// Appends the entries of whole blocks whose signature is already known
    /// (blocks copied unchanged from a base signed with the same options),
    /// so they are not hashed again. Only at a block boundary: `false` (and
    /// nothing appended) elsewhere or for entries that are not whole.
    pub fn known(&mut self, entries: &[u8]) -> bool {
        if !self.aligned() || !entries.len().is_multiple_of(self.entry_len()) {
            return false;
        }
        if !self.buf.is_empty() || self.out.is_empty() {
            self.emit();
        }
        self.out.extend_from_slice(entries);
        true
    }

    /// Feeds `data`, the bytes at `offset` of a base whose block entries
    /// (same options) are `base`: whole blocks that start on a block
    /// boundary in both take the base's entry instead of being hashed.
    pub fn copied(&mut self, base: Option<&[u8]>, offset: u64, data: &[u8]) {
        let (b, e) = (self.opts.block_size as usize, self.entry_len());
        let whole = data.len() / b;
        if let Some(base) = base.filter(|_| whole > 0 && offset.is_multiple_of(b as u64)) {
            let first = usize::try_from(offset / b as u64).unwrap_or(usize::MAX);
            let range = first
                .checked_mul(e)
                .and_then(|s| Some(s..s.checked_add(whole.checked_mul(e)?)?));
            if let Some(known) = range.and_then(|r| base.get(r)) {
                if self.known(known) {
                    self.update(&data[whole * b..]);
                    return;
                }
            }
        }
        self.update(data)
    }

    pub fn finish(mut self) -> Vec<u8> {
        if !self.buf.is_empty() || self.out.is_empty() {
            self.emit();
        }
        self.out
    }
}

/// The block entries of a serialized signature, checked against the
/// options they are to be reused with.
pub fn entries(sig: &[u8], block: u32, strong: u32) -> Option<&[u8]> {
    let head = sig.get(..HEADER)?;
    let want = Signature::calculate(
        &[],
        SignatureOptions {
            block_size: block,
            crypto_hash_size: strong,
        },
    );
    let body = &sig[HEADER..];
    (head == want.serialized() && body.len().is_multiple_of(4 + strong as usize)).then_some(body)
}

/// Signature of the first `size` bytes of `file`, its windows read with
/// `pread` and signed on up to `threads` threads at once (memory: one
/// window per thread; the threads beyond the caller's come from the
/// process-wide [`HELPERS`]). A file shorter than `size` is an error.
pub fn signature_file(
    file: &std::fs::File,
    size: u64,
    block: u32,
    strong: u32,
    threads: usize,
) -> Result<Vec<u8>, DeltaError> {
    check_options(block, strong, size)?;
    let opts = SignatureOptions {
        block_size: block,
        crypto_hash_size: strong,
    };
    let win = window_for(block) as u64;
    let n = size.div_ceil(win).max(1);
    let next = AtomicU64::new(0);
    let parts: Mutex<Vec<(u64, Vec<u8>)>> = Mutex::new(Vec::new());
    let worker = || -> Result<(), DeltaError> {
        let mut buf = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(());
            }
            let len = (size - (i * win).min(size)).min(win) as usize;
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, i * win)?;
            let sig = Signature::calculate(&buf, opts).into_serialized();
            let body = sig[HEADER..].to_vec();
            parts.lock().map_err(|_| poisoned())?.push((i, body));
        }
    };
    let threads = threads.clamp(1, n.min(64) as usize);
    let helpers = HELPERS.take(threads - 1);
    let results: Vec<Result<(), DeltaError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..helpers.n).map(|_| sc.spawn(worker)).collect();
        let mut rs = vec![worker()];
        for h in hs {
            // A panicking worker is an error, not a panic here.
            rs.push(h.join().unwrap_or_else(|_| Err(poisoned())));
        }
        rs
    });
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    let mut parts = parts.into_inner().map_err(|_| poisoned())?;
    parts.sort_unstable_by_key(|p| p.0);
    let mut out = Signature::calculate(&[], opts).into_serialized();
    for (_, body) in parts {
        out.extend_from_slice(&body);
    }
    Ok(out)
}

fn poisoned() -> DeltaError {
    DeltaError::Io(std::io::Error::other("signature worker panicked"))
}

#[cfg(test)]
mod tests {
    use super::super::{options_for, signature};
    use super::*;
    use syncd_testkit::rng::Rng;

    #[test]
    fn parallel_windows_concatenate_to_the_one_pass_signature() {
        let d = tempfile::tempdir().unwrap();
        // Sizes around window and block edges, and empty.
        for (i, size) in [0, 1, 1000, WINDOW, WINDOW + 1, 3 * WINDOW + 12345]
            .into_iter()
            .enumerate()
        {
            let data = Rng((i as u64 + 7) | 1).bytes(size);
            let p = d.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            for (b, s) in [options_for(size as u64), (1024, 4), (4096, 16)] {
                let one = Signature::calculate(
                    &data,
                    SignatureOptions {
                        block_size: b,
                        crypto_hash_size: s,
                    },
                );
                for threads in [1, 2, 3, 8] {
                    let par = signature_file(&f, size as u64, b, s, threads).unwrap();
                    assert_eq!(
                        par,
                        one.serialized(),
                        "size {size} block {b} threads {threads}"
                    );
                }
                assert_eq!(
                    signature(&data[..], size as u64, b, s).unwrap(),
                    one.serialized()
                );
            }
        }
    }

    #[test]
    fn helpers_are_shared_out_never_beyond_the_pool() {
        let pool = Permits::new(4);
        let a = pool.take(3);
        let b = pool.take(3);
        let c = pool.take(3);
        assert_eq!((a.n, b.n, c.n), (3, 1, 0));
        drop(a);
        assert_eq!(pool.take(5).n, 3);
        drop((b, c));
        assert_eq!(pool.take(9).n, 4);
    }

    #[test]
    fn a_file_shorter_than_announced_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, Rng(1).bytes(10_000)).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert!(signature_file(&f, 20_000, 1024, 8, 2).is_err());
        assert!(signature_file(&f, 10_000, 1, 8, 2).is_err()); // bad options
    }

    /// The output of a delta, fed as literals and copies with the base's
    /// entries, signs to exactly what hashing every byte gives.
    #[test]
    fn reused_base_entries_equal_hashing_the_output() {
        let b = 1024u32;
        let s = 6u32;
        let base = Rng(3).bytes(5 * WINDOW + 300);
        let base_sig = signature(&base[..], base.len() as u64, b, s).unwrap();
        let ents = entries(&base_sig, b, s).unwrap();
        assert!(entries(&base_sig, 2048, s).is_none());
        assert!(entries(&base_sig, b, 8).is_none());
        assert!(entries(&base_sig[..5], b, s).is_none());
        // (kind, base offset or literal seed, length): aligned and
        // unaligned copies, chunks smaller and larger than a window, the
        // base's short last block, literals that shift alignment.
        let plan: &[(bool, usize, usize)] = &[
            (true, 0, 3 * WINDOW),
            (false, 1, 100),
            (true, 4096, 8192),
            (false, 2, 924),
            (true, 2048, 5000),
            (true, 7, 3000),
            (true, 5 * WINDOW - 724, 1024),
            (true, 5 * WINDOW, 300),
            (true, WINDOW, 2 * WINDOW + 77),
        ];
        let run = |ents: &[u8]| {
            let mut out = Vec::new();
            let mut sb = SigBuilder::new(b, s, 64 << 20).unwrap();
            for &(copy, x, len) in plan {
                if copy {
                    let data = &base[x..x + len];
                    // In pieces, as the applier reads them.
                    for (k, piece) in data.chunks(1 << 20).enumerate() {
                        sb.copied(Some(ents), (x + k * (1 << 20)) as u64, piece);
                    }
                    out.extend_from_slice(data);
                } else {
                    let lit = Rng(x as u64 | 1).bytes(len);
                    sb.update(&lit);
                    out.extend_from_slice(&lit);
                }
            }
            (sb.finish(), out)
        };
        let (got, out) = run(ents);
        let want = signature(&out[..], out.len() as u64, b, s).unwrap();
        assert_eq!(got, want);
        // The entries are really taken, not recomputed: wrong ones show.
        assert_ne!(run(&vec![0u8; ents.len()]).0, want);
        // Entries the base does not have (past its end) are hashed.
        let mut sb = SigBuilder::new(b, s, 1 << 20).unwrap();
        sb.copied(Some(&ents[..10]), 4096, &base[4096..6144]);
        assert_eq!(
            sb.finish(),
            signature(&base[4096..6144], 2048, b, s).unwrap()
        );
    }
}
