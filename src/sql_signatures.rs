//! Every SQL statement pgha can send to a 9.5 or 9.6 server, checked against what those versions
//! have: functions with their argument counts, relations and their columns, settings, roles.
//! Neither version has a server on the test machines, so this is the only check they get.
//!
//! The statements come from the pure `*_sql` builders and `*_SQL` constants, called with the
//! version the code would pass, so each builder's own version conditions decide what is checked;
//! plain literals handed straight to `query`/`query_value`/`query_bool`/`invoke_psql` are found in
//! the source. `every_sql_text_is_reachable_from_this_test` keeps that list complete: SQL built
//! anywhere else fails it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::version::PgVersion;

const V95: PgVersion = PgVersion::new(9, 5);
const V96: PgVersion = PgVersion::new(9, 6);

/// How many arguments a function takes, from its documented signature.
#[derive(Clone, Copy, Debug)]
enum Args {
    Exactly(&'static [usize]),
    AtLeast(usize),
}

/// The catalog the checks compare against, written by hand from the PostgreSQL 9.5 and 9.6
/// manuals (the versions' own pages at postgresql.org/docs/9.5 and /docs/9.6, the same text as
/// doc/src/sgml/func.sgml, catalogs.sgml, monitoring.sgml and config.sgml on the REL9_5_STABLE and
/// REL9_6_STABLE branches): "System Administration Functions" (recovery information and control,
/// backup control, replication, database object size, generic file access), "System Information
/// Functions", "The Statistics Collector", "System Catalogs" and "Server Configuration". Only the
/// names pgha uses are listed: an unknown name fails the test, so a new one gets looked up.
/// Each entry holds from the version named until the next entry of the same name; names that
/// arrived in 10 or later are listed with that version so the failure says when they exist.
const FUNCTIONS: &[(&str, PgVersion, Args)] = &[
    // Recovery information and control; the xlog/location names are 9.x's, 10 renamed them.
    ("pg_is_in_recovery", V95, Args::Exactly(&[0])),
    ("pg_last_xlog_receive_location", V95, Args::Exactly(&[0])),
    ("pg_last_xlog_replay_location", V95, Args::Exactly(&[0])),
    ("pg_last_xact_replay_timestamp", V95, Args::Exactly(&[0])),
    ("pg_current_xlog_location", V95, Args::Exactly(&[0])),
    ("pg_current_xlog_insert_location", V95, Args::Exactly(&[0])),
    ("pg_xlog_location_diff", V95, Args::Exactly(&[2])),
    ("pg_xlogfile_name", V95, Args::Exactly(&[1])),
    ("pg_walfile_name", PgVersion::new(10, 0), Args::Exactly(&[1])),
    ("pg_last_wal_receive_lsn", PgVersion::new(10, 0), Args::Exactly(&[0])),
    ("pg_last_wal_replay_lsn", PgVersion::new(10, 0), Args::Exactly(&[0])),
    ("pg_current_wal_lsn", PgVersion::new(10, 0), Args::Exactly(&[0])),
    ("pg_wal_lsn_diff", PgVersion::new(10, 0), Args::Exactly(&[2])),
    ("pg_promote", PgVersion::new(12, 0), Args::Exactly(&[0, 1, 2])),
    // Replication: 9.5 creates a physical slot from its name only; 9.6 added immediately_reserve.
    ("pg_create_physical_replication_slot", V95, Args::Exactly(&[1])),
    ("pg_create_physical_replication_slot", V96, Args::Exactly(&[1, 2])),
    ("pg_drop_replication_slot", V95, Args::Exactly(&[1])),
    ("pg_logical_emit_message", V96, Args::Exactly(&[3])),
    // Control data functions arrived in 9.6.
    ("pg_control_system", V96, Args::Exactly(&[0])),
    ("pg_control_checkpoint", V96, Args::Exactly(&[0])),
    // Generic file access: 9.5 added the missing_ok forms.
    ("pg_read_file", V95, Args::Exactly(&[1, 3, 4])),
    ("pg_read_binary_file", V95, Args::Exactly(&[1, 3, 4])),
    ("pg_ls_dir", V95, Args::Exactly(&[1, 3])),
    ("pg_stat_file", V95, Args::Exactly(&[1, 2])),
    ("pg_database_size", V95, Args::Exactly(&[1])),
    // System information; current_setting's missing_ok arrived in 9.6.
    ("current_setting", V95, Args::Exactly(&[1])),
    ("current_setting", V96, Args::Exactly(&[1, 2])),
    ("version", V95, Args::Exactly(&[0])),
    ("txid_current", V95, Args::Exactly(&[0])),
    ("pg_has_role", V95, Args::Exactly(&[2, 3])),
    ("has_function_privilege", V95, Args::Exactly(&[2, 3])),
    ("now", V95, Args::Exactly(&[0])),
    ("host", V95, Args::Exactly(&[1])),
    ("substring", V95, Args::Exactly(&[2, 3])),
    // Aggregates and conditional expressions; `extract(field FROM source)` counts as one.
    ("count", V95, Args::Exactly(&[1])),
    ("sum", V95, Args::Exactly(&[1])),
    ("bool_or", V95, Args::Exactly(&[1])),
    ("coalesce", V95, Args::AtLeast(1)),
    // The ARRAY(subquery) constructor, checked like a one-argument function.
    ("array", V95, Args::Exactly(&[1])),
    ("array_length", V95, Args::Exactly(&[2])),
    ("array_remove", V95, Args::Exactly(&[2])),
    ("extract", V95, Args::Exactly(&[1])),
];

/// Relations and their columns. pg_proc and pg_database list only the columns pgha could use;
/// `oid` is their hidden system column.
const RELATIONS: &[(&str, PgVersion, &[&str])] = &[
    (
        "pg_stat_replication",
        V95,
        &[
            "pid",
            "usesysid",
            "usename",
            "application_name",
            "client_addr",
            "client_hostname",
            "client_port",
            "backend_start",
            "backend_xmin",
            "state",
            "sent_location",
            "write_location",
            "flush_location",
            "replay_location",
            "sync_priority",
            "sync_state",
        ],
    ),
    (
        "pg_replication_slots",
        V95,
        &[
            "slot_name",
            "plugin",
            "slot_type",
            "datoid",
            "database",
            "active",
            "active_pid",
            "xmin",
            "catalog_xmin",
            "restart_lsn",
        ],
    ),
    (
        "pg_replication_slots",
        V96,
        &[
            "slot_name",
            "plugin",
            "slot_type",
            "datoid",
            "database",
            "active",
            "active_pid",
            "xmin",
            "catalog_xmin",
            "restart_lsn",
            "confirmed_flush_lsn",
        ],
    ),
    (
        "pg_stat_archiver",
        V95,
        &[
            "archived_count",
            "last_archived_wal",
            "last_archived_time",
            "failed_count",
            "last_failed_wal",
            "last_failed_time",
            "stats_reset",
        ],
    ),
    (
        "pg_stat_wal_receiver",
        V96,
        &[
            "pid",
            "status",
            "receive_start_lsn",
            "receive_start_tli",
            "received_lsn",
            "received_tli",
            "last_msg_send_time",
            "last_msg_receipt_time",
            "latest_end_lsn",
            "latest_end_time",
            "slot_name",
            "conninfo",
        ],
    ),
    (
        "pg_settings",
        V95,
        &[
            "name",
            "setting",
            "unit",
            "category",
            "short_desc",
            "extra_desc",
            "context",
            "vartype",
            "source",
            "min_val",
            "max_val",
            "enumvals",
            "boot_val",
            "reset_val",
            "sourcefile",
            "sourceline",
            "pending_restart",
        ],
    ),
    ("pg_file_settings", V95, &["sourcefile", "sourceline", "seqno", "name", "setting", "applied", "error"]),
    ("pg_hba_file_rules", PgVersion::new(10, 0), &[]),
    (
        "pg_authid",
        V95,
        &[
            "oid",
            "rolname",
            "rolsuper",
            "rolinherit",
            "rolcreaterole",
            "rolcreatedb",
            "rolcanlogin",
            "rolreplication",
            "rolbypassrls",
            "rolconnlimit",
            "rolpassword",
            "rolvaliduntil",
        ],
    ),
    (
        "pg_roles",
        V95,
        &[
            "oid",
            "rolname",
            "rolsuper",
            "rolinherit",
            "rolcreaterole",
            "rolcreatedb",
            "rolcanlogin",
            "rolreplication",
            "rolconnlimit",
            "rolpassword",
            "rolvaliduntil",
            "rolbypassrls",
            "rolconfig",
        ],
    ),
    ("pg_database", V95, &["oid", "datname", "datdba", "encoding", "datistemplate", "datallowconn", "datconnlimit"]),
    ("pg_proc", V95, &["oid", "proname", "pronamespace", "proowner", "pronargs", "prorettype", "proargtypes"]),
];

/// Settings pgha reads or sets, with the values of enumerated ones it may set.
const SETTINGS: &[(&str, PgVersion, &[&str])] = &[
    ("server_version_num", V95, &[]),
    ("ssl", V95, &[]),
    ("wal_level", V95, &[]),
    ("archive_mode", V95, &[]),
    ("max_wal_senders", V95, &[]),
    ("log_statement", V95, &["none", "ddl", "mod", "all"]),
    ("log_min_duration_statement", V95, &[]),
    (
        "log_min_error_statement",
        V95,
        &[
            "debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error", "log", "fatal",
            "panic",
        ],
    ),
    ("synchronous_commit", V95, &["on", "off", "local", "remote_write"]),
    ("synchronous_commit", V96, &["on", "off", "local", "remote_write", "remote_apply"]),
    ("log_transaction_sample_rate", PgVersion::new(12, 0), &[]),
    ("log_min_duration_sample", PgVersion::new(13, 0), &[]),
];

/// Predefined roles; 9.x has none.
const ROLES: &[(&str, PgVersion, ())] = &[("pg_monitor", PgVersion::new(10, 0), ())];

/// The entry in effect at `version` for `name`: the last one whose version is not newer.
fn lookup<'a, T>(table: &'a [(&str, PgVersion, T)], name: &str, version: PgVersion) -> Result<&'a T, String> {
    let entries: Vec<_> = table.iter().filter(|(entry, _, _)| entry.eq_ignore_ascii_case(name)).collect();
    match entries.iter().rev().find(|(_, since, _)| *since <= version) {
        Some((_, _, value)) => Ok(value),
        None => match entries.first() {
            Some((_, since, _)) => Err(format!("{name} does not exist in {version} (it arrived in {since})")),
            None => Err(format!(
                "{name} is not in this test's table of 9.5/9.6 names: look up its documented signature and add it"
            )),
        },
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Literal(String),
    Number,
    Symbol(char),
    Cast,
}

