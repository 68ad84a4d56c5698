//! The `#[natsplug_sdk::plugin]` attribute.
//!
//! It goes on an `impl Plugin for T` block, keeps the block as written and
//! adds the component's exports: bindings for a world that exports the
//! `init` hook and exactly the phases the block writes (contract
//! `natsplug:plugin@0.2.0`), and a hidden type implementing each of them by
//! calling `T`'s methods. `init` reports the crate version from Cargo.toml.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{ImplItem, ItemImpl, parse_macro_input, spanned::Spanned};

/// (method, exported interface) of every phase.
const PHASES: [(&str, &str); 4] = [
    ("request_filter", "request-filter"),
    ("response_filter", "response-filter"),
    ("response_body_filter", "response-body-filter"),
    ("logging", "logging"),
];

/// The contract version the exports are generated for.
const CONTRACT: &str = "0.2.0";

/// The WIT package of the contract, in this repository.
const WIT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit");

/// Export an `impl Plugin for T` block as the plugin of this component.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[plugin] takes no arguments")
            .to_compile_error()
            .into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    match expand(&block) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(block: &ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    let Some((_, trait_path, _)) = &block.trait_ else {
        return Err(syn::Error::new(
            block.span(),
            "#[plugin] goes on an `impl Plugin for YourType` block",
        ));
    };
    if trait_path
        .segments
        .last()
        .map(|s| s.ident != "Plugin")
        .unwrap_or(true)
    {
        return Err(syn::Error::new(
            trait_path.span(),
            "#[plugin] goes on an `impl Plugin for YourType` block",
        ));
    }
    let mut phases = Vec::new();
    let mut has_init = false;
    for item in &block.items {
        if let ImplItem::Fn(method) = item {
            let name = method.sig.ident.to_string();
            if name == "init" {
                has_init = true;
                continue;
            }
            match PHASES.iter().find(|(fn_name, _)| *fn_name == name) {
                Some(phase) => phases.push(*phase),
                None => {
                    return Err(syn::Error::new(
                        method.sig.ident.span(),
                        format!(
                            "`{name}` is not a phase; a plugin writes `init` and any of: \
                             request_filter, response_filter, response_body_filter, logging"
                        ),
                    ));
                }
            }
        }
    }
    if phases.is_empty() {
        return Err(syn::Error::new(
            block.span(),
            "a plugin implements at least one phase: \
             request_filter, response_filter, response_body_filter or logging",
        ));
    }
    let plugin_type = &block.self_ty;
    let world = format!(
        "package natsplug:exports; world plugin {{ include natsplug:plugin/imports@{CONTRACT}; \
         export natsplug:plugin/init@{CONTRACT}; {} }}",
        phases
            .iter()
            .map(|(_, interface)| format!("export natsplug:plugin/{interface}@{CONTRACT};"))
            .collect::<String>()
    );
    let types = "natsplug:plugin/types@".to_string() + CONTRACT;
    let host = "natsplug:plugin/host@".to_string() + CONTRACT;
    let phase_impls = phases.iter().map(|(method, _)| {
        let module = format_ident!("{method}");
        let signature = match *method {
            "request_filter" => quote! {
                fn request_filter(
                    ctx: ::natsplug_sdk::Context,
                    request: ::natsplug_sdk::Request,
                ) -> ::natsplug_sdk::RequestDecision {
                    <#plugin_type as ::natsplug_sdk::Plugin>::request_filter(ctx, request)
                }
            },
            "response_filter" => quote! {
                fn response_filter(
                    ctx: ::natsplug_sdk::Context,
                    request: ::natsplug_sdk::Request,
                    response: ::natsplug_sdk::Response,
                ) -> ::natsplug_sdk::ResponseDecision {
                    <#plugin_type as ::natsplug_sdk::Plugin>::response_filter(ctx, request, response)
                }
            },
            "response_body_filter" => quote! {
                fn response_body_filter(
                    ctx: ::natsplug_sdk::Context,
                    response: ::core::option::Option<::natsplug_sdk::ResponseHead>,
                    chunk: ::natsplug_sdk::Chunk,
                ) -> ::natsplug_sdk::ChunkDecision {
                    <#plugin_type as ::natsplug_sdk::Plugin>::response_body_filter(ctx, response, chunk)
                }
            },
            _ => quote! {
                fn logging(
                    ctx: ::natsplug_sdk::Context,
                    request: ::natsplug_sdk::Request,
                    response: ::core::option::Option<::natsplug_sdk::Response>,
                    duration_ms: ::core::option::Option<u64>,
                ) {
                    <#plugin_type as ::natsplug_sdk::Plugin>::logging(ctx, request, response, duration_ms)
                }
            },
        };
        quote! {
            impl __natsplug_exports::exports::natsplug::plugin::#module::Guest for __NatsplugExport {
                #signature
            }
        }
    });
    let init = if has_init {
        quote! { <#plugin_type as ::natsplug_sdk::Plugin>::init(config)?; }
    } else {
        quote! { let _ = config; }
    };
    Ok(quote! {
        #block

        #[doc(hidden)]
        mod __natsplug_exports {
            ::natsplug_sdk::__private::wit_bindgen::generate!({
                inline: #world,
                path: #WIT_DIR,
                world: "natsplug:exports/plugin",
                with: {
                    #types: ::natsplug_sdk::bindings::natsplug::plugin::types,
                    #host: ::natsplug_sdk::bindings::natsplug::plugin::host,
                },
                generate_all,
                runtime_path: "::natsplug_sdk::__private::wit_bindgen::rt",
                pub_export_macro: true,
            });
        }

        #[doc(hidden)]
        pub struct __NatsplugExport;

        impl __natsplug_exports::exports::natsplug::plugin::init::Guest for __NatsplugExport {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<::natsplug_sdk::PluginInfo, ::std::string::String> {
                #init
                ::core::result::Result::Ok(::natsplug_sdk::PluginInfo {
                    version: ::core::option::Option::Some(
                        ::std::string::String::from(::core::env!("CARGO_PKG_VERSION")),
                    ),
                })
            }
        }

        #(#phase_impls)*

        // Only a wasm build exports the component: a native build of the
        // plugin crate (`cargo build --workspace`) links a library without
        // the component's export symbols, whose names native linkers refuse.
        #[cfg(target_arch = "wasm32")]
        __natsplug_exports::export!(__NatsplugExport with_types_in __natsplug_exports);
    })
}
