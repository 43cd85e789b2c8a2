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
        // No help subcommand: its page is not shipped, so pgha(8) must not list it.
        let documented = command.clone().disable_help_subcommand(true);
        fs::write(self.out_dir.join("pgha.8"), man_page(documented.clone(), "pgha", "pgha")?)?;
        for sub in documented.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            let name = format!("pgha-{}", sub.get_name());
            // The synopsis shows what is typed, `pgha primary`; the page is pgha-primary(8).
            let page = man_page(sub.clone(), &name, &format!("pgha {}", sub.get_name()))?;
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

/// Exit codes of every command but `status`, which uses the monitoring-plugin ones.
const EXIT_STATUS: &str = ".TP\n.B 0\nSuccess, or nothing to do.\n.TP\n.B 1\nRuntime failure: the host is left as it \
    was, or in the state the message describes.\n.TP\n.B 2\nUsage or configuration error: nothing was changed.\n";

const STATUS_EXIT_STATUS: &str = ".TP\n.B 0\nOK.\n.TP\n.B 1\nWARNING.\n.TP\n.B 2\nCRITICAL.\n.TP\n.B 3\nUNKNOWN, also \
    for a usage or configuration error, or when run by anyone but root (to a monitoring system 2 would mean \
    CRITICAL).\n";

/// `metrics` writes its file also after a config error, so Prometheus sees it: 2 does not mean
/// "nothing was changed" there.
const METRICS_EXIT_STATUS: &str = ".TP\n.B 0\nThe metrics were written (or printed), whatever health they report.\n\
    .TP\n.B 1\nThe file could not be written.\n.TP\n.B 2\nUsage or configuration error; a configuration error \
    still writes the file, with pgha_status 3 and pgha_cluster_up 0.\n";

const FILES: &str = ".TP\n/etc/pgha/pgha.conf\nThe configuration, see pgha.conf(5).\n.TP\n\
    /etc/pgha/replication.password\nThe replication password, root, mode 0600.\n.TP\n\
    /var/lib/postgresql/.pgha.pgpass\nThe libpq passfile of the postgres user on standbys (replication.passfile).\n\
    .TP\n/lib/systemd/system/pgha\\-primary.service, pgha\\-standby.service, pgha\\-prune\\-archive.service, \
    pgha\\-prune\\-archive.timer, pgha\\-metrics.service, pgha\\-metrics.timer\nThe units that run pgha primary, \
    pgha standby, pgha prune\\-archive and pgha metrics.\n.TP\n/var/lib/prometheus/node\\-exporter/pgha.prom\nThe metrics \
    pgha metrics writes for node\\-exporter's textfile collector.\n.TP\n\
    /lib/systemd/system/postgresql@.service.d/pgha\\-fence.conf\nThe drop\\-in that runs pgha fence before every \
    cluster start.\n.TP\n/run/lock/pgha/\nOne lock per cluster.\n";

/// The role changes, step by step: what pgha(8) tells an admin in the middle of a failover.
const PROCEDURES: &str = ".SH \"ROLE CHANGES\"\n.SS \"Planned: switchover\"\nOn the primary (PostgreSQL 12 or later): \
    \\fBpgha switchover\\fR [\\fB\\-\\-to\\fR \\fIADDRESS\\fR]. It stops this cluster cleanly, waits until the standby \
    replayed its last WAL, promotes it and restarts this cluster as its standby. No pgha.conf changes.\n\
    .SS \"Failover: promote, then rejoin\"\n.IP 1. 4\nOn the standby that is furthest ahead: \\fBpgha promote\\fR. It \
    refuses while another member answers as a primary or a standby is ahead; with the old primary known to be off, \
    \\fBpgha promote \\-\\-force\\fR overrides and logs what it overrode.\n.IP 2. 4\nThe old primary, when it boots, \
    starts fenced (in recovery, taking no connections) by the postgresql@.service drop\\-in. On it: \
    \\fBpgha rejoin\\fR (pg_rewind; the data directory is copied aside first and the diverged WAL kept), or \
    \\fBpgha rejoin \\-\\-full\\-clone\\fR.\n.IP 3. 4\nOn any other standby: nothing; it follows the new primary by itself \
    (10 and later), else \\fBpgha rejoin\\fR.\n.IP 4. 4\nAt a quiet moment on the new primary: \\fBpgha primary\\fR, which \
    writes its configuration in the primary form.\n.PP\n\\fBpgha status\\fR on every host shows the roles the members agree on.\n";

const SEE_ALSO: &str = "pgha.conf(5), pg_basebackup(1), pg_rewind(1), pg_ctlcluster(1), pg_lsclusters(1), systemctl(1)";

/// A man page from clap's sections, with the sections clap has no place for: EXIT STATUS,
/// FILES and SEE ALSO (clap_mangen would print the exit codes under EXTRA).
fn man_page(command: clap::Command, name: &str, invocation: &str) -> Result<Vec<u8>> {
    let command = command.display_name(name.to_string()).bin_name(invocation.to_string());
    let man = clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section("8")
        .source(format!("pgha {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if command.get_subcommands().any(|sub| !sub.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    if name == "pgha" {
        page.extend_from_slice(PROCEDURES.as_bytes());
    }
    let is_status = name == "pgha-status";
    page.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    let exit_status = match name {
        "pgha-status" => STATUS_EXIT_STATUS,
        "pgha-metrics" => METRICS_EXIT_STATUS,
        _ => EXIT_STATUS,
    };
    page.extend_from_slice(exit_status.as_bytes());
    if name == "pgha" {
        page.extend_from_slice(b".PP\npgha status uses the monitoring\\-plugin codes instead, see pgha\\-status(8).\n");
    }
    if is_status {
        page.extend_from_slice(
            b".SH OUTPUT\nThe first line follows the Monitoring Plugins guidelines: \\fBPGHA OK \\- \\fItext\\fR | \
              \\fIperfdata\\fR, the reason on it for WARNING, CRITICAL and UNKNOWN. \\fB\\-\\-json\\fR prints a \
              document following /usr/share/doc/pgha/status\\-schema.json.\n.PP\nIt needs root. A monitoring agent runs it \
              through sudo, allowed exact command lines only, never a wildcard: see \
              /usr/share/doc/pgha/examples/sudoers.d\\-pgha\\-monitoring and nrpe.d\\-pgha.cfg.\n",
        );
    }
    page.extend_from_slice(b".SH FILES\n");
    page.extend_from_slice(FILES.as_bytes());
    page.extend_from_slice(b".SH \"SEE ALSO\"\n");
    let see_also = if name == "pgha" { SEE_ALSO.to_string() } else { format!("pgha(8), {SEE_ALSO}") };
    page.extend_from_slice(see_also.as_bytes());
    page.push(b'\n');
    Ok(page)
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
    // The template's first line names the file and points at this very page: the SYNOPSIS says both.
    for line in example.lines().skip_while(|line| line.contains("See pgha.conf(5)")) {
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
    fn pgha_conf_5_does_not_point_at_itself() {
        let page = config_man_page(&example_config().unwrap());
        let before_example = &page[..page.find(".SH EXAMPLE").unwrap()];
        assert!(!before_example.contains("pgha.conf(5)"), "{before_example}");
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(roff_text(".hidden"), "\\&.hidden");
        assert_eq!(roff_text("a\\b-c"), "a\\eb\\-c");
    }
}
