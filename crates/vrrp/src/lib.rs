//! VRRP v2/v3 (RFC 3768 / RFC 5798) for syncd.
//!
//! * Sans-IO core (no tokio, no clock): [`packet`] (codec), [`timers`]
//!   (RFC formulas), [`machine`] (state machine driven by `(now, event)`),
//!   [`track`] (fall/rise and weight arithmetic).
//! * Thin I/O layer: [`io`] (raw sockets, netlink, gratuitous ARP / NA,
//!   probes), [`notify`], [`instance`] (one running router), [`daemon`]
//!   (a set of them, with state observation), [`admin`] (status/metrics).
//! * [`config`] (TOML), [`import`] (keepalived.conf), [`cli_main`].

pub mod admin;
mod cli;
pub mod config;
pub mod daemon;
pub mod import;
pub mod instance;
pub mod io;
pub mod machine;
pub mod metrics;
pub mod notify;
pub mod packet;
pub mod script_security;
pub mod timers;
pub mod track;

pub use cli::cli_main;
pub use config::{Config, ConfigError, InstanceConfig, VrrpConfig, VrrpFile};
pub use daemon::{run_instances, Error, Vrrp};
pub use instance::{BeforeMaster, Hooks, RunError};
pub use machine::{Action, Event, Machine, MachineConfig, State};
pub use metrics::InstanceStatus;
pub use packet::{Advert, Auth, PacketError, Version};
