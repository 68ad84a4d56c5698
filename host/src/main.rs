//! The `natsplug` command line; see `natsplug --help`.

fn main() -> std::process::ExitCode {
    natsplug::cli::main()
}
