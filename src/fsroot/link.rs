//! Giving an unnamed (`O_TMPFILE`) file its name, in as few path walks as
//! the process's privileges allow.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::AtFlags;
use rustix::io::Errno;

/// Whether `linkat(fd, "", …, AT_EMPTY_PATH)` works here: it needs
/// CAP_DAC_READ_SEARCH, and without it fails with `ENOENT`. Learnt on the
/// first link and kept.
#[derive(Default)]
pub(super) struct EmptyPathLink(AtomicU8);

const UNKNOWN: u8 = 0;
const WORKS: u8 = 1;
const REFUSED: u8 = 2;

impl EmptyPathLink {
    /// Links `file` as `name` in `dir`: straight from the descriptor when
    /// allowed, else through `/proc/self/fd/N` (which makes the kernel walk
    /// procfs and follow a magic link, per file).
    pub(super) fn link(
        &self,
        file: &File,
        dir: &impl AsFd,
        name: &std::ffi::OsStr,
    ) -> rustix::io::Result<()> {
        if self.0.load(Ordering::Relaxed) != REFUSED {
            match rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH) {
                Ok(()) => {
                    self.0.store(WORKS, Ordering::Relaxed);
                    return Ok(());
                }
                // Refused for lack of the capability, or a directory
                // removed meanwhile: the other way tells which.
                Err(Errno::NOENT) | Err(Errno::PERM)
                    if self.0.load(Ordering::Relaxed) == UNKNOWN =>
                {
                    let r = via_proc(file, dir, name);
                    if r.is_ok() {
                        tracing::debug!("linkat(AT_EMPTY_PATH) refused; linking through /proc");
                        self.0.store(REFUSED, Ordering::Relaxed);
                    }
                    return r;
                }
                Err(e) => return Err(e),
            }
        }
        via_proc(file, dir, name)
    }

    #[cfg(test)]
    pub(super) fn refuse(&self) {
        self.0.store(REFUSED, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn works(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WORKS
    }
}

fn via_proc(file: &File, dir: &impl AsFd, name: &std::ffi::OsStr) -> rustix::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
}