fn tokenize(sql: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        text.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        text.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Literal(text));
        } else if c == '"' {
            let end = chars[i + 1..].iter().position(|&c| c == '"').ok_or("unterminated quoted identifier")?;
            tokens.push(Token::Word(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Number);
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token::Cast);
            i += 2;
        } else {
            tokens.push(Token::Symbol(c));
            i += 1;
        }
    }
    Ok(tokens)
}

/// Words that are SQL syntax, never a column, function or relation name.
const KEYWORDS: &[&str] = &[
    "select", "from", "where", "and", "or", "not", "in", "is", "null", "true", "false", "as", "on", "join", "left",
    "right", "inner", "outer", "case", "when", "then", "else", "end", "union", "all", "distinct", "exists", "like",
    "order", "by", "group", "having", "limit", "epoch",
];

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|keyword| keyword.eq_ignore_ascii_case(word))
}

fn word(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Word(word)) => Some(word),
        _ => None,
    }
}

/// Splits at `;` outside literals (the tokenizer already keeps literals whole).
fn statements(tokens: Vec<Token>) -> Vec<Vec<Token>> {
    tokens
        .split(|token| *token == Token::Symbol(';'))
        .filter(|statement| !statement.is_empty())
        .map(<[Token]>::to_vec)
        .collect()
}

