//! Quoting for every syntax pgha writes into: SQL, postgresql.conf, libpq conninfo and the shell.
//! Each function returns a complete token, quotes included, ready to paste.

/// An SQL string literal. postgres-protocol's escaping follows libpq's PQescapeLiteral: the E''
/// form when backslashes appear, so the result means the same whatever
/// `standard_conforming_strings` says. Its guard space in front of E'' is dropped because pgha
/// never pastes a literal right after an identifier.
pub fn sql_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text).trim_start().to_string()
}

pub fn sql_identifier(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// A string value in postgresql.conf or recovery.conf, where backslash is an escape character.
pub fn conf_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value in a libpq conninfo string, quoted only when it has to be, so the common case stays readable.
pub fn conninfo_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && c != '\'' && c != '\\' && c != '=');
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A POSIX shell word, for commands PostgreSQL hands to /bin/sh (archive_command).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(sql_identifier("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(conninfo_quote("o'k\\"), "'o\\'k\\\\'");
        assert_eq!(conninfo_quote("10.0.0.1"), "10.0.0.1");
        assert_eq!(conninfo_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's here"), "'it'\\''s here'");
        assert_eq!(shell_quote("/var/backups/pgsql/archive"), "/var/backups/pgsql/archive");
        assert_eq!(shell_quote("/x/$HOME"), "'/x/$HOME'");
    }
}
