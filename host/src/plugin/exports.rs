//! What a plugin exports, per contract version: looked up once at load
//! ([`PreparedExports`], next to the `InstancePre`), then bound to each new
//! instance ([`Exports`]).

use anyhow::Context as _;
use natsplug_protocol::Phase;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::bindings::v0_2::exports::natsplug::plugin as v0_2_exports;
use crate::bindings::{Contract, v0_1, v0_2};
use crate::sandbox::InstanceState;

/// A plugin's exports, found in its component, ready to instantiate.
pub enum PreparedExports {
    /// A 0.1.0 component: the `plugin` world as a whole.
    V0_1(v0_1::PluginPre<InstanceState>),
    /// A 0.2.0 component: each interface it exports.
    V0_2(Box<PreparedV0_2>),
}

/// The exports of a 0.2.0 component; a phase it does not export is `None`.
pub struct PreparedV0_2 {
    pre: InstancePre<InstanceState>,
    init: Option<v0_2_exports::init::GuestIndices>,
    request_filter: Option<v0_2_exports::request_filter::GuestIndices>,
    response_filter: Option<v0_2_exports::response_filter::GuestIndices>,
    response_body_filter: Option<v0_2_exports::response_body_filter::GuestIndices>,
    logging: Option<v0_2_exports::logging::GuestIndices>,
}

/// A live instance's exports.
pub enum Exports {
    V0_1(v0_1::Plugin),
    V0_2(Box<ExportsV0_2>),
}

/// The exports of a live 0.2.0 instance.
pub struct ExportsV0_2 {
    pub init: Option<v0_2_exports::init::Guest>,
    pub request_filter: Option<v0_2_exports::request_filter::Guest>,
    pub response_filter: Option<v0_2_exports::response_filter::Guest>,
    pub response_body_filter: Option<v0_2_exports::response_body_filter::Guest>,
    pub logging: Option<v0_2_exports::logging::Guest>,
}

impl PreparedExports {
    /// Find the exports of `contract` in the component of `pre`.
    pub fn new(
        name: &str,
        contract: Contract,
        pre: InstancePre<InstanceState>,
    ) -> anyhow::Result<PreparedExports> {
        match contract {
            Contract::V0_1 => v0_1::PluginPre::new(pre)
                .map(PreparedExports::V0_1)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "plugin `{name}` does not match the `plugin` world of natsplug:plugin@0.1.0"
                    )
                }),
            Contract::V0_2 => Ok(PreparedExports::V0_2(Box::new(PreparedV0_2 {
                init: exported(
                    name,
                    &pre,
                    v0_2::INIT_INTERFACE,
                    v0_2_exports::init::GuestIndices::new(&pre),
                )?,
                request_filter: exported(
                    name,
                    &pre,
                    v0_2::phase_interface(Phase::RequestFilter),
                    v0_2_exports::request_filter::GuestIndices::new(&pre),
                )?,
                response_filter: exported(
                    name,
                    &pre,
                    v0_2::phase_interface(Phase::ResponseFilter),
                    v0_2_exports::response_filter::GuestIndices::new(&pre),
                )?,
                response_body_filter: exported(
                    name,
                    &pre,
                    v0_2::phase_interface(Phase::ResponseBodyFilter),
                    v0_2_exports::response_body_filter::GuestIndices::new(&pre),
                )?,
                logging: exported(
                    name,
                    &pre,
                    v0_2::phase_interface(Phase::Logging),
                    v0_2_exports::logging::GuestIndices::new(&pre),
                )?,
                pre,
            }))),
        }
    }

    /// The contract version of the component.
    pub fn contract(&self) -> Contract {
        match self {
            PreparedExports::V0_1(_) => Contract::V0_1,
            PreparedExports::V0_2(_) => Contract::V0_2,
        }
    }

    /// The engine the component was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            PreparedExports::V0_1(pre) => pre.engine(),
            PreparedExports::V0_2(prepared) => prepared.pre.engine(),
        }
    }

    /// The phases a 0.2.0 component exports (a 0.1.0 one lists them in
    /// `describe`), in exchange order.
    pub fn exported_phases(&self) -> Vec<Phase> {
        let PreparedExports::V0_2(p) = self else {
            return Vec::new();
        };
        let exported = [
            p.request_filter.is_some(),
            p.response_filter.is_some(),
            p.response_body_filter.is_some(),
            p.logging.is_some(),
        ];
        Phase::ALL
            .into_iter()
            .zip(exported)
            .filter_map(|(phase, exported)| exported.then_some(phase))
            .collect()
    }

    /// Instantiate the component in `store` and bind its exports.
    pub fn instantiate(&self, store: &mut Store<InstanceState>) -> wasmtime::Result<Exports> {
        match self {
            PreparedExports::V0_1(pre) => pre.instantiate(&mut *store).map(Exports::V0_1),
            PreparedExports::V0_2(p) => {
                let instance = p.pre.instantiate(&mut *store)?;
                let mut store = &mut *store;
                Ok(Exports::V0_2(Box::new(ExportsV0_2 {
                    init: p
                        .init
                        .as_ref()
                        .map(|i| i.load(&mut store, &instance))
                        .transpose()?,
                    request_filter: p
                        .request_filter
                        .as_ref()
                        .map(|i| i.load(&mut store, &instance))
                        .transpose()?,
                    response_filter: p
                        .response_filter
                        .as_ref()
                        .map(|i| i.load(&mut store, &instance))
                        .transpose()?,
                    response_body_filter: p
                        .response_body_filter
                        .as_ref()
                        .map(|i| i.load(&mut store, &instance))
                        .transpose()?,
                    logging: p
                        .logging
                        .as_ref()
                        .map(|i| i.load(&mut store, &instance))
                        .transpose()?,
                })))
            }
        }
    }
}

/// The indices of `interface` when the component exports it; an interface
/// that is exported must be whole, one that is not is a phase the plugin
/// does not implement.
fn exported<I>(
    name: &str,
    pre: &InstancePre<InstanceState>,
    interface: &str,
    indices: wasmtime::Result<I>,
) -> anyhow::Result<Option<I>> {
    if pre.component().get_export_index(None, interface).is_none() {
        return Ok(None);
    }
    indices
        .map(Some)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!("plugin `{name}` exports `{interface}` without the functions natsplug:plugin@0.2.0 puts in it")
        })
}
