//! The only code that changes the filesystem: the plan of file changes (`plan`), the atomic
//! writer with its undo log (`apply`), and the data directory's siblings pgha creates, moves and
//! sizes (`datadir`). Everything else computes what to write and hands it here.

pub mod apply;
pub mod datadir;
pub mod plan;
