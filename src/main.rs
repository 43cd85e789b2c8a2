use std::process::ExitCode;

use clap::Parser;

mod apply;
mod cli;
mod clone;
mod cmd;
mod config;
mod debian;
mod error;
mod files;
mod hba;
mod host;
mod lock;
mod logging;
mod password;
mod pg;
mod plan;
mod render;
mod replication;
mod version;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.verbose);
    match cmd::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            log::error!("{error:#}");
            ExitCode::from(error::exit_code_for(&error) as u8)
        }
    }
}
