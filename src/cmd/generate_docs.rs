//! `pgha generate-docs`: man pages, the example pgha.conf and bash completion, for the package build.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::config::{DEFAULT_ARCHIVE_DIR, DEFAULT_CONFIG_PATH, DEFAULT_PASSWORD_FILE};
use crate::render::render_config_file;

#[derive(Debug, Args)]
pub struct GenerateDocsArgs {
    /// Directory to write pgha.8, one page per subcommand, pgha.conf.5, an example pgha.conf
    /// and the bash completion into
    pub out_dir: PathBuf,
}

impl GenerateDocsArgs {
    /// Man pages and completions come from the clap definitions, and pgha.conf(5) from the
    /// template `pgha write-config` renders, so none of them can drift from the code.
    pub fn run(self, command: clap::Command) -> Result<i32> {
        fs::create_dir_all(&self.out_dir).with_context(|| format!("cannot create {}", self.out_dir.display()))?;
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).section("8").render(&mut page)?;
        fs::write(self.out_dir.join("pgha.8"), page)?;
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            let name = format!("pgha-{}", sub.get_name());
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone().name(name.clone())).section("8").render(&mut page)?;
            fs::write(self.out_dir.join(format!("{name}.8")), page)?;
        }
        let mut completion = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut command.clone(), "pgha", &mut completion);
        fs::write(self.out_dir.join("pgha.bash"), completion)?;
        let example = example_config()?;
        fs::write(self.out_dir.join("pgha.conf.5"), config_man_page(&example))?;
        fs::write(self.out_dir.join("pgha.conf"), example)?;
        Ok(0)
    }
}

/// The shipped example: the file `pgha write-config` writes, with documentation addresses (RFC 5737).
pub fn example_config() -> Result<String> {
    render_config_file(
        "192.0.2.10",
        &["192.0.2.11".to_string(), "192.0.2.12".to_string()],
        "replicator",
        Path::new(DEFAULT_PASSWORD_FILE),
        Path::new(DEFAULT_ARCHIVE_DIR),
    )
}

fn roff_text(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `key = value` of a line, whether the line sets the key or shows it commented out.
fn key_line(line: &str) -> Option<(&str, &str)> {
    let body = line.strip_prefix("# ").unwrap_or(line);
    let (key, value) = body.split_once(" = ")?;
    key.chars().all(|c| c.is_ascii_lowercase() || c == '_').then_some((key, value))
}

/// pgha.conf(5) from the commented example: the comments above each key become its description,
/// so the page says exactly what the file pgha writes says.
pub fn config_man_page(example: &str) -> String {
    let mut page = format!(
        ".TH PGHA.CONF 5 \"\" \"pgha {}\" \"File Formats\"\n.SH NAME\npgha.conf \\- configuration of pgha(8)\n\
         .SH SYNOPSIS\n{}\n.SH DESCRIPTION\n",
        env!("CARGO_PKG_VERSION"),
        roff_text(DEFAULT_CONFIG_PATH)
    );
    let mut comments: Vec<&str> = Vec::new();
    let mut in_section = false;
    let flush_paragraph = |page: &mut String, comments: &mut Vec<&str>| {
        if !comments.is_empty() {
            page.push_str(".PP\n");
            for comment in comments.drain(..) {
                page.push_str(&roff_text(comment));
                page.push('\n');
            }
        }
    };
    for line in example.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            flush_paragraph(&mut page, &mut comments);
        } else if let Some(section) = trimmed.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            flush_paragraph(&mut page, &mut comments);
            page.push_str(&format!(".SH \"[{}]\"\n", section.to_uppercase()));
            in_section = true;
        } else if let Some((key, value)) = key_line(trimmed).filter(|_| in_section) {
            page.push_str(&format!(".TP\n.B {}\n", roff_text(key)));
            if comments.is_empty() {
                page.push_str(&format!("Example: {}\n", roff_text(value)));
            }
            for comment in comments.drain(..) {
                page.push_str(&roff_text(comment));
                page.push('\n');
            }
        } else if let Some(comment) = trimmed.strip_prefix('#') {
            comments.push(comment.trim());
        }
    }
    flush_paragraph(&mut page, &mut comments);
    page.push_str(".SH EXAMPLE\nThe file `pgha write\\-config` writes (the package's postinst calls it):\n.PP\n.nf\n");
    for line in example.lines() {
        page.push_str(&roff_text(line));
        page.push('\n');
    }
    page.push_str(".fi\n.SH FILES\n.TP\n");
    page.push_str(&roff_text(DEFAULT_CONFIG_PATH));
    page.push_str("\nThe configuration.\n.TP\n");
    page.push_str(&roff_text(DEFAULT_PASSWORD_FILE));
    page.push_str("\nThe replication password, mode 0600.\n.SH SEE ALSO\npgha(8), pgha\\-write\\-config(8)\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_example_is_documented_in_its_section() {
        let page = config_man_page(&example_config().unwrap());
        let archive = page.find(".SH \"[ARCHIVE]\"").unwrap();
        let keep = page.find(".B keep\n").unwrap();
        assert!(keep > archive, "archive.keep must be listed under [ARCHIVE]");
        let description = &page[keep..page[keep..].find(".TP").map_or(page.len(), |end| keep + end)];
        assert!(description.contains("How long archived WAL is kept"), "{description}");
        for key in ["address", "port", "addresses", "user", "password_file", "passfile", "slots", "directory"] {
            assert!(page.contains(&format!(".B {key}\n")), "{key} missing from pgha.conf(5)");
        }
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(roff_text(".hidden"), "\\&.hidden");
        assert_eq!(roff_text("a\\b-c"), "a\\eb\\-c");
    }
}
