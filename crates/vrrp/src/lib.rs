//! VRRP v2/v3 (RFC 3768 / RFC 5798) for syncd.
//!
//! * [`packet`], [`timers`], [`machine`]: the sans-IO core (no tokio, no clock).
//! * the I/O layer and daemon around it.

pub mod machine;
pub mod packet;
pub mod timers;

pub use machine::{Action, Event, Machine, MachineConfig, State};
pub use packet::{Advert, Auth, PacketError, Version};

/// Entry point for `syncd vrrp ...` (args exclude the program name and `vrrp`).
pub fn cli_main(_args: Vec<std::ffi::OsString>) -> i32 {
    0
}
