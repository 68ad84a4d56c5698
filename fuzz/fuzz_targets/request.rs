//! Fuzz target: a phase request payload through the host's decoding steps
//! (`natsplug_protocol_fuzz::check_request` says what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| natsplug_protocol_fuzz::check_request(payload));