/// Every problem `sql` would meet on `version`; empty when the server would accept it.
fn check(sql: &str, version: PgVersion) -> Vec<String> {
    let tokens = match tokenize(sql) {
        Ok(tokens) => tokens,
        Err(error) => return vec![error],
    };
    let mut problems = Vec::new();
    for statement in statements(tokens) {
        let first = word(statement.first()).unwrap_or("").to_ascii_lowercase();
        match first.as_str() {
            "select" => check_select(&statement, version, &mut problems),
            "set" | "show" => match word(statement.get(1)) {
                // A dotted name is a placeholder for an extension's setting: accepted whether or not
                // the extension is loaded.
                Some(_) if statement.get(2) == Some(&Token::Symbol('.')) => {}
                Some(name) => {
                    let value = match (statement.get(2), statement.get(3)) {
                        (Some(Token::Symbol('=')), Some(Token::Word(value) | Token::Literal(value))) => {
                            Some(value.as_str())
                        }
                        _ => None,
                    };
                    check_setting(name, value, version, &mut problems);
                }
                None => problems.push(format!("{first} without a setting name")),
            },
            "checkpoint" | "identify_system" if statement.len() == 1 => {}
            "create" | "alter" => check_role_statement(&statement, &mut problems),
            "grant" => check_grant(&statement, version, &mut problems),
            _ => problems.push(format!("a statement this test does not know how to check: {statement:?}")),
        }
    }
    problems
}

fn check_setting(name: &str, value: Option<&str>, version: PgVersion, problems: &mut Vec<String>) {
    if name.contains('.') {
        return;
    }
    match lookup(SETTINGS, name, version) {
        Ok(values) => {
            if let Some(value) = value {
                if !values.is_empty() && !values.iter().any(|allowed| allowed.eq_ignore_ascii_case(value)) {
                    problems.push(format!(
                        "setting {name} has no value {value:?} in {version} (it takes {})",
                        values.join(", ")
                    ));
                }
            }
        }
        Err(problem) => problems.push(format!("setting {problem}")),
    }
}

