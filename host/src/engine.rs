//! The one wasmtime [`Engine`] of the process: component model, pooling
//! allocator, epoch interruption driven by a ticker thread.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::RuntimeConfig;

/// How often the epoch advances. Call deadlines are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Build the engine for `runtime` and start its epoch ticker.
///
/// The ticker is a plain OS thread, so a guest that never yields cannot
/// starve it; it stops by itself when the engine is dropped.
pub fn build_engine(runtime: &RuntimeConfig) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = runtime.pool_instances;
    let max_memory = usize::try_from(runtime.max_memory_mb * 1024 * 1024)
        .context("runtime.max_memory_mb does not fit this platform")?;
    pool.total_component_instances(instances)
        // Components from other toolchains (Python, JavaScript) carry many
        // core modules, memories and tables; size the pool for them.
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(100_000)
        .max_memory_size(max_memory)
        .total_stacks(instances);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")?;

    let weak = engine.weak();
    std::thread::Builder::new()
        .name("natsplug-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(engine)
}

/// The epoch deadline, in ticks, for a call that may run `timeout`.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    // One extra tick: the current tick may be about to end.
    (timeout.as_nanos().div_ceil(tick) as u64).max(1) + 1
}
