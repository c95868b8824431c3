//! Protocol versions: which ones this release speaks, what each one
//! carries, and which one a session uses.
//!
//! A release speaks its own version and the one before ([`OLDEST`]..=
//! [`CURRENT`]), so a pair upgrades one node at a time. Each side says the
//! range it speaks; a session uses the highest version both speak. This is
//! the one place that says what a version supports: the shells translate at
//! the boundary from what [`Features`] says, never from version numbers.

use serde::{Deserialize, Serialize};

/// The version this release prefers (bumped on any incompatible change).
pub const CURRENT: u32 = 8;
/// The oldest version this release still speaks. 8 only adds messages at
/// the end of 7's (`Digests`, [`Features::digests`]), so this release keeps
/// speaking 6 too: no release of 7 alone was ever the previous one.
pub const OLDEST: u32 = 6;

/// The versions a node speaks, inclusive. Travels after the Hello and after
/// the Welcome (in the same frame: releases that predate it ignore it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speaks {
    pub min: u32,
    pub max: u32,
}

impl Speaks {
    /// What this release speaks.
    pub const OURS: Speaks = Speaks {
        min: OLDEST,
        max: CURRENT,
    };

    /// A node that predates ranges speaks exactly the version it sent.
    pub fn only(v: u32) -> Speaks {
        Speaks { min: v, max: v }
    }

    pub fn contains(&self, v: u32) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

impl std::fmt::Display for Speaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// What a session of a given version carries, where versions differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The primary says when the catch-up is complete (`CaughtUp`). Without
    /// it (6) the standby takes the primary's generation at the first
    /// durable commit (or `Finish`), as version 6 did.
    pub caught_up: bool,
    /// The standby may report failures only as a number
    /// (`FailuresDropped`). Without it the session ends instead, and the
    /// primary's reconnect compares the whole tree, which retries them.
    pub failures_dropped: bool,
    /// Request variant indexes: version 6 lacks `CaughtUp` (18), so its peer
    /// messages (`PeerState`, `Ask`, `Answer`) sit one lower.
    pub caught_up_variant: bool,
    /// A `--role auto` node may take the lead while its peer speaks this
    /// version. Not beside 6: its follower takes a generation at the first
    /// commit, before the catch-up is complete, so its data cannot be judged.
    pub may_lead_beside: bool,
    /// A full compare asks for directory digests (`Request::Digests`)
    /// before any listing, and lists only what differs. Without it (6, 7)
    /// the standby sends its whole manifest.
    pub digests: bool,
}

/// What version `v` supports; `None` for a version this release does not speak.
pub fn features(v: u32) -> Option<Features> {
    match v {
        6 => Some(Features {
            caught_up: false,
            failures_dropped: false,
            caught_up_variant: false,
            may_lead_beside: false,
            digests: false,
        }),
        7 | 8 => Some(Features {
            caught_up: true,
            failures_dropped: true,
            caught_up_variant: true,
            may_lead_beside: true,
            digests: v >= 8,
        }),
        _ => None,
    }
}

/// No version both sides speak: the text says which node to upgrade.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("protocol version {theirs} is not supported (this node speaks {ours}): the other node runs an older syncd; upgrade it to a release that speaks protocol {min} or later (a release speaks its own protocol and the one before, so upgrade one release at a time)", min = ours.min)]
    TooOld { theirs: Speaks, ours: Speaks },
    #[error("protocol version {theirs} is not supported (this node speaks {ours}): the other node runs a newer syncd; upgrade this node first, or use a release of the other that still speaks protocol {max}", max = ours.max)]
    TooNew { theirs: Speaks, ours: Speaks },
}

/// The version a session between `ours` and `theirs` uses: the highest
/// both speak.
pub fn choose(ours: Speaks, theirs: Speaks) -> Result<u32, VersionError> {
    let v = ours.max.min(theirs.max);
    if v >= ours.min && v >= theirs.min {
        Ok(v)
    } else if theirs.max < ours.min {
        Err(VersionError::TooOld { theirs, ours })
    } else {
        Err(VersionError::TooNew { theirs, ours })
    }
}

/// Version 6 refuses any other version with a fixed text, ending
/// `(this standby speaks 6); upgrade both nodes to the same syncd release`.
/// The version it names, when a refusal is that one (a primary then tries
/// again speaking it, if it can). Later releases negotiate instead and
/// never refuse in this form.
pub fn refused_for_version(reason: &str) -> Option<u32> {
    let rest = reason.strip_prefix("protocol version ")?;
    let (_, rest) = rest.split_once(" is not supported (this standby speaks ")?;
    let (n, rest) = rest.split_once(')')?;
    if !rest.starts_with("; upgrade both nodes") {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_chosen() {
        let ours = Speaks::OURS;
        assert_eq!(choose(ours, Speaks::only(6)), Ok(6));
        assert_eq!(choose(ours, Speaks::only(7)), Ok(7));
        assert_eq!(choose(ours, ours), Ok(8));
        // A later release speaking 8 and 9 meets this one at 8.
        assert_eq!(choose(ours, Speaks { min: 8, max: 9 }), Ok(8));
        assert_eq!(choose(Speaks { min: 8, max: 9 }, ours), Ok(8));
    }

    #[test]
    fn no_common_version_names_both_and_the_node_to_upgrade() {
        let e = choose(Speaks::OURS, Speaks::only(5)).unwrap_err();
        assert!(matches!(e, VersionError::TooOld { .. }));
        let t = e.to_string();
        assert!(t.contains("protocol version 5 is not supported"), "{t}");
        assert!(t.contains("this node speaks 6 to 8"), "{t}");
        assert!(
            t.contains("upgrade it to a release that speaks protocol 6"),
            "{t}"
        );
        let e = choose(Speaks::OURS, Speaks { min: 9, max: 10 }).unwrap_err();
        assert!(matches!(e, VersionError::TooNew { .. }));
        assert!(e.to_string().contains("9 to 10"), "{e}");
        assert!(e.to_string().contains("upgrade this node first"), "{e}");
    }

    #[test]
    fn every_version_spoken_has_its_features_and_no_other() {
        for v in 0..20 {
            assert_eq!(features(v).is_some(), Speaks::OURS.contains(v), "{v}");
        }
        assert!(features(CURRENT).is_some_and(|f| f.caught_up && f.may_lead_beside));
        assert!(features(6).is_some_and(|f| !f.caught_up && !f.may_lead_beside));
        assert!(features(7).is_some_and(|f| f.caught_up && !f.digests));
        assert!(features(CURRENT).is_some_and(|f| f.digests));
    }

    #[test]
    fn version_6s_refusal_text_is_recognised_and_nothing_else() {
        // The text release 6 sends, verbatim.
        let six = "protocol version 7 is not supported (this standby speaks 6); upgrade both nodes to the same syncd release";
        assert_eq!(refused_for_version(six), Some(6));
        let ours = choose(Speaks::OURS, Speaks::only(5))
            .unwrap_err()
            .to_string();
        assert_eq!(refused_for_version(&ours), None);
        assert_eq!(refused_for_version("export_id \"a\" does not match"), None);
        assert_eq!(
            refused_for_version(
                "protocol version 7 is not supported (this standby speaks x); upgrade both nodes"
            ),
            None
        );
    }
}
