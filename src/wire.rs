//! Wire messages and their framing.
//!
//! Every message is a `u32` little-endian length followed by a postcard
//! payload. The length is checked against [`MAX_FRAME`] before anything is
//! allocated, and every path inside is a
//! [`RelPath`](syncd_proto::path::RelPath), validated as it is
//! decoded, so a hostile peer cannot make us allocate without bound or name
//! anything outside the export.
//!
//! `messages.rs` holds the requests and replies, `frame.rs` the one framing
//! (length prefix, limit, postcard), `trailers.rs` what later releases append
//! after the Hello and the Welcome, and `compat.rs` the previous protocol.

pub use syncd_proto::version::Speaks;

pub mod compat;
mod frame;
mod messages;
mod trailers;

pub use frame::{decode, encode_frame, read_msg, read_request, write_msg, WireError};
pub use messages::{
    barrier_replies, Encoding, Entry, Failure, Hash, Kind, Meta, Purpose, Reply, Request, Scope,
};
pub use trailers::{hello_speaks, welcome_policy, welcome_speaks};

/// Bumped on any incompatible change to the messages below; the versions
/// spoken and what each carries are `syncd_proto::version`.
pub const PROTOCOL_VERSION: u32 = syncd_proto::version::CURRENT;
/// ALPN identifier for the QUIC/TLS handshake.
pub const ALPN: &[u8] = b"syncd/1";
/// The standby's close reason for a session replaced by a newer one.
pub const SUPERSEDED: &str = "superseded by a new session";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 8 << 20;
/// Largest file data chunk we send in one frame.
pub const CHUNK: usize = 256 << 10;
/// Failures per `FailureChunk`/`BarrierDone` frame are cut at about this
/// many bytes, far under [`MAX_FRAME`].
pub const FAILURE_CHUNK_BYTES: usize = 1 << 20;
/// Largest symlink target we accept.
pub const MAX_LINK_TARGET: usize = 4096;

#[cfg(test)]
mod tests;
