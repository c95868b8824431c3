//! VRRP v2/v3.
