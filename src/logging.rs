//! Logs go to the journal when systemd connected our stderr to it, and to stderr otherwise.

use log::LevelFilter;

pub fn init(verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if logger.with_syslog_identifier("pgha".into()).install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    env_logger::Builder::new()
        .filter_level(level)
        .format(|out, record| {
            use std::io::Write;
            writeln!(out, "pgha: {}: {}", record.level().as_str().to_lowercase(), record.args())
        })
        .target(env_logger::Target::Stderr)
        .init();
}
