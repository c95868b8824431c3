//! syncd-proxy: an HTTP/1.1 and TCP load balancer with nginx `upstream`
//! semantics, active health checks, bounded retries, metrics and reload.
//!
//! The decision-making core is sans-IO and tested with simulated time:
//! [`balancer`] (selection algorithms and passive failure accounting),
//! [`health`] (rise/fall), [`retry`] (retry rules and budget). The rest is a
//! thin tokio/hyper layer around it.

pub mod balancer;
pub mod config;
pub mod health;
pub mod retry;
