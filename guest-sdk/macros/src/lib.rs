//! The `#[natsplug_sdk::plugin]` attribute.
//!
//! It goes on an `impl Plugin for T` block, keeps the block as written and
//! adds the component export: a hidden type implementing the WIT `handler`
//! interface by calling `T`'s methods, whose `describe` lists exactly the
//! phases the block overrides and the crate version from Cargo.toml.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl, parse_macro_input, spanned::Spanned};

const PHASES: [(&str, &str); 4] = [
    ("request_filter", "RequestFilter"),
    ("response_filter", "ResponseFilter"),
    ("response_body_filter", "ResponseBodyFilter"),
    ("logging", "Logging"),
];

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
    for item in &block.items {
        if let ImplItem::Fn(method) = item {
            let name = method.sig.ident.to_string();
            match PHASES.iter().find(|(fn_name, _)| *fn_name == name) {
                Some((_, variant)) => {
                    phases.push(syn::Ident::new(variant, method.sig.ident.span()))
                }
                None => {
                    return Err(syn::Error::new(
                        method.sig.ident.span(),
                        format!(
                            "`{name}` is not a phase; a plugin implements any of: \
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
    Ok(quote! {
        #block

        #[doc(hidden)]
        pub struct __NatsplugExport;

        impl ::natsplug_sdk::__private::Guest for __NatsplugExport {
            fn describe() -> ::natsplug_sdk::PluginInfo {
                ::natsplug_sdk::PluginInfo {
                    version: ::core::option::Option::Some(
                        ::std::string::String::from(::core::env!("CARGO_PKG_VERSION")),
                    ),
                    phases: ::std::vec![#(::natsplug_sdk::Phase::#phases),*],
                }
            }

            fn request_filter(
                ctx: ::natsplug_sdk::Context,
                request: ::natsplug_sdk::Request,
            ) -> ::natsplug_sdk::Decision {
                <#plugin_type as ::natsplug_sdk::Plugin>::request_filter(ctx, request)
            }

            fn response_filter(
                ctx: ::natsplug_sdk::Context,
                request: ::natsplug_sdk::Request,
                response: ::natsplug_sdk::Response,
            ) -> ::natsplug_sdk::Decision {
                <#plugin_type as ::natsplug_sdk::Plugin>::response_filter(ctx, request, response)
            }

            fn response_body_filter(
                ctx: ::natsplug_sdk::Context,
                request: ::natsplug_sdk::Request,
                response: ::core::option::Option<::natsplug_sdk::Response>,
                chunk: ::natsplug_sdk::Chunk,
            ) -> ::natsplug_sdk::Decision {
                <#plugin_type as ::natsplug_sdk::Plugin>::response_body_filter(
                    ctx, request, response, chunk,
                )
            }

            fn logging(
                ctx: ::natsplug_sdk::Context,
                request: ::natsplug_sdk::Request,
                response: ::core::option::Option<::natsplug_sdk::Response>,
                duration_ms: ::core::option::Option<u64>,
            ) {
                <#plugin_type as ::natsplug_sdk::Plugin>::logging(ctx, request, response, duration_ms)
            }
        }

        // Only a wasm build exports the component: a native build of the
        // plugin crate (`cargo build --workspace`) links a library without
        // the component's export symbols, whose names native linkers refuse.
        #[cfg(target_arch = "wasm32")]
        ::natsplug_sdk::__private::export_world!(
            __NatsplugExport with_types_in ::natsplug_sdk::bindings
        );
    })
}
