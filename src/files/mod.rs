//! The only code that changes the filesystem: the plan of file changes (`plan`), the atomic
//! writer with its undo log (`apply`), the WAL archive that archive_command fills and pruning
//! empties (`archive`), what pg_rewind will change, saved and put back (`rewind_save`), the data
//! directory's siblings pgha creates, moves and sizes (`datadir`), and the handle-based
//! operations all of them use in trees other users own (`secure`).
//! Everything else computes what to write and hands it here.

pub mod apply;
pub mod archive;
pub mod datadir;
pub mod plan;
pub mod rewind_save;
pub mod secure;
