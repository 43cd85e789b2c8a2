use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, Command};

mod cli;
mod cmd;
mod config;
mod debian;
mod error;
mod fence;
mod files;
#[cfg(test)]
mod fuzz_tests;
mod hba;
mod health;
mod host;
mod lock;
mod logging;
mod members;
mod node;
mod notify;
mod password;
mod primary;
mod quote;
mod render;
mod replication;
mod signals;
mod size;
#[cfg(test)]
mod sql_signatures;
mod standby;
mod switchover;
mod tools;
mod upstream;
mod version;

fn main() -> ExitCode {
    let cli = cli::parse();
    logging::init(cli.verbose);
    if let Err(error) = signals::install() {
        log::error!("cannot install signal handlers: {error:#}");
        return ExitCode::from(error::EXIT_FAILURE as u8);
    }
    let config = cli.config.as_path();
    let result = match cli.command {
        Command::Render(args) => args.run(config),
        Command::Primary(args) => args.run(config),
        Command::Standby(args) => args.run(config),
        Command::PruneArchive(args) => args.run(config),
        Command::ArchiveWal(args) => args.run(config),
        Command::RewindSave(args) => args.run(config),
        Command::RewindRestore(args) => args.run(config),
        Command::Status(args) => args.run(config),
        Command::Metrics(args) => args.run(config),
        Command::Verify(args) => args.run(config),
        Command::Promote(args) => args.run(config),
        Command::Rejoin(args) => args.run(config),
        Command::Fence(args) => args.run(config),
        Command::Switchover(args) => args.run(config),
        Command::Cleanup(args) => args.run(config),
        Command::WriteConfig(args) => args.run(config),
        Command::GenerateDocs(args) => args.run(Cli::command()),
    };
    match (result, signals::received()) {
        // A run that went past its point of no return finishes, and still says it was interrupted.
        (Ok(_), Some(signal)) => {
            let interrupted = signals::Interrupted { signal };
            log::error!(
                "{interrupted}: the run finished its last step anyway, and the host is in the state it reported"
            );
            ExitCode::from(error::EXIT_FAILURE as u8)
        }
        (Ok(code), None) => {
            notify::notify_ready();
            ExitCode::from(code as u8)
        }
        (Err(error), _) => {
            log::error!("{error:#}");
            ExitCode::from(error::exit_code_for(&error) as u8)
        }
    }
}
