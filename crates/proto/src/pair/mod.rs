//! The pair as one system: generations (which data is newer), the role
//! rules (who may lead) and what a follower tells apart as written locally,
//! without I/O.

pub mod lineage;
pub mod local;
pub mod role;
