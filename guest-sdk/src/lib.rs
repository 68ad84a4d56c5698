//! Write natsplug plugins in Rust.
//!
//! A plugin is a type with an `impl Plugin` block marked `#[natsplug_sdk::plugin]`.
//! Implement only the phases you need; the attribute exports the component and
//! tells the host which phases to serve.
//!
//! ```ignore
//! use natsplug_sdk::prelude::*;
//!
//! struct AddHeader;
//!
//! #[natsplug_sdk::plugin]
//! impl Plugin for AddHeader {
//!     fn request_filter(_ctx: Context, _req: Request) -> Decision {
//!         Decision::next().set_request_header("x-hello", "world")
//!     }
//! }
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and drop the
//! `.wasm` from `target/wasm32-wasip2/release/` into the host's plugins directory.

pub mod config;
mod decision;
mod headers;
pub mod log;
pub mod small_alloc;

/// Small blocks from size classes, the rest from the standard allocator
/// (see [`small_alloc`]). Turn off the default `small-alloc` feature to
/// install an allocator of your own.
#[cfg(all(
    feature = "small-alloc",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: small_alloc::SmallObjects<std::alloc::System> =
    small_alloc::SmallObjects::new(std::alloc::System);

/// Bindings generated from `wit/plugin.wit`. Plugin code rarely needs them
/// directly; the types are re-exported at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "natsplug_sdk::bindings",
    });
}

pub use bindings::natsplug::plugin::types::{
    Action, Chunk, Context, Decision, HeaderMutations, Phase, PluginInfo, Request, Response,
};
pub use headers::{HeaderList, Headers};
pub use natsplug_sdk_macros::plugin;

/// The phases of an HTTP exchange, one method each. Every method defaults to
/// "continue unchanged"; override the ones your plugin needs.
///
/// Mark the impl block with `#[natsplug_sdk::plugin]`: the attribute exports
/// the component and reports the overridden methods to the host as the
/// phases it serves.
pub trait Plugin {
    /// Before the request goes upstream: mutate it, or answer it with
    /// [`Decision::respond`].
    fn request_filter(ctx: Context, request: Request) -> Decision {
        let _ = (ctx, request);
        Decision::next()
    }

    /// After the upstream response headers arrive.
    fn response_filter(ctx: Context, request: Request, response: Response) -> Decision {
        let _ = (ctx, request, response);
        Decision::next()
    }

    /// For each response body chunk; return the (possibly rewritten) chunk
    /// with [`Decision::replace_body`].
    fn response_body_filter(
        ctx: Context,
        request: Request,
        response: Option<Response>,
        chunk: Chunk,
    ) -> Decision {
        let _ = (ctx, request, response, chunk);
        Decision::next()
    }

    /// After the exchange: observe it (typically to log), change nothing.
    fn logging(
        ctx: Context,
        request: Request,
        response: Option<Response>,
        duration_ms: Option<u64>,
    ) {
        let _ = (ctx, request, response, duration_ms);
    }
}

/// Everything a plugin usually needs, in one import.
pub mod prelude {
    pub use crate::log::Value;
    pub use crate::{
        Action, Chunk, Context, Decision, HeaderList, Headers, Plugin, Request, Response, config,
    };
    pub use crate::{debug, error, info, trace, warn};
}

#[doc(hidden)]
pub mod __private {
    //! Support for the code `#[plugin]` generates; not a public API.
    pub use crate::bindings::__export_plugin_world as export_world;
    pub use crate::bindings::exports::natsplug::plugin::handler::Guest;
}
