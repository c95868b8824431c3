//! What the test suites of `syncd`, `syncd-vrrp` and `syncd-proxy` share:
//! network-namespace labs with their processes killed and reaped on drop
//! (`netns`), skips that CI can forbid (`skip`), a seeded RNG (`rng`), a
//! stand-in for systemd's notification socket (`notify`) and loopback ports
//! outside the kernel's ephemeral range (`port`).

pub mod netns;
pub mod notify;
pub mod port;
pub mod rng;
pub mod skip;
