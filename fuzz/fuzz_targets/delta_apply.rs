#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| syncd_fuzz::delta_apply(data));
