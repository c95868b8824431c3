//! The pair as one system: generations (which data is newer) and the role
//! rules (who may lead), without I/O.

pub mod lineage;
pub mod local;
pub mod role;
