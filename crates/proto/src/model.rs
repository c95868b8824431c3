//! Domain types shared by the planner, the live loop and the wire.

use serde::{Deserialize, Serialize};

use crate::path::RelPath;

/// Part of the tree a scoped scan looks at: the path itself, and with
/// `recursive` everything beneath it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub path: RelPath,
    pub recursive: bool,
}

/// A file the standby could not apply, reported with the next barrier.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub path: RelPath,
    pub error: String,
    /// True when resending the file whole may fix it (hash mismatch, bad delta).
    pub retry_whole: bool,
}
