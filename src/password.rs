//! Password hashes for the server and the passfile for clients.
//!
//! The server only ever receives a pre-computed verifier, so the plaintext cannot reach its
//! log or pg_stat_activity. Hashing is postgres-protocol's; checking an existing SCRAM verifier
//! (needed so a re-run does not rotate the salt and report a change) recomputes the same keys.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::Password;
use crate::version::PgVersion;

/// The verifier to store for `user` on a server of `version`.
pub fn verifier_for(version: PgVersion, user: &str, password: &Password) -> String {
    if version.has_scram() {
        postgres_protocol::password::scram_sha_256(password.expose().as_bytes())
    } else {
        postgres_protocol::password::md5(password.expose().as_bytes(), user)
    }
}

/// Whether `stored` (pg_authid.rolpassword) is a verifier of `password` of the kind `version` wants.
pub fn stored_matches(version: PgVersion, user: &str, stored: &str, password: &Password) -> bool {
    if version.has_scram() {
        scram_matches(stored, password)
    } else {
        stored == postgres_protocol::password::md5(password.expose().as_bytes(), user)
    }
}

/// PostgreSQL writes 4096 by default; ten million already takes seconds to check.
const MAX_SCRAM_ITERATIONS: u32 = 10_000_000;

/// Checks a `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey` verifier against a password.
pub fn scram_matches(stored: &str, password: &Password) -> bool {
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else { return false };
    let Some((params, keys)) = rest.split_once('$') else { return false };
    let Some((iterations, salt)) = params.split_once(':') else { return false };
    let Some((stored_key, server_key)) = keys.split_once(':') else { return false };
    let (Ok(iterations), Ok(salt), Ok(stored_key), Ok(server_key)) =
        (iterations.parse::<u32>(), STANDARD.decode(salt), STANDARD.decode(stored_key), STANDARD.decode(server_key))
    else {
        return false;
    };
    // pg_authid is read as the replication role's owner could have set it: an absurd count would keep
    // pgha hashing for minutes. Such a verifier is not one pgha wrote, so it is rewritten.
    if !(1..=MAX_SCRAM_ITERATIONS).contains(&iterations) {
        log::info!("the stored SCRAM verifier has {iterations} iterations: not a pgha verifier");
        return false;
    }
    let salted = salted_password(&saslprep(password.expose()), &salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    Sha256::digest(client_key).as_slice() == stored_key.as_slice()
        && hmac_sha256(&salted, b"Server Key").as_slice() == server_key.as_slice()
}

/// The server and libpq prepare passwords with SASLprep, falling back to raw bytes when it fails.
fn saslprep(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// SCRAM's Hi(): PBKDF2-HMAC-SHA-256 with a single output block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut key);
    key.to_vec()
}

/// One line of a libpq passfile: host:port:database:user:password, with ':' and '\' escaped.
pub fn passfile_line(host: &str, port: u16, database: &str, user: &str, password: &Password) -> String {
    let escape = |field: &str| field.replace('\\', "\\\\").replace(':', "\\:");
    format!("{}:{port}:{}:{}:{}\n", escape(host), escape(database), escape(user), escape(password.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifier_round_trips_for_awkward_passwords() {
        for text in ["s3cret", "it's \"quoted\" \\ $HOME; ünïcode ", "   "] {
            let password = Password::new(text.into());
            let stored = verifier_for(PgVersion::new(15, 0), "replicator", &password);
            assert!(stored.starts_with("SCRAM-SHA-256$4096:"));
            assert!(stored_matches(PgVersion::new(15, 0), "replicator", &stored, &password));
            assert!(!stored_matches(PgVersion::new(15, 0), "replicator", &stored, &Password::new(format!("{text}x"))));
        }
    }

    #[test]
    fn scram_matches_a_verifier_made_by_postgresql() {
        // Made by PostgreSQL 15.18 here: CREATE ROLE x PASSWORD 'it''s "q" \ ü' with scram-sha-256.
        let stored = "SCRAM-SHA-256$4096:nsm5aOdCXk3S++YAJCyBjg==$vOGoNx/3avGw7e3TtnNWZ2mT1MeeMjQSuxN+e7S2x3A=:hCW9T3Tj2TbklN41mSmZY/cOB3cLrvEoj0tCm1yDtkY=";
        assert!(scram_matches(stored, &Password::new("it's \"q\" \\ ü".into())));
        assert!(!scram_matches(stored, &Password::new("it's \"q\" \\ u".into())));
    }

    #[test]
    fn an_absurd_iteration_count_is_not_checked_but_refused_at_once() {
        let password = Password::new("pw".into());
        let stored = verifier_for(PgVersion::new(15, 0), "replicator", &password);
        let rest = stored.strip_prefix("SCRAM-SHA-256$4096:").unwrap();
        let started = std::time::Instant::now();
        for count in ["0", "10000001", "4294967295"] {
            assert!(!scram_matches(&format!("SCRAM-SHA-256${count}:{rest}"), &password), "{count}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
        assert!(scram_matches(&format!("SCRAM-SHA-256$4096:{rest}"), &password));
    }

    #[test]
    fn md5_on_9x() {
        let password = Password::new("pw".into());
        let stored = verifier_for(PgVersion::new(9, 6), "rep", &password);
        assert!(stored.starts_with("md5") && stored.len() == 35);
        assert!(stored_matches(PgVersion::new(9, 6), "rep", &stored, &password));
        assert!(!stored_matches(PgVersion::new(9, 6), "other", &stored, &password));
    }

    #[test]
    fn passfile_escapes_separators() {
        let line = passfile_line("10.0.0.1", 5432, "replication", "rep", &Password::new("a:b\\c".into()));
        assert_eq!(line, "10.0.0.1:5432:replication:rep:a\\:b\\\\c\n");
    }
}
