//! The two kinds of failure pgha reports, and the exit codes they map to.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes, as documented in `pgha --help`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Bad input from the admin: a config file, a key, a value, or a cluster choice.
/// It always exits 2 and is raised before anything on the host changes.
#[derive(Debug)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { file: None, key: None, message: message.into() }
    }

    pub fn in_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: Some(file.to_path_buf()), key: None, message: message.into() }
    }

    pub fn key(file: &Path, key: &str, message: impl Into<String>) -> Self {
        ConfigError { file: Some(file.to_path_buf()), key: Some(key.to_string()), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Maps an error chain to the documented exit code: config errors anywhere in the chain are 2.
pub fn exit_code_for(error: &anyhow::Error) -> i32 {
    if error.chain().any(|cause| cause.is::<ConfigError>()) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}
