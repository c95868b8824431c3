//! A lane's files: a signature for a delta's base, then begin, data or
//! delta segments, and the end's content check.

use std::io::{BufWriter, Write};

use super::{Lane, Work};
use crate::delta;
use crate::fsroot::Staged;
use crate::index::Stamp;
use crate::standby::commit::{self, Verified};
use crate::standby::room::{begin_slot, Slot};
use crate::standby::Shared;
use crate::wire::{self, Encoding, Meta, Reply};
use syncd_proto::path::RelPath;
use syncd_proto::receiver::content_check;

pub(super) struct InFlight<'r> {
    /// Released (count and reserved room) when the file is ended or dropped.
    slot: Slot<'r>,
    path: RelPath,
    meta: Meta,
    size: u64,
    written: u64,
    out: BufWriter<HashingFile<'r>>,
    /// For large files, the block signature of the content, kept for
    /// the next delta against it.
    sig: Option<(u32, u32, delta::SigBuilder)>,
    base: Option<std::fs::File>,
    /// The base's block entries when cached with the same options: blocks
    /// a delta copies unchanged take their entry instead of being hashed.
    base_sig: Option<Vec<u8>>,
    /// Write-back errors counted before its first byte was written.
    wb_errors: u64,
}

/// The staged file, with BLAKE3 computed over exactly the bytes written.
struct HashingFile<'r> {
    staged: Staged<'r>,
    hasher: blake3::Hasher,
}

/// Writes from this size up are hashed on a second thread while the
/// write runs: the copy into the page cache and BLAKE3 are each about as
/// long, and a large delta's apply is one lane's serial work.
const HASH_BESIDE: usize = 256 << 10;

impl Write for HashingFile<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() < HASH_BESIDE {
            let n = self.staged.file.write(b)?;
            self.hasher.update(&b[..n]);
            return Ok(n);
        }
        // All of `b` is written or the write fails (and with it the file),
        // so hashing all of it beside the write is exact.
        let (file, hasher) = (&mut self.staged.file, &mut self.hasher);
        let (written, hashed) = std::thread::scope(|sc| {
            let beside = std::thread::Builder::new().spawn_scoped(sc, || {
                hasher.update(b);
            });
            let w = file.write_all(b);
            // A panicked hash is an error, not a panic here.
            let hashed = beside.map(|h| h.join().is_ok());
            (w, hashed)
        });
        match hashed {
            Ok(true) => {}
            Ok(false) => return Err(std::io::Error::other("hash thread panicked")),
            // No thread to spare: hash here, after the write.
            Err(_) => {
                self.hasher.update(b);
            }
        }
        written.map(|()| b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.staged.file.flush()
    }
}

