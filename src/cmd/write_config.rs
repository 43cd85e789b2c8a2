//! `pgha write-config`: writes pgha.conf and the password file from answers (debconf's), so
//! TOML quoting is done by the code that reads the file, and the password never passes argv.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::config::{validate_password, Config, DEFAULT_ARCHIVE_DIR, DEFAULT_PASSWORD_FILE};
use crate::error::{ConfigError, EXIT_OK};
use crate::files::apply::Transaction;
use crate::files::plan::{file_change, Ownership};
use crate::render::render_config_file;

#[derive(Debug, Args)]
pub struct WriteConfigArgs {
    /// The primary's IP address
    #[arg(long, value_name = "IP")]
    pub primary_address: String,
    /// The standbys' IP addresses, separated by commas or spaces
    #[arg(long, value_name = "IPS")]
    pub standby_addresses: String,
    /// The replication role's name
    #[arg(long, value_name = "NAME", default_value = "replicator")]
    pub replication_user: String,
    /// The WAL archive directory
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ARCHIVE_DIR)]
    pub archive_directory: PathBuf,
    /// Where the password file goes
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PASSWORD_FILE)]
    pub password_file: PathBuf,
    /// Read the replication password from standard input (one line) and write the password file.
    /// Without it the password file is left as it is.
    #[arg(long)]
    pub password_stdin: bool,
    /// Only check the answers; write nothing
    #[arg(long)]
    pub check: bool,
}

pub fn split_addresses(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|part| !part.is_empty()).map(str::to_string).collect()
}

impl WriteConfigArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let standbys = split_addresses(&self.standby_addresses);
        let text = render_config_file(
            self.primary_address.trim(),
            &standbys,
            self.replication_user.trim(),
            &self.password_file,
            &self.archive_directory,
        )?;
        // Validate with the same code that will read the file: a bad answer is refused before anything is written.
        Config::parse(config_path, &text)?;
        let password = if self.password_stdin {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("cannot read the password from standard input")?;
            let password = input.strip_suffix('\n').unwrap_or(&input).to_string();
            validate_password(&password)
                .map_err(|message| ConfigError::new(format!("replication password: {message}")))?;
            Some(password)
        } else {
            None
        };
        if self.check {
            println!("the answers are valid");
            return Ok(EXIT_OK);
        }
        let root = Ownership { uid: 0, gid: 0, mode: 0o644 };
        let mut changes = Vec::new();
        if let Some(password) = password {
            changes.extend(file_change(
                &self.password_file,
                format!("{password}\n"),
                Ownership { mode: 0o600, ..root },
            )?);
        }
        changes.extend(file_change(config_path, text, root)?);
        if changes.is_empty() {
            println!("{}: no changes", config_path.display());
            return Ok(EXIT_OK);
        }
        let mut transaction = Transaction::new();
        for directory in changes.iter().filter_map(|change| change.path.parent()) {
            if !directory.exists() {
                transaction.create_dir(directory, Ownership { mode: 0o755, ..root })?;
            }
        }
        for change in &changes {
            if let Err(error) = transaction.write(change) {
                transaction.rollback()?;
                return Err(error);
            }
            log::info!("wrote {}", change.path.display());
        }
        transaction.commit();
        Ok(EXIT_OK)
    }
}
