//! The subcommands, one module each, named after the subcommand. Each has
//! its flags (`*Args`), its `EXAMPLES` for `--help`, and `run`.

pub mod bench;
pub mod call;
pub mod inspect;
pub mod invoke;
pub mod ls;
pub mod new;
pub mod push;
pub mod rm;
pub mod rollback;
pub mod status;
pub mod up;
