//! Contract 0.2.0 (`wit/plugin.wit`): one exported interface per phase, an
//! optional `init` hook, header lists as one buffer, and decisions that
//! can only be valid for their phase.

use natsplug_protocol::Phase;

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});

/// The interface of the init hook.
pub const INIT_INTERFACE: &str = "natsplug:plugin/init@0.2.0";

/// The interface a 0.2.0 plugin exports for `phase`.
pub fn phase_interface(phase: Phase) -> &'static str {
    match phase {
        Phase::RequestFilter => "natsplug:plugin/request-filter@0.2.0",
        Phase::ResponseFilter => "natsplug:plugin/response-filter@0.2.0",
        Phase::ResponseBodyFilter => "natsplug:plugin/response-body-filter@0.2.0",
        Phase::Logging => "natsplug:plugin/logging@0.2.0",
    }
}

/// Append `fields` to `buffer` in the layout of the WIT `fields` type:
/// per field, the name's length (u32 LE), the name, the value's length
/// (u32 LE), the value.
pub fn encode_fields(buffer: &mut Vec<u8>, fields: &[(&str, &str)]) {
    let size: usize = fields.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    buffer.reserve(size);
    for (name, value) in fields {
        for part in [name.as_bytes(), value.as_bytes()] {
            buffer.extend_from_slice(&(part.len() as u32).to_le_bytes());
            buffer.extend_from_slice(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_names_and_values_in_order() {
        let mut buffer = Vec::new();
        encode_fields(&mut buffer, &[("a", "xy"), ("a", ""), ("Host", "h")]);
        assert_eq!(
            buffer,
            [
                &[1, 0, 0, 0][..],
                b"a",
                &[2, 0, 0, 0],
                b"xy",
                &[1, 0, 0, 0],
                b"a",
                &[0, 0, 0, 0],
                &[4, 0, 0, 0],
                b"Host",
                &[1, 0, 0, 0],
                b"h",
            ]
            .concat()
        );
    }
}
