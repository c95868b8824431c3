//! The ops layer shared by the three binaries (`syncd`, `syncd vrrp`,
//! `syncd-proxy`): what an operator or a scraper talks to, written once.
//!
//! - [`admin`]: the admin HTTP/1.1 server (routes given as a closure) and a
//!   small client for the CLIs' `status` commands;
//! - [`prom`]: the Prometheus text exposition writer;
//! - [`config`]: configuration errors, every problem at once naming file,
//!   key and fix;
//! - [`duration`]: duration strings such as `"500ms"` or `"1m30s"`;
//! - [`signals`]: SIGHUP, SIGUSR1 and SIGUSR2, which would otherwise end
//!   a daemon (SIGHUP checks the file again and names what changed).

pub mod admin;
pub mod config;
pub mod duration;
pub mod prom;
pub mod signals;
