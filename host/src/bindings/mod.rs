//! Host-side bindings of the WIT contracts this host serves, one module
//! per version, and how a component is matched to one of them.
//!
//! 0.2.0 is the current contract; 0.1.0 components keep being served
//! exactly as before.

pub mod v0_1;
pub mod v0_2;

use anyhow::bail;
use natsplug_protocol::Phase;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The WIT package version new plugins are built against.
pub const WIT_VERSION: &str = "0.2.0";
/// The interface of the functions the host gives plugins (current version).
pub const HOST_INTERFACE: &str = "natsplug:plugin/host@0.2.0";
/// Every contract version this host serves, newest first.
pub const SERVED_VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// A version of the plugin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `natsplug:plugin@0.1.0`: a `handler` interface with every phase.
    V0_1,
    /// `natsplug:plugin@0.2.0`: one interface per phase.
    V0_2,
}

impl Contract {
    /// The WIT package version.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// The contract `component` targets, judged by its exports, or why it
    /// targets none this host serves.
    pub fn of(name: &str, component: &Component, engine: &Engine) -> anyhow::Result<Contract> {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(export, _)| export.to_string())
            .collect();
        Contract::of_exports(name, &exports)
    }

    /// [`Contract::of`] for a list of export names.
    pub fn of_exports(name: &str, exports: &[String]) -> anyhow::Result<Contract> {
        let exports_any = |wanted: &[&str]| exports.iter().any(|e| wanted.contains(&e.as_str()));
        let v0_2: Vec<&str> = Phase::ALL
            .iter()
            .map(|p| v0_2::phase_interface(*p))
            .chain([v0_2::INIT_INTERFACE])
            .collect();
        if exports_any(&v0_2) {
            return Ok(Contract::V0_2);
        }
        if exports_any(&[v0_1::HANDLER_INTERFACE]) {
            return Ok(Contract::V0_1);
        }
        if let Some(other) = exports.iter().find(|e| e.starts_with("natsplug:plugin/")) {
            bail!(
                "plugin `{name}` exports `{other}`, a version of the contract this host does not serve \
                 (it serves natsplug:plugin@{}): rebuild the plugin against natsplug:plugin@{WIT_VERSION}",
                SERVED_VERSIONS.join(" and @")
            );
        }
        let listed = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        bail!(
            "plugin `{name}` exports no phase of natsplug:plugin@{WIT_VERSION} (it exports {listed}): \
             a plugin exports the interface of each phase it implements, e.g. \
             `natsplug:plugin/request-filter@{WIT_VERSION}`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(exports: &[&str]) -> Result<Contract, String> {
        let exports: Vec<String> = exports.iter().map(|e| e.to_string()).collect();
        Contract::of_exports("p", &exports).map_err(|e| e.to_string())
    }

    #[test]
    fn a_component_is_matched_to_the_contract_of_its_exports() {
        assert_eq!(of(&["natsplug:plugin/handler@0.1.0"]), Ok(Contract::V0_1));
        assert_eq!(of(&["natsplug:plugin/logging@0.2.0"]), Ok(Contract::V0_2));
        assert_eq!(
            of(&[
                "natsplug:plugin/init@0.2.0",
                "natsplug:plugin/request-filter@0.2.0"
            ]),
            Ok(Contract::V0_2)
        );
    }

    #[test]
    fn an_unserved_version_is_named_with_what_to_do() {
        let error = of(&["natsplug:plugin/handler@0.0.9"]).unwrap_err();
        assert!(
            error.contains("exports `natsplug:plugin/handler@0.0.9`"),
            "{error}"
        );
        assert!(
            error.contains("serves natsplug:plugin@0.2.0 and @0.1.0"),
            "{error}"
        );
        assert!(
            error.contains("rebuild the plugin against natsplug:plugin@0.2.0"),
            "{error}"
        );
        let error = of(&["wasi:cli/run@0.2.0"]).unwrap_err();
        assert!(error.contains("exports no phase"), "{error}");
        assert!(error.contains("`wasi:cli/run@0.2.0`"), "{error}");
    }
}
