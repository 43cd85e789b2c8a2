//! Byte sizes in PostgreSQL's notation ("8192", "500kB", "16MB", "1GB", "2TB"; a kB is 1024
//! bytes), read and written the same way everywhere pgha shows or accepts one.

const UNITS: [(&str, u64); 6] = [("", 1), ("B", 1), ("kB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40)];

/// Bytes of `text` when its unit is one of `accepted` (as written in `UNITS`; "KB" is read as
/// "kB"), or None.
pub fn parse_bytes(text: &str, accepted: &[&str]) -> Option<u64> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = match unit.trim() {
        "KB" => "kB",
        other => other,
    };
    if !accepted.contains(&unit) {
        return None;
    }
    let factor = UNITS.iter().find(|(name, _)| *name == unit)?.1;
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// Every unit, for parsers that take any size.
pub const ANY_UNIT: [&str; 6] = ["", "B", "kB", "MB", "GB", "TB"];

pub fn format_bytes(bytes: u64) -> String {
    const NAMES: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < NAMES.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", NAMES[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postgresql_sizes() {
        assert_eq!(parse_bytes("16MB", &ANY_UNIT), Some(16 << 20));
        assert_eq!(parse_bytes("8192", &ANY_UNIT), Some(8192));
        assert_eq!(parse_bytes("500KB", &ANY_UNIT), Some(500 << 10));
        assert_eq!(parse_bytes("1GB", &["MB", "GB"]), Some(1 << 30));
        assert_eq!(parse_bytes("1kB", &["MB", "GB"]), None);
        assert_eq!(parse_bytes("99999999999TB", &ANY_UNIT), None);
        assert_eq!(parse_bytes("lots", &ANY_UNIT), None);
    }

    #[test]
    fn formats_with_one_decimal() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GB");
    }
}
