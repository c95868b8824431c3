//! What later releases append after the `Request` of a Hello frame and the
//! `Reply` of a Welcome frame; older releases decode the message and ignore
//! the bytes after it.

use super::{Reply, Request, Speaks};
use crate::meta_policy::MetaPolicy;

/// The standby's [`MetaPolicy`] from a `Welcome` frame, where it follows
/// the `Reply` (the standby writes the pair `(Welcome, MetaPolicy)`).
/// Protocol 7 without a version bump: a primary that predates it decodes
/// the `Welcome` and ignores the bytes after it (postcard's `from_bytes`),
/// and a standby that predates it sends none, which is `Ok(None)` here (it
/// preserves owners and modes, as root). Anything after the policy is left
/// for later extensions.
pub fn welcome_policy(frame: &[u8]) -> Result<Option<MetaPolicy>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Reply>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<MetaPolicy>(rest)?.0))
}

/// The versions the sender of a `Hello` frame speaks, where they follow the
/// `Request` (the pair `(Hello, Speaks)`); `None` from a release that
/// predates ranges (it speaks only the Hello's `version`). A standby that
/// predates them ignores the bytes, as it does after a `Welcome`.
pub fn hello_speaks(frame: &[u8]) -> Result<Option<Speaks>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Request>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<Speaks>(rest)?.0))
}

/// The versions the standby speaks, after the policy in a `Welcome` frame
/// (the triple `(Welcome, MetaPolicy, Speaks)`); `None` from a release that
/// predates ranges.
pub fn welcome_speaks(frame: &[u8]) -> Result<Option<Speaks>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Reply>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    let (_, rest) = postcard::take_from_bytes::<MetaPolicy>(rest)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<Speaks>(rest)?.0))
}
