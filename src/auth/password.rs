//! Mosquitto's `password_file`: one `username:hash` line per user, as `mosquitto_passwd` writes
//! it: `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512, Mosquitto 2.0's default) or
//! `$6$SALT$HASH` (SHA-512 of password then salt, Mosquitto 1.6's), salt and hash in base64.

use std::path::{Path, PathBuf};

use ahash::AHashMap;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot read password file {file}: {reason}")]
pub struct PasswordFileError {
    file: PathBuf,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    /// `$6$`: SHA-512 over the password followed by the salt.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2 with HMAC-SHA512.
    Pbkdf2Sha512 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
}

impl PasswordHash {
    fn parse(text: &str) -> Option<PasswordHash> {
        let base64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
        let mut parts = text.split('$');
        match (parts.next()?, parts.next()?) {
            ("", "6") => {
                let (salt, hash) = (base64(parts.next()?)?, base64(parts.next()?)?);
                parts.next().is_none().then_some(PasswordHash::Sha512 { salt, hash })
            }
            ("", "7") => {
                let iterations = parts.next()?.parse().ok().filter(|i| *i > 0)?;
                let (salt, hash) = (base64(parts.next()?)?, base64(parts.next()?)?);
                let hash_fits = !hash.is_empty() && hash.len() <= 64;
                (parts.next().is_none() && hash_fits).then_some(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
            _ => None,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let computed = match self {
            PasswordHash::Sha512 { salt, .. } => {
                Sha512::new().chain_update(password).chain_update(salt).finalize().to_vec()
            }
            PasswordHash::Pbkdf2Sha512 { iterations, salt, hash } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
        };
        let expected = match self {
            PasswordHash::Sha512 { hash, .. } | PasswordHash::Pbkdf2Sha512 { hash, .. } => hash,
        };
        computed.ct_eq(expected).into()
    }
}

/// The users of a password file.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: AHashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Reads a password file. Lines that are not `user:$6$...` or `user:$7$...` are dropped,
    /// each with a warning naming file and line (Mosquitto drops them too, so such a user
    /// cannot log in); an unreadable file is an error.
    pub fn load(path: &Path) -> Result<(PasswordFile, Vec<String>), PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| PasswordFileError {
            file: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Ok(Self::parse(&text, path))
    }

    pub fn parse(text: &str, path: &Path) -> (PasswordFile, Vec<String>) {
        let mut file = PasswordFile::default();
        let mut warnings = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let warn = |why: &str| format!("{}:{}: {why}", path.display(), index + 1);
            match line.split_once(':') {
                Some((user, hash)) if !user.is_empty() => match PasswordHash::parse(hash) {
                    Some(hash) => {
                        file.users.insert(user.to_string(), hash);
                    }
                    None => warnings.push(warn(&format!(
                        "user `{user}` has no $6$ or $7$ password hash (run mosquitto_passwd -U \
                         on a plain-text file): the user cannot log in"
                    ))),
                },
                _ => warnings.push(warn("not `username:hash`: line ignored")),
            }
        }
        (file, warnings)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Going from this file to `now`: the users added, removed, and given a new password,
    /// each sorted.
    pub fn changes_to(&self, now: &PasswordFile) -> (Vec<String>, Vec<String>, Vec<String>) {
        let sorted = |mut names: Vec<String>| {
            names.sort();
            names
        };
        let only_in = |a: &PasswordFile, b: &PasswordFile| {
            sorted(a.users.keys().filter(|name| !b.users.contains_key(*name)).cloned().collect())
        };
        let changed = self
            .users
            .iter()
            .filter(|(name, hash)| now.users.get(*name).is_some_and(|new| new != *hash))
            .map(|(name, _)| name.clone())
            .collect();
        (only_in(now, self), only_in(self, now), sorted(changed))
    }

    /// Whether `password` is the user's. An unknown user, or no password, is never accepted.
    pub fn verify(&self, username: &str, password: Option<&[u8]>) -> bool {
        match (self.users.get(username), password) {
            (Some(hash), Some(password)) => hash.verify(password),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text is read as a password file (bad lines become warnings), never a panic,
        /// and no password matches a user it did not define.
        #[test]
        fn any_text_reads_without_panic(text in "([ -~]{0,20}:\\$[67]\\$[ -~]{0,60}\n|[^\n]{0,40}\n){0,8}") {
            let (file, _warnings) = PasswordFile::parse(&text, Path::new("fuzz.pw"));
            proptest::prop_assert!(!file.verify("no-such-user-in-any-file", Some(b"x")));
        }
    }

    /// Written by Mosquitto 2.0.11's `mosquitto_passwd -b` (alice, `$7$`) and
    /// `mosquitto_passwd -H sha512 -b` (bob, `$6$`).
    pub const MOSQUITTO_PASSWD: &str = "alice:$7$101$6ZmU5kY+ZGhREtOu$TqZcs9jPn/fZHBr/mxwmVbbFe5TtslfJ8uIJuTg0YC9houqSyRm3AXUZCsBOD95sbXC2h5WirwR+y1D6SIijhA==\n\
bob:$6$ftwpGp6DSVmywvQk$nnxabfxcH5CDWfrb5nqvIVe+EaDeyaHIoPb1qHRsmznubFOZ/iGwBtlmwufw1j9sDhfkDs1hZFjXlQISlsVyEA==\n";

    fn file(text: &str) -> (PasswordFile, Vec<String>) {
        PasswordFile::parse(text, Path::new("pw"))
    }

    #[test]
    fn hashes_made_by_mosquitto_passwd_verify() {
        let (passwords, warnings) = file(MOSQUITTO_PASSWD);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(passwords.verify("alice", Some(b"secret1")));
        assert!(passwords.verify("bob", Some(b"secret2")));
        assert!(!passwords.verify("alice", Some(b"secret2")));
        assert!(!passwords.verify("bob", Some(b"")));
        assert!(!passwords.verify("alice", None));
        assert!(!passwords.verify("carol", Some(b"secret1")));
    }

    #[test]
    fn changes_name_users_added_removed_and_given_new_passwords() {
        let (before, _) = file("alice:$6$AAAA$AAAA\nbob:$6$AAAA$AAAA\ncarol:$6$AAAA$AAAA\n");
        let (now, _) = file("carol:$6$BBBB$BBBB\nbob:$6$AAAA$AAAA\ndave:$6$AAAA$AAAA\n");
        let (added, removed, changed) = before.changes_to(&now);
        assert_eq!(
            (added, removed, changed),
            (vec!["dave".to_string()], vec!["alice".to_string()], vec!["carol".to_string()])
        );
    }

    #[test]
    fn bad_lines_are_dropped_with_file_and_line() {
        let (passwords, warnings) = file("# comment\n\nplain:text\nnocolon\nok:$6$AAAA$AAAA\n");
        assert_eq!(passwords.len(), 1);
        assert_eq!(
            warnings,
            [
                "pw:3: user `plain` has no $6$ or $7$ password hash (run mosquitto_passwd -U on \
                 a plain-text file): the user cannot log in",
                "pw:4: not `username:hash`: line ignored",
            ]
        );
    }
}
