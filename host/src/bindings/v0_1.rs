//! Contract 0.1.0 (`wit/0.1.0/plugin.wit`): one `handler` interface with
//! all four phases and `describe`, which lists the phases served.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/0.1.0",
    // Requests are lowered into the guest straight from the bytes of the
    // NATS message, without an owned copy in between.
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});

/// The interface every 0.1.0 plugin exports.
pub const HANDLER_INTERFACE: &str = "natsplug:plugin/handler@0.1.0";

/// The protocol's phase for a phase of the WIT `phase` enum.
impl From<self::natsplug::plugin::types::Phase> for natsplug_protocol::Phase {
    fn from(phase: self::natsplug::plugin::types::Phase) -> natsplug_protocol::Phase {
        use self::natsplug::plugin::types::Phase as Wit;
        use natsplug_protocol::Phase;
        match phase {
            Wit::RequestFilter => Phase::RequestFilter,
            Wit::ResponseFilter => Phase::ResponseFilter,
            Wit::ResponseBodyFilter => Phase::ResponseBodyFilter,
            Wit::Logging => Phase::Logging,
        }
    }
}
