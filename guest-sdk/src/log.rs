//! Structured logging through the host. Records carry the plugin name and
//! the ids of the current call; the host decides where they go.
//!
//! ```ignore
//! natsplug_sdk::info!("request seen", method = req.method.as_str(), bytes = 42);
//! ```

use crate::bindings::natsplug::plugin::host;

pub use host::Level;
pub use host::Value;

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Integer(v as i64)
            }
        }
    )*};
}
integer_values!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);

/// Emit a record at `level` with typed fields.
pub fn log(level: Level, message: &str, fields: &[(String, Value)]) {
    host::log(level, message, fields);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, $msg:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::log::log(
            $level,
            ::core::convert::AsRef::<str>::as_ref(&$msg),
            &[$((::core::stringify!($key).to_string(), $crate::log::Value::from($value))),*],
        )
    };
}

/// Log at a level chosen at run time: `log!(level, "message", key = value, ...)`.
#[macro_export]
macro_rules! log { ($level:expr, $($t:tt)*) => { $crate::__log!($level, $($t)*) }; }
/// Log at trace level: `trace!("message", key = value, ...)`.
#[macro_export]
macro_rules! trace { ($($t:tt)*) => { $crate::__log!($crate::log::Level::Trace, $($t)*) }; }
/// Log at debug level: `debug!("message", key = value, ...)`.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::__log!($crate::log::Level::Debug, $($t)*) }; }
/// Log at info level: `info!("message", key = value, ...)`.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::__log!($crate::log::Level::Info, $($t)*) }; }
/// Log at warn level: `warn!("message", key = value, ...)`.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::__log!($crate::log::Level::Warn, $($t)*) }; }
/// Log at error level: `error!("message", key = value, ...)`.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::__log!($crate::log::Level::Error, $($t)*) }; }
