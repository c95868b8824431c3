//! Fuzz the keepalived.conf importer: never panic on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let r = syncd_vrrp::import::convert(s);
        let _ = syncd_vrrp::config::parse(&r.toml);
    }
});