fn check_role_statement(statement: &[Token], problems: &mut Vec<String>) {
    // Every option here exists from 9.5 (and long before).
    const OPTIONS: &[&str] = &["with", "login", "replication", "nosuperuser", "connection", "limit", "password"];
    match statement {
        [Token::Word(_), Token::Word(role), Token::Word(_), rest @ ..] if role.eq_ignore_ascii_case("role") => {
            for token in rest {
                if let Token::Word(option) = token {
                    if !OPTIONS.iter().any(|known| known.eq_ignore_ascii_case(option)) {
                        problems.push(format!("role option {option} is not in this test's table"));
                    }
                }
            }
        }
        _ => problems.push(format!("a CREATE/ALTER this test does not know: {statement:?}")),
    }
}

fn check_grant(statement: &[Token], version: PgVersion, problems: &mut Vec<String>) {
    match word(statement.get(1)) {
        Some(privilege) if privilege.eq_ignore_ascii_case("execute") => {}
        Some(role) => {
            if let Err(problem) = lookup(ROLES, role, version).map(|_| ()) {
                problems.push(format!("role {problem}"));
            }
        }
        None => problems.push(format!("a GRANT this test does not know: {statement:?}")),
    }
}

/// Where the argument list that opens at `open` closes, and how many arguments it holds.
fn arguments(tokens: &[Token], open: usize) -> (usize, usize) {
    let mut depth = 0;
    let mut commas = 0;
    for (index, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Symbol('(') => depth += 1,
            Token::Symbol(')') => {
                depth -= 1;
                if depth == 0 {
                    let count = if index == open + 1 { 0 } else { commas + 1 };
                    return (index, count);
                }
            }
            Token::Symbol(',') if depth == 1 => commas += 1,
            _ => {}
        }
    }
    (tokens.len(), commas + 1)
}

fn check_select(tokens: &[Token], version: PgVersion, problems: &mut Vec<String>) {
    // Each UNION ALL branch has its own FROM, so its columns are checked against its own relations.
    let mut start = 0;
    for index in 0..=tokens.len() {
        let union = word(tokens.get(index)).is_some_and(|w| w.eq_ignore_ascii_case("union"));
        if index == tokens.len() || union {
            check_branch(&tokens[start..index], version, problems);
            start = index + 1;
        }
    }
}

fn check_branch(tokens: &[Token], version: PgVersion, problems: &mut Vec<String>) {
    // Functions, and the innermost function around each token (extract's FROM is not a relation's).
    let mut enclosing: Vec<Option<String>> = vec![None; tokens.len()];
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut functions = BTreeSet::new();
    for (index, token) in tokens.iter().enumerate() {
        enclosing[index] = stack.last().cloned().flatten();
        match token {
            Token::Symbol('(') => {
                let name = word(index.checked_sub(1).and_then(|i| tokens.get(i))).filter(|name| !is_keyword(name));
                let after_cast = index >= 2 && tokens[index - 2] == Token::Cast;
                if let Some(name) = name.filter(|_| !after_cast) {
                    let (_, count) = arguments(tokens, index);
                    functions.insert(index - 1);
                    match lookup(FUNCTIONS, name, version) {
                        Ok(Args::Exactly(counts)) if !counts.contains(&count) => problems.push(format!(
                            "{name}() takes {} argument(s) in {version}, not {count}",
                            counts.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
                        )),
                        Ok(Args::AtLeast(least)) if count < *least => {
                            problems.push(format!("{name}() takes at least {least} argument(s), not {count}"))
                        }
                        Ok(_) => {}
                        Err(problem) => problems.push(format!("function {problem}")),
                    }
                    if name.eq_ignore_ascii_case("current_setting") {
                        if let Some(Token::Literal(setting)) = tokens.get(index + 1) {
                            check_setting(setting, None, version, problems);
                        }
                    }
                }
                stack.push(name.map(str::to_ascii_lowercase));
            }
            Token::Symbol(')') => {
                stack.pop();
            }
            _ => {}
        }
    }
    // Relations after FROM/JOIN, and the aliases they get.
    let mut relations: Vec<&str> = Vec::new();
    let mut unknown_relation = false;
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (index, token) in tokens.iter().enumerate() {
        let Token::Word(keyword) = token else { continue };
        let from = keyword.eq_ignore_ascii_case("from") || keyword.eq_ignore_ascii_case("join");
        let distinct = index > 0 && word(tokens.get(index - 1)).is_some_and(|w| w.eq_ignore_ascii_case("distinct"));
        if !from || distinct || enclosing[index].as_deref() == Some("extract") {
            continue;
        }
        let Some(relation) = word(tokens.get(index + 1)) else { continue };
        if functions.contains(&(index + 1)) || is_keyword(relation) {
            continue;
        }
        names.insert(index + 1);
        match lookup(RELATIONS, relation, version) {
            Ok(_) => relations.push(relation),
            Err(problem) => {
                unknown_relation = true;
                problems.push(format!("relation {problem}"));
            }
        }
        if let Some(alias) = word(tokens.get(index + 2)).filter(|alias| !is_keyword(alias)) {
            names.insert(index + 2);
            aliases.insert(alias.to_string(), relation.to_string());
        }
    }
    let columns_of =
        |relation: &str| lookup(RELATIONS, relation, version).map(|columns| columns.to_vec()).unwrap_or_default();
    for (index, token) in tokens.iter().enumerate() {
        let Token::Word(name) = token else { continue };
        let after_cast = index > 0 && tokens[index - 1] == Token::Cast;
        let qualifier = tokens.get(index + 1) == Some(&Token::Symbol('.'));
        let skip = unknown_relation || is_keyword(name) || after_cast || qualifier;
        if skip || functions.contains(&index) || names.contains(&index) {
            continue;
        }
        if index > 0 && enclosing[index].as_deref() == Some("extract") && tokens[index - 1] == Token::Symbol('(') {
            continue;
        }
        let qualified_by =
            (index >= 2 && tokens[index - 1] == Token::Symbol('.')).then(|| word(tokens.get(index - 2))).flatten();
        let candidates: Vec<String> = match qualified_by.and_then(|alias| aliases.get(alias)) {
            Some(relation) => vec![relation.clone()],
            None => relations.iter().map(ToString::to_string).collect(),
        };
        if !candidates
            .iter()
            .any(|relation| columns_of(relation).iter().any(|column| column.eq_ignore_ascii_case(name)))
        {
            problems.push(format!(
                "column {name} is in none of {} in {version}",
                if candidates.is_empty() {
                    "the relations (there are none)".to_string()
                } else {
                    candidates.join(", ")
                }
            ));
        }
    }
}

