//! Host-side bindings generated from `wit/plugin.wit`.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Requests are lowered into the guest straight from the bytes of the
    // NATS message, without an owned copy in between.
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});

/// The fully qualified name of the interface every plugin exports.
pub const HANDLER_INTERFACE: &str = "natsplug:plugin/handler@0.1.0";
/// The fully qualified name of the interface the host provides.
pub const HOST_INTERFACE: &str = "natsplug:plugin/host@0.1.0";
/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";

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
