//! syncd: replication for a primary/standby pair.
//!
//! Data flow and the reasons behind it are in ARCHITECTURE.md; each module holds one
//! piece of it.

pub mod admin;
pub mod auto;
pub mod config;
pub mod conflicts;
pub mod delta;
pub mod fsroot;
pub mod ganesha;
pub mod generation;
pub mod hooks;
pub mod index;
pub mod lease;
pub mod meta_policy;
pub mod migrate;
pub mod paircheck;
pub mod plan;
pub mod primary;
pub mod relocate;
pub mod scan;
pub mod sigcache;
pub mod standby;
pub mod state;
pub mod stats;
#[cfg(test)]
mod testmount;
pub mod tls;
pub mod watch;
pub mod wire;
