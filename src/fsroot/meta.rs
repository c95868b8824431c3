//! Owners, modes and times as the standby applies them, through
//! descriptors, never by name.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};

use crate::meta_policy::MetaPolicy;
use crate::wire::Meta;

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

pub(super) fn times(m: &Meta) -> Timestamps {
    let t = ts(m.mtime_sec, m.mtime_nsec);
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Applies owner, mode and mtime, as `policy` maps them, to the inode
/// behind an `O_PATH` descriptor, never by name.
pub(super) fn apply_meta(
    fd: &OwnedFd,
    ft: rustix::fs::FileType,
    meta: &Meta,
    policy: &MetaPolicy,
) -> io::Result<()> {
    if let Some((u, g)) = policy.owner(meta) {
        rustix::fs::chownat(fd, "", Some(uid(u)), Some(gid(g)), AtFlags::EMPTY_PATH)?;
    }
    // Symlinks have no mode of their own. Otherwise chmod through the
    // descriptor's /proc entry, which names this inode, not a path
    // (fchmod refuses O_PATH descriptors; fchmodat2 is Linux 6.6+).
    if ft != rustix::fs::FileType::Symlink {
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc_path.as_str(),
            Mode::from_raw_mode(policy.mode(meta.mode, ft == rustix::fs::FileType::RegularFile)),
            AtFlags::empty(),
        )?;
    }
    rustix::fs::utimensat(fd, "", &times(meta), AtFlags::EMPTY_PATH)?;
    Ok(())
}

pub(super) fn uid(u: u32) -> rustix::fs::Uid {
    // SAFETY-free: from_raw is unsafe only because it may name any uid, which is our intent.
    unsafe { rustix::fs::Uid::from_raw(u) }
}

pub(super) fn gid(g: u32) -> rustix::fs::Gid {
    unsafe { rustix::fs::Gid::from_raw(g) }
}
