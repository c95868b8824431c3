#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| syncd_fuzz::proxy_request(data));