/// A statement pgha can send, with where it comes from for the failure message.
struct Sent {
    source: String,
    sql: String,
}

fn sent(source: &str, sql: impl Into<String>) -> Sent {
    Sent { source: source.to_string(), sql: sql.into() }
}

/// The builders `built_statements` calls: `every_sql_text_is_reachable_from_this_test` fails for
/// a `*_sql` function or `*_SQL` constant in src/ that is missing here.
const BUILDERS: &[&str] = &[
    "snapshot_sql",
    "local_snapshot_sql",
    "composed_snapshot_sql",
    "verify_sql",
    "ensure_slot_sql",
    "wal_receiver_sql",
    "primary_facts_sql",
    "DATABASE_SIZE_SQL",
    "kept_wal_sql",
    "slot_state_sql",
    "drop_slot_sql",
    "create_slot_sql",
    "slot_active_sql",
    "drop_slot_if_exists_sql",
    "drop_stale_slots_sql",
    "role_query_sql",
    "role_sql",
    "quiet_session_sql",
    "local_commit_sql",
    "missing_rewind_grants_sql",
    "grant_execute_sql",
    "PENDING_RESTART_SQL",
    "FILE_ERRORS_SQL",
    "hba_errors_sql",
    "overridden_settings_sql",
    "HEADER_SQL",
    "receiver_streaming_sql",
    "promote_sql",
    "WRITABLE_SQL",
    "replayed_sql",
    "current_walfile_sql",
    "promote_role_query_sql",
    "create_promote_role_sql",
    "grant_pg_promote_sql",
    "STANDBYS_SQL",
    "TARGET_STATE_SQL",
    "unconfirmed_walsenders_sql",
    "REPLAYED_SQL",
    "MAY_PROMOTE_SQL",
    "FIRST_WRITE_SQL",
    "FOLLOWERS_SQL",
    "promote_role_exists_sql",
    "armed_until_sql",
    "arm_sql",
    "disarm_sql",
    "pg_promote_sql",
];

