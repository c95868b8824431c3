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
