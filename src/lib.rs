//! syncd: replication for a primary/standby pair.
//!
//! Data flow and the reasons behind it are in ARCHITECTURE.md; each module holds one
//! piece of it.

pub mod admin;
pub mod auto;
// The sans-IO rules live in `syncd-proto`; these names keep their old paths.
pub use syncd_proto::{batch, live, path};
pub mod config;
pub mod conflicts;
pub mod delta;
pub mod demo;
pub mod fsroot;
pub mod generation;
pub mod hooks;
pub mod index;
pub mod lease;
pub mod meta_policy;
pub mod migrate;
pub mod paircheck;
pub mod plan;
pub mod primary;
/// The primary's session API under its earlier names (`client`, `stream`).
pub use primary as client;
pub use primary::stream;
pub mod relocate;
pub mod scan;
pub mod sigcache;
pub mod standby;
pub mod state;
pub mod stats;
#[cfg(test)]
mod testmount;
pub mod tls;
/// The source reader under its earlier name (the watch's tests use it).
#[cfg(test)]
pub(crate) mod transfer {
    pub(crate) use crate::primary::source::{open_source, Opened};
}
pub mod watch;
pub mod wire;
