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
