//! `tollgate`, the approver's console.
//!
//! The console talks to a running broker over its WebSocket API, which arrives with the approval
//! queue. Until then the binary only knows who it is, so packaging and `--help` can be tested.

use clap::Parser;

/// The approver's console for Tollgate.
///
/// Lists calls that a Tollgate broker holds for human approval and lets you approve or reject
/// them. The broker's approval queue and the console API are not available yet in this build:
/// see `tollgate-broker --help` for the gateway itself.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "tollgate: the approval console needs the broker's console API, which this build does not have yet.\n\
         Run `tollgate-broker serve --config tollgate.toml` to start the gateway."
    );
    std::process::exit(2);
}
