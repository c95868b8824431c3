//! Room on the export for files in flight: each is counted per connection
//! and its declared size reserved until written, so a peer cannot promise
//! more than the filesystem holds.

use std::sync::atomic::{AtomicU64, Ordering};

use super::stage::InFlightCount;
use super::Shared;

/// Free space kept on the export's filesystem: a declared size must fit in
/// what is free less this (1% of the filesystem, at most 256 MiB).
fn space_margin(total: u64) -> u64 {
    (total / 100).min(256 << 20)
}

/// One file in flight: counted against the connection's
/// [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT), and its declared size not yet
/// written reserved in `Shared::reserved`.
pub(super) struct Slot<'r> {
    count: InFlightCount,
    reserved: &'r AtomicU64,
    left: u64,
}

impl Slot<'_> {
    /// `n` more bytes written: they are on disk now, no longer a promise.
    pub(super) fn wrote(&mut self, n: u64) {
        let n = n.min(self.left);
        self.left -= n;
        self.reserved.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.left, Ordering::AcqRel);
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a slot for a file of `size` bytes, or says why not: too many files
/// in flight on the connection is fatal to the session (`Err(true, ..)`);
/// no room for this file fails only the file.
pub(super) fn begin_slot<'r>(
    sh: &'r Shared,
    count: &InFlightCount,
    size: u64,
) -> Result<Slot<'r>, (bool, String)> {
    let max = super::MAX_IN_FLIGHT;
    if count.fetch_add(1, Ordering::AcqRel) >= max {
        count.fetch_sub(1, Ordering::AcqRel);
        return Err((
            true,
            format!("too many files in flight: more than {max} begun without FileEnd"),
        ));
    }
    // From here the slot releases the count on any error.
    let mut slot = Slot {
        count: count.clone(),
        reserved: &sh.reserved,
        left: 0,
    };
    let vfs = sh
        .root
        .statvfs()
        .map_err(|e| (false, format!("cannot check free space on the export: {e}")))?;
    let frsize = vfs.f_frsize.max(1);
    let free = vfs.f_bavail.saturating_mul(frsize);
    let margin = space_margin(vfs.f_blocks.saturating_mul(frsize));
    let promised = sh.reserved.fetch_add(size, Ordering::AcqRel);
    slot.left = size;
    if size.saturating_add(promised).saturating_add(margin) > free {
        return Err((
            false,
            format!(
                "declared size of {size} bytes does not fit: {free} bytes free on the export's filesystem, \
                 {promised} promised to other files in flight, {margin} kept free \
                 (No space left on device); not staged"
            ),
        ));
    }
    Ok(slot)
}