/// Every statement the builders produce for `version`, with arguments like the code's; a
/// builder's own version conditions decide what `version` gets, and where the caller holds the
/// condition, it is repeated here.
fn built_statements(version: PgVersion) -> Vec<Sent> {
    use crate::primary;
    use crate::standby::{preflight, slots};
    let slot = "pgha_10_0_0_2";
    let literal = crate::quote::sql_literal(slot);
    let address: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    let mut statements = vec![
        sent("replication::snapshot_sql", crate::replication::snapshot_sql(version)),
        sent("replication::local_snapshot_sql", crate::replication::local_snapshot_sql(version)),
        sent("replication::ensure_slot_sql", crate::replication::ensure_slot_sql(slot, version)),
        sent("standby::streaming::wal_receiver_sql", crate::standby::streaming::wal_receiver_sql(version)),
        sent("standby::preflight::primary_facts_sql", preflight::primary_facts_sql(address)),
        sent("standby::preflight::DATABASE_SIZE_SQL", preflight::DATABASE_SIZE_SQL),
        sent("standby::preflight::slot_state_sql", preflight::slot_state_sql(slot, version)),
        sent("standby::slots::drop_slot_sql", slots::drop_slot_sql(&literal)),
        sent("standby::slots::slot_active_sql", slots::slot_active_sql(&literal)),
        sent("standby::slots::drop_slot_if_exists_sql", slots::drop_slot_if_exists_sql(&literal)),
        sent("standby::slots::drop_stale_slots_sql", slots::drop_stale_slots_sql(&[literal.clone(), literal.clone()])),
        sent("primary::role_query_sql", primary::role_query_sql("pgha_repl", version)),
        sent("primary::quiet_session_sql", primary::quiet_session_sql(version)),
        sent("primary::local_commit_sql", primary::local_commit_sql("SELECT 1;\n")),
        sent("primary::PENDING_RESTART_SQL", primary::PENDING_RESTART_SQL),
        sent("primary::FILE_ERRORS_SQL", primary::FILE_ERRORS_SQL),
        sent(
            "primary::overridden_settings_sql",
            primary::overridden_settings_sql(Path::new("/etc/postgresql/x/conf.d/pgha.conf")),
        ),
        sent("cmd::verify::HEADER_SQL", crate::cmd::verify::HEADER_SQL),
    ];
    statements.push(sent("members::WRITABLE_SQL", crate::members::WRITABLE_SQL));
    statements.push(sent("cmd::promote::replayed_sql", crate::cmd::promote::replayed_sql(version)));
    if let Some(sql) = preflight::kept_wal_sql(version) {
        statements.push(sent("standby::preflight::kept_wal_sql", sql));
    }
    if let Some(sql) = crate::cmd::promote::receiver_streaming_sql(version) {
        statements.push(sent("cmd::promote::receiver_streaming_sql", sql));
    }
    for verb in ["CREATE", "ALTER"] {
        for verifier in [Some("md5abc"), None] {
            let (_, sql) = primary::role_sql(version, verb, "pgha_repl", 10, verifier);
            statements.push(sent("primary::role_sql", sql));
        }
    }
    if let Some(sql) = primary::missing_rewind_grants_sql("pgha_repl", version) {
        statements.push(sent("primary::missing_rewind_grants_sql", sql));
        let functions = ["pg_catalog.pg_ls_dir(text,boolean,boolean)".to_string()];
        statements.push(sent("primary::grant_execute_sql", primary::grant_execute_sql(&functions, "pgha_repl")));
    }
    statements.push(sent(
        "standby::existing::current_walfile_sql",
        crate::standby::existing::current_walfile_sql(version).to_string(),
    ));
    if let Some(sql) = primary::hba_errors_sql(version) {
        statements.push(sent("primary::hba_errors_sql", sql));
    }
    // prepare_slot creates the slot itself where pg_basebackup cannot.
    if !version.basebackup_can_create_slot() {
        statements.push(sent("standby::slots::create_slot_sql", slots::create_slot_sql(&literal, version)));
    }
    if version.has_pg_promote() {
        statements.push(sent("cmd::promote::promote_sql", crate::cmd::promote::promote_sql()));
        // `pgha primary` makes the promote role, and only switchover (12+ alone) uses it.
        statements.push(sent("primary::promote_role_query_sql", primary::promote_role_query_sql()));
        statements.push(sent("primary::create_promote_role_sql", primary::create_promote_role_sql()));
        statements.push(sent("primary::grant_pg_promote_sql", primary::grant_pg_promote_sql()));
        use crate::switchover as sw;
        for (name, sql) in [
            ("STANDBYS_SQL", sw::STANDBYS_SQL.to_string()),
            ("TARGET_STATE_SQL", sw::TARGET_STATE_SQL.to_string()),
            (
                "unconfirmed_walsenders_sql",
                sw::unconfirmed_walsenders_sql("10.0.0.2".parse().unwrap(), crate::replication::Lsn(0x3000060)),
            ),
            ("REPLAYED_SQL", sw::REPLAYED_SQL.to_string()),
            ("MAY_PROMOTE_SQL", sw::MAY_PROMOTE_SQL.to_string()),
            ("FIRST_WRITE_SQL", sw::FIRST_WRITE_SQL.to_string()),
            ("FOLLOWERS_SQL", sw::FOLLOWERS_SQL.to_string()),
            ("promote_role_exists_sql", sw::promote_role_exists_sql()),
            ("armed_until_sql", sw::armed_until_sql()),
            ("arm_sql", sw::arm_sql(version, "SCRAM-SHA-256$4096:x$y:z", "2025-01-01 00:00:00+00")),
            ("disarm_sql", sw::disarm_sql(true)),
            ("disarm_sql", sw::disarm_sql(false)),
            ("pg_promote_sql", sw::pg_promote_sql()),
        ] {
            statements.push(sent(&format!("switchover::{name}"), sql));
        }
    }
    for sql in crate::replication::verify_sql(version, "pgha verify 2025-01-01T00:00:00Z") {
        statements.push(sent("replication::verify_sql", sql));
    }
    statements
}

