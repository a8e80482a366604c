//! `tollgate-broker`: see the library ([`tollgate_broker`]) and `--help`.

fn main() -> std::process::ExitCode {
    tollgate_broker::cli::main()
}
