//! What the test suites of `syncd`, `syncd-vrrp` and `syncd-proxy` share.

pub mod notify;
pub mod rng;
pub mod skip;