/// The Rust source of pgha itself, without test code: (path under src/, text).
fn sources() -> Vec<(String, String)> {
    fn walk(directory: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                found.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| (path.strip_prefix(&root).unwrap().display().to_string(), std::fs::read_to_string(&path).unwrap()))
        .filter(|(name, _)| {
            name != "sql_signatures.rs" && !name.starts_with("fuzz_tests/") && !name.ends_with("tests.rs")
        })
        .map(|(name, text)| {
            let end = text.find("#[cfg(test)]").unwrap_or(text.len());
            (name, text[..end].to_string())
        })
        .collect()
}

/// The string literals of Rust source: (byte offset, value), comments and char literals skipped.
fn string_literals(source: &str) -> Vec<(usize, String)> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = source[i..].find('\n').map_or(bytes.len(), |end| i + end);
            }
            b'\'' => {
                // A char literal ('x', '\n', '"'), or a lifetime, which has no closing quote.
                if bytes.get(i + 1) == Some(&b'\\') {
                    i += source[i + 2..].find('\'').map_or(bytes.len(), |end| end + 3);
                } else if bytes.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) =>
            {
                let hashes = bytes[i + 1..].iter().take_while(|&&b| b == b'#').count();
                let open = i + 1 + hashes;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = source[open + 1..].find(&close).map_or(bytes.len(), |end| open + 1 + end);
                found.push((i, source[open + 1..end].to_string()));
                i = end + close.len();
            }
            b'"' => {
                let start = i;
                let mut value = String::new();
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        match bytes.get(i + 1) {
                            Some(b'\n') => {
                                i += 2;
                                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                                    i += 1;
                                }
                                continue;
                            }
                            Some(b'n') => value.push('\n'),
                            Some(&other) => value.push(other as char),
                            None => {}
                        }
                        i += 2;
                    } else {
                        let c = source[i..].chars().next().unwrap();
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
                found.push((start, value));
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

/// Literals handed straight to the functions that send SQL: (offset of the literal, SQL).
fn inline_statements(source: &str) -> Vec<(usize, String)> {
    let literals = string_literals(source);
    let mut found = Vec::new();
    for call in ["query(", "query_value(", "query_bool(", "invoke_psql("] {
        for (position, _) in source.match_indices(call) {
            let before = source[..position].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') || source[..position].ends_with("fn ") {
                continue;
            }
            // The second argument, when it is a literal: the first literal after the first comma.
            let open = position + call.len();
            let Some(comma) = source[open..].find(',').map(|offset| open + offset) else { continue };
            let rest = source[comma + 1..].trim_start();
            if !rest.starts_with('"') {
                continue;
            }
            let offset = source.len() - rest.len();
            if let Some((_, value)) = literals.iter().find(|(start, _)| *start == offset) {
                found.push((offset, value.clone()));
            }
        }
    }
    found
}

/// Whether a literal reads as SQL (or the start of a statement built around it).
fn looks_like_sql(text: &str) -> bool {
    const STARTS: &[&str] = &["SELECT ", "SET ", "SHOW ", "GRANT ", "CREATE ", "ALTER ", "{verb} ROLE"];
    let text = text.trim_start();
    STARTS.iter().any(|start| text.starts_with(start))
        || ["CHECKPOINT", "IDENTIFY_SYSTEM"].contains(&text.trim_end().trim_end_matches(';'))
}

