//! One module per subcommand, each with an Args struct and `run`: arguments in, a workflow
//! called, its result printed. The workflows themselves live outside `cmd`.

pub mod archive_wal;
pub mod cleanup;
pub mod fence;
pub mod generate_docs;
pub mod metrics;
pub mod primary;
pub mod promote;
pub mod prune_archive;
pub mod rejoin;
pub mod render;
pub mod rewind_save;
pub mod standby;
pub mod status;
pub mod switchover;
pub mod verify;
pub mod write_config;
