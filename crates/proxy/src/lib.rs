//! syncd-proxy: an HTTP/1.1 and TCP load balancer with nginx `upstream`
//! semantics, active health checks, bounded retries, metrics and reload.
//!
//! The decision-making core is sans-IO and tested with simulated time:
//! [`balancer`] (selection algorithms and passive failure accounting),
//! [`health`] (rise/fall), [`retry`] (retry rules and budget), [`forward`]
//! (header rewriting), [`framing`] (HTTP/1 head parsing and body framing,
//! both directions). The rest is a thin tokio layer around it:
//! [`listener`], [`server`] (the client side of HTTP/1.1), [`proxy`], [`tcp`], [`tunnel`], [`checker`], [`admin`], [`reload`].

pub mod admin;
pub mod balancer;
pub mod checker;
pub mod client_io;
pub mod config;
pub mod forward;
pub mod framing;
pub mod h1client;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod rawhead;
pub mod reload;
pub mod reqhead;
pub mod response;
pub mod retry;
pub mod server;
pub mod server_wire;
pub mod server_write;
pub mod sharded;
pub mod stall;
pub mod state;
pub mod tcp;
pub mod tunnel;
pub mod upstream;
pub mod workers;