/// The name of the `fn` or `const` that `offset` lies in: the last one declared before it.
fn enclosing_item(source: &str, offset: usize) -> Option<String> {
    let before = &source[..offset];
    let item =
        ["fn ", "const "].iter().filter_map(|keyword| before.rfind(keyword).map(|at| at + keyword.len())).max()?;
    Some(source[item..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
}

mod tests {
    use super::*;

    #[test]
    fn every_statement_exists_in_9_5_and_9_6() {
        let mut failures = Vec::new();
        for version in [V95, V96] {
            let inline = sources().into_iter().flat_map(|(path, text)| {
                inline_statements(&text).into_iter().map(move |(_, sql)| sent(&format!("{path} (inline)"), sql))
            });
            for Sent { source, sql } in built_statements(version).into_iter().chain(inline) {
                for problem in check(&sql, version) {
                    failures.push(format!("{version}: {source}: {problem}\n    in: {}", sql.trim()));
                }
            }
        }
        assert!(failures.is_empty(), "SQL that 9.5/9.6 would reject:\n{}", failures.join("\n"));
    }

    #[test]
    fn the_checker_catches_what_the_older_servers_lack() {
        let problems = |sql: &str, version| check(sql, version);
        assert!(problems("SELECT pg_create_physical_replication_slot('s', true)", V95)[0].contains("takes 1 argument"));
        assert!(problems("SELECT pg_create_physical_replication_slot('s', true)", V96).is_empty());
        assert!(problems("SELECT pg_last_wal_replay_lsn()", V96)[0].contains("arrived in 10"));
        assert!(problems("SELECT status FROM pg_stat_wal_receiver", V95)[0].contains("arrived in 9.6"));
        assert!(problems("SELECT status FROM pg_stat_wal_receiver", V96).is_empty());
        assert!(problems("SELECT sender_host FROM pg_stat_wal_receiver", V96)[0].contains("column sender_host"));
        assert!(problems("SELECT replay_lsn FROM pg_stat_replication", V96)[0].contains("column replay_lsn"));
        assert!(problems("SELECT 1 FROM pg_hba_file_rules", V96)[0].contains("arrived in 10"));
        assert!(problems("SELECT name FROM pg_settings WHERE pending_restart", V95).is_empty());
        assert!(problems("SET synchronous_commit = remote_apply", V95)[0].contains("remote_apply"));
        assert!(problems("SET synchronous_commit = remote_apply", V96).is_empty());
        assert!(problems("GRANT pg_monitor TO x", V96)[0].contains("arrived in 10"));
        assert!(problems("SELECT frobnicate()", V95)[0].contains("not in this test's table"));
        let extract = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())";
        assert!(problems(extract, V95).is_empty());
        let distinct = "SELECT count(*) FROM pg_stat_replication WHERE client_addr IS DISTINCT FROM '1.2.3.4'::inet";
        assert!(problems(distinct, V95).is_empty());
        let aliased = "SELECT s.active, r.client_addr FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid";
        assert!(problems(aliased, V95).is_empty());
        assert!(problems("SELECT s.client_addr FROM pg_replication_slots s", V95)[0].contains("column client_addr"));
    }

    #[test]
    fn every_sql_text_is_reachable_from_this_test() {
        let mut failures = Vec::new();
        let mut builders = BTreeSet::new();
        for (path, text) in sources() {
            let inline: BTreeSet<usize> = inline_statements(&text).into_iter().map(|(offset, _)| offset).collect();
            for (offset, literal) in string_literals(&text) {
                if !looks_like_sql(&literal) || inline.contains(&offset) {
                    continue;
                }
                match enclosing_item(&text, offset) {
                    Some(name) if BUILDERS.contains(&name.as_str()) => {}
                    name => failures.push(format!(
                        "{path}: SQL {literal:?} is built in {}: build it in a pure `*_sql` function (or a `*_SQL` \
                         constant) and call that from built_statements",
                        name.unwrap_or_else(|| "no function".into())
                    )),
                }
            }
            for keyword in ["fn ", "const "] {
                for (at, _) in text.match_indices(keyword) {
                    let name: String =
                        text[at + keyword.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name.ends_with("_sql") || name.ends_with("_SQL") {
                        builders.insert(name);
                    }
                }
            }
        }
        for name in &builders {
            if !BUILDERS.contains(&name.as_str()) {
                failures.push(format!("{name} builds SQL but built_statements does not call it"));
            }
        }
        for name in BUILDERS {
            if !builders.contains(*name) {
                failures.push(format!("{name} is listed in BUILDERS but no longer in src/"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn the_source_scan_finds_literals_and_their_builders() {
        let source = "fn a() { query(&t, \"SELECT 1\")?; let c = '\"'; }\n// query(&t, \"SELECT 2\")\n\
                      fn b_sql() -> String { format!(\"SELECT \\\n   x\") }";
        let inline: Vec<String> = inline_statements(source).into_iter().map(|(_, sql)| sql).collect();
        assert_eq!(inline, ["SELECT 1"]);
        let literals = string_literals(source);
        assert_eq!(literals.last().unwrap().1, "SELECT x");
        assert_eq!(enclosing_item(source, literals.last().unwrap().0).as_deref(), Some("b_sql"));
        let found: Vec<String> =
            sources().iter().flat_map(|(_, text)| inline_statements(text)).map(|(_, sql)| sql).collect();
        for expected in
            ["SELECT pg_is_in_recovery()", "SHOW ssl", "CHECKPOINT", "IDENTIFY_SYSTEM", "SELECT txid_current()"]
        {
            assert!(found.iter().any(|sql| sql == expected), "{expected} not found in src/: {found:?}");
        }
    }
}
