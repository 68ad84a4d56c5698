//! Fuzz target: requests and replies of any content, made from the input,
//! encoded and decoded back (`natsplug_protocol_fuzz::check_roundtrip`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natsplug_protocol_fuzz::check_roundtrip(data));
