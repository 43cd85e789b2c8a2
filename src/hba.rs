//! The pgha block inside pg_hba.conf: found, replaced or inserted, never duplicated.

pub const BEGIN: &str = "# BEGIN pgha";
pub const END: &str = "# END pgha";

/// Returns pg_hba.conf with `block` in place of any existing pgha block, or inserted before
/// the first rule line, because PostgreSQL uses the first line that matches.
pub fn merge_block(current: &str, block: &str) -> Result<String, String> {
    let without = remove_block(current)?;
    let block = if block.ends_with('\n') { block.to_string() } else { format!("{block}\n") };
    let lines: Vec<&str> = without.split_inclusive('\n').collect();
    let first_rule = lines
        .iter()
        .position(|line| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
        .unwrap_or(lines.len());
    // Keep a rule's own comment lines attached to it: insert above them, not between.
    let mut insert_at = first_rule;
    while insert_at > 0 && lines[insert_at - 1].trim_start().starts_with('#') && first_rule < lines.len() {
        insert_at -= 1;
    }
    let first_rule = insert_at;
    let mut merged = String::new();
    lines[..first_rule].iter().for_each(|line| merged.push_str(line));
    if !merged.is_empty() && !merged.ends_with('\n') {
        merged.push('\n');
    }
    merged.push_str(&block);
    if first_rule < lines.len() {
        merged.push('\n');
    }
    lines[first_rule..].iter().for_each(|line| merged.push_str(line));
    Ok(merged)
}

/// pg_hba.conf without the pgha block (and the blank line pgha put after it).
pub fn remove_block(current: &str) -> Result<String, String> {
    let lines: Vec<&str> = current.split_inclusive('\n').collect();
    let begins: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim_end() == BEGIN).map(|(i, _)| i).collect();
    let ends: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim_end() == END).map(|(i, _)| i).collect();
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => Ok(current.to_string()),
        ([begin], [end]) if begin < end => {
            let mut after = end + 1;
            if lines.get(after).is_some_and(|line| line.trim().is_empty()) {
                after += 1;
            }
            Ok(lines[..*begin].iter().chain(&lines[after..]).copied().collect())
        }
        _ => Err(format!(
            "pg_hba.conf has {} '{BEGIN}' and {} '{END}' lines: expected one pair or none; fix it by hand",
            begins.len(),
            ends.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "# PostgreSQL Client Authentication\n#\n# comment\n\n# Database administrative login\nlocal   all  postgres  peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
    const BLOCK: &str = "# BEGIN pgha\nhostssl replication \"r\" 10.0.0.2/32 scram-sha-256\n# END pgha\n";

    #[test]
    fn inserts_before_the_first_rule() {
        let merged = merge_block(DEBIAN, BLOCK).unwrap();
        let begin = merged.find(BEGIN).unwrap();
        assert!(begin < merged.find("local   all").unwrap());
        assert!(merged.starts_with("# PostgreSQL Client Authentication\n"));
        assert!(merged.contains("# END pgha\n\n# Database administrative login\nlocal"), "{merged}");
    }

    #[test]
    fn rerun_replaces_instead_of_appending() {
        let once = merge_block(DEBIAN, BLOCK).unwrap();
        let twice = merge_block(&once, BLOCK).unwrap();
        assert_eq!(once, twice);
        let changed = merge_block(&once, &BLOCK.replace("10.0.0.2", "10.0.0.3")).unwrap();
        assert_eq!(changed.matches(BEGIN).count(), 1);
        assert!(!changed.contains("10.0.0.2") && changed.contains("10.0.0.3"));
    }

    #[test]
    fn removal_restores_the_original() {
        assert_eq!(remove_block(&merge_block(DEBIAN, BLOCK).unwrap()).unwrap(), DEBIAN);
    }

    #[test]
    fn a_broken_block_is_refused() {
        assert!(merge_block(&format!("{BEGIN}\nhost x\n"), BLOCK).is_err());
    }

    #[test]
    fn empty_file_gets_just_the_block() {
        assert_eq!(merge_block("", BLOCK).unwrap(), BLOCK);
    }
}
