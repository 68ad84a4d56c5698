//! Fuzz target: a reply payload through `decode_reply` and its round trip
//! (`natsplug_protocol_fuzz::check_reply` says what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| natsplug_protocol_fuzz::check_reply(payload));
