//! The replication password: read from its own file, which must hold nothing else and be
//! readable by its owner only, and never printed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::values::validate_password;
use crate::error::ConfigError;

/// The replication password. Debug never prints it, so it cannot leak through `{:?}` in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    #[cfg(test)]
    pub fn new(text: String) -> Self {
        Password(text)
    }

    /// A one-time password from the kernel's random source: 32 bytes, base64 (no character a
    /// passfile or a conninfo would need to escape).
    pub fn random() -> anyhow::Result<Password> {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: the pointer and length describe the unfilled rest of `bytes`.
            let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
            if got < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(anyhow::Error::new(error).context("getrandom"));
            }
            filled += got as usize;
        }
        Ok(Password(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

pub fn read_password_file(config_path: &Path, file: &Path) -> Result<Password, ConfigError> {
    let key = "replication.password_file";
    let problem = |message: String| ConfigError::key(config_path, key, format!("{}: {message}", file.display()));
    let metadata = fs::metadata(file).map_err(|error| problem(format!("cannot read it: {error}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(problem(format!(
            "mode is {mode:04o}, readable by group or others: expected 0600 (chmod 600 {})",
            file.display()
        )));
    }
    let bytes = fs::read(file).map_err(|error| problem(format!("cannot read it: {error}")))?;
    let text = String::from_utf8(bytes).map_err(|_| problem("is not valid UTF-8".into()))?;
    // One trailing newline is what every editor and `echo` leave behind; it is not part of the password.
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    validate_password(password).map_err(problem)?;
    Ok(Password(password.to_string()))
}
