//! syncd's replication rules, without I/O.
//!
//! Like `quinn-proto` beside `quinn`: the types and state machines here are
//! driven by events and the current time and say what to do next; the
//! daemon's shells (`syncd`'s `primary` and `standby` modules) carry that out
//! with real files, sockets and clocks. Nothing here depends on tokio, quinn
//! or the filesystem, so each rule is unit-tested with a simulated clock.

pub mod batch;
pub mod digest;
pub mod live;
pub mod model;
pub mod pair;
pub mod path;
pub mod receiver;
pub mod sender;
pub mod version;