impl Lane {
    pub(super) fn signature(&self, id: u64, path: &RelPath, block_size: u32, strong_len: u32) {
        let sh = &self.sh;
        let sig = sh.root.open_file(path).and_then(|f| {
            let m = f.metadata()?;
            let stamp = Stamp::of(&m);
            if let Some(cached) = sh.sigs.get(path, &stamp, block_size, strong_len) {
                return Ok(cached);
            }
            // Cores: the primary waits for this before it can diff. One
            // window in memory per lane, plus the process-wide helpers'.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            let sig = delta::signature_file(&f, m.len(), block_size, strong_len, threads)
                .map_err(std::io::Error::other)?;
            sh.sigs.put(path, &stamp, block_size, strong_len, &sig);
            Ok(sig)
        });
        let _ = self.reply.blocking_send(match sig {
            Ok(data) => Reply::Signature { id, data },
            Err(_) => Reply::NoSignature { id },
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn begin<'r>(
        &self,
        sh: &'r Shared,
        w: &mut Work<'r>,
        id: u64,
        path: RelPath,
        meta: Meta,
        size: u64,
        encoding: Encoding,
    ) -> Result<(), ()> {
        let wb_errors = sh.wb_errors.load(std::sync::atomic::Ordering::SeqCst);
        let slot = match begin_slot(sh, &self.in_flight, size) {
            Ok(s) => s,
            Err((true, reason)) => {
                // Fatal: this worker stops (its files in flight are
                // dropped, staging removed) and the session ends.
                tracing::error!("{reason}; ending the session");
                let _ = self.reply.blocking_send(Reply::Fatal { reason });
                return Err(());
            }
            Err((false, e)) => {
                self.fail(&path, e, false);
                return Ok(());
            }
        };
        let base = match encoding {
            Encoding::Whole => None,
            Encoding::Delta => match sh.root.open_file(&path) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.fail(&path, format!("delta base unavailable: {e}"), true);
                    return Ok(());
                }
            },
        };
        let staged = match sh.root.stage_for(&path) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&path, format!("staging: {e}"), false);
                return Ok(());
            }
        };
        let sig = (size >= sh.sig_min).then(|| {
            let (b, st) = delta::options_for(size);
            delta::SigBuilder::new(b, st, size)
                .ok()
                .map(|sb| (b, st, sb))
        });
        let sig = sig.flatten();
        let base_sig = match (&base, &sig) {
            (Some(f), Some((b, st, _))) => f.metadata().ok().and_then(|m| {
                let cached = sh.sigs.get(&path, &Stamp::of(&m), *b, *st)?;
                delta::entries(&cached, *b, *st).map(<[u8]>::to_vec)
            }),
            _ => None,
        };
        let hf = HashingFile {
            staged,
            hasher: blake3::Hasher::new(),
        };
        // Whole files arrive in big chunks; only delta output is fragmented.
        let out = BufWriter::with_capacity(if base.is_some() { 1 << 20 } else { 0 }, hf);
        let f = InFlight {
            slot,
            path,
            meta,
            size,
            written: 0,
            out,
            sig,
            base,
            base_sig,
            wb_errors,
        };
        w.inflight.insert(id, f);
        Ok(())
    }

    /// Whole-file bytes; the Receiver has checked they fit the announced size.
    pub(super) fn data(&self, w: &mut Work<'_>, id: u64, data: &[u8]) {
        let Some(f) = w.inflight.get_mut(&id) else {
            return; // failed at its begin, already reported
        };
        f.written += data.len() as u64;
        f.slot.wrote(data.len() as u64);
        if let Some((_, _, sb)) = &mut f.sig {
            sb.update(data);
        }
        if let Err(e) = f.out.write_all(data) {
            if let Some(f) = w.inflight.remove(&id) {
                self.fail(&f.path, format!("write: {e}"), false);
            }
        }
    }

    pub(super) fn delta(&self, w: &mut Work<'_>, id: u64, data: &[u8]) {
        let Some(f) = w.inflight.get_mut(&id) else {
            return;
        };
        let limit = f.size.saturating_sub(f.written);
        let r = match &f.base {
            Some(base) => {
                let mut to = Output {
                    out: &mut f.out,
                    sig: f.sig.as_mut().map(|(_, _, sb)| sb),
                    base_sig: f.base_sig.as_deref(),
                };
                delta::apply_segment_to(base, data, &mut to, limit, &mut w.copy_buf)
            }
            None => Err(delta::DeltaError::Apply(
                "delta for a file announced whole".into(),
            )),
        };
        match r {
            Ok(n) => {
                f.written += n;
                f.slot.wrote(n);
            }
            Err(e) => {
                if let Some(f) = w.inflight.remove(&id) {
                    self.fail(&f.path, format!("{e}"), true);
                }
            }
        }
    }

    /// The content check; a file that passes waits for its batch. `Err`:
    /// the session ends (see `Lane::wait_committed`).
    pub(super) fn end(&self, w: &mut Work<'_>, id: u64, hash: wire::Hash) -> Result<(), ()> {
        let Some(f) = w.inflight.remove(&id) else {
            return Ok(());
        };
        let hf = match f.out.into_inner() {
            Ok(h) => h,
            Err(e) => {
                self.fail(&f.path, format!("write: {}", e.error()), false);
                return Ok(());
            }
        };
        let got = *hf.hasher.finalize().as_bytes();
        if let Err(e) = content_check(f.size, f.written, &hash, &got) {
            self.fail(&f.path, e, true);
            return Ok(());
        }
        w.pending_bytes += f.size;
        w.pending.push(Verified {
            staged: hf.staged,
            path: f.path,
            meta: f.meta,
            hash,
            sig: f.sig.map(|(b, st, sb)| (b, st, sb.finish())),
            base: f.base,
            wb_errors: f.wb_errors,
        });
        if w.pending.len() >= self.batch_max || w.pending_bytes >= commit::BATCH_BYTES {
            return self.commit_full(w);
        }
        Ok(())
    }
}

/// A delta's output: into the staged file, and into the new signature,
/// which takes the base's entries for blocks copied whole.
struct Output<'a, 'r> {
    out: &'a mut BufWriter<HashingFile<'r>>,
    sig: Option<&'a mut delta::SigBuilder>,
    base_sig: Option<&'a [u8]>,
}

impl delta::ApplyOut for Output<'_, '_> {
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        if let Some(sb) = &mut self.sig {
            sb.update(data);
        }
        self.out.write_all(data)
    }

    fn copied(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(sb) = &mut self.sig {
            sb.copied(self.base_sig, offset, data);
        }
        self.out.write_all(data)
    }
}
