//! `roam`: the command-line edge of a roam node.
//!
//! Library crates return typed errors; this binary turns them into readable messages
//! (`anyhow`) and exit codes.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("roam: error: {e:#}");
            std::process::exit(2);
        }
    }
}
