//! Who may connect, publish and receive: Mosquitto's `password_file` and `acl_file`, and the
//! rules that join them to `allow_anonymous`. Shared by every shard and replaced whole on
//! SIGHUP, so a CONNECT or a delivery reads them without a lock.

mod acl;
mod password;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

pub use acl::{Access, AclFile, AclFileError, Identity};
pub use password::{PasswordFile, PasswordFileError};

/// A password or ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error(transparent)]
    Password(#[from] PasswordFileError),
    #[error(transparent)]
    Acl(#[from] AclFileError),
}

/// Where the files are (`password_file`, `acl_file`), `allow_anonymous`, and whether clients may
/// leave the id to the broker (`allow_zero_length_clientid`, `auto_id_prefix`): the settings
/// `per_listener_settings true` makes each listener's own.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_anonymous: bool,
    pub allow_zero_length_clientid: bool,
    pub auto_id_prefix: String,
}

impl Default for AuthConfig {
    /// Mosquitto's defaults for a listener with no settings of its own.
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            acl_file: None,
            allow_anonymous: false,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_string(),
        }
    }
}

/// The broker's credentials and access rules, as last loaded, and the settings they were
/// loaded by (a SIGHUP may change those too).
#[derive(Debug)]
pub struct Credentials {
    config: ArcSwap<AuthConfig>,
    passwords: ArcSwapOption<PasswordFile>,
    acl: ArcSwapOption<AclFile>,
}

/// What a reload changed, for the log (usernames sorted).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    /// Users in both files whose password changed.
    pub passwords_changed: Vec<String>,
    /// The ACL file's rules differ from the previous ones (or one appeared or went).
    pub acl_changed: bool,
}

impl Credentials {
    /// Loads the configured files; warnings are for the log.
    pub fn load(config: AuthConfig) -> Result<(Arc<Credentials>, Vec<String>), AuthFileError> {
        let credentials = Credentials {
            config: ArcSwap::from_pointee(config.clone()),
            passwords: ArcSwapOption::empty(),
            acl: ArcSwapOption::empty(),
        };
        let (_, warnings) = credentials.read_files(config)?;
        Ok((Arc::new(credentials), warnings))
    }

    /// Reads the files again (SIGHUP), under `config` when the settings changed too. On error
    /// the previous files and settings stay in force.
    pub fn reload(&self, config: Option<AuthConfig>) -> Result<Reloaded, AuthFileError> {
        let config = config.unwrap_or_else(|| AuthConfig::clone(&self.config()));
        let (reloaded, warnings) = self.read_files(config)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        Ok(reloaded)
    }

    /// Reads both files, then installs both with their settings: a bad ACL file leaves the old
    /// passwords too.
    fn read_files(&self, config: AuthConfig) -> Result<(Reloaded, Vec<String>), AuthFileError> {
        let (passwords, warnings) = match &config.password_file {
            Some(path) => {
                let (file, warnings) = PasswordFile::load(path)?;
                (Some(Arc::new(file)), warnings)
            }
            None => (None, Vec::new()),
        };
        let acl = config.acl_file.as_deref().map(AclFile::load).transpose()?;
        let empty = PasswordFile::default();
        let before = self.passwords.load();
        let (before, now) = (before.as_deref().unwrap_or(&empty), passwords.as_deref());
        let (users_added, users_removed, passwords_changed) =
            before.changes_to(now.unwrap_or(&empty));
        let reloaded = Reloaded {
            users_added,
            users_removed,
            passwords_changed,
            acl_changed: self.acl.load().as_deref() != acl.as_ref(),
        };
        self.passwords.store(passwords);
        self.acl.store(acl.map(Arc::new));
        self.config.store(Arc::new(config));
        Ok((reloaded, warnings))
    }

    /// Mosquitto 2.0's rule. With a password file, a client that gives a username must match
    /// it; a client without one is let in only with `allow_anonymous`. Without a password
    /// file, only the anonymous rule applies (a username alone is not checked).
    pub fn admits(&self, username: Option<&str>, password: Option<&[u8]>) -> bool {
        match (username, self.passwords.load().as_deref()) {
            (Some(username), Some(passwords)) => passwords.verify(username, password),
            (Some(_), None) => true,
            (None, _) => self.config.load().allow_anonymous,
        }
    }

    /// Whether the ACL file lets `who` read or write `topic`; without one, everything is.
    pub fn allows(&self, who: Identity<'_>, topic: &str, access: Access) -> bool {
        self.acl.load().as_deref().is_none_or(|acl| acl.allows(who, topic, access))
    }

    pub fn config(&self) -> arc_swap::Guard<Arc<AuthConfig>> {
        self.config.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use password::tests::MOSQUITTO_PASSWD;

    #[test]
    fn mosquittos_rule_for_anonymous_and_usernames() {
        let dir = std::env::temp_dir().join(format!("culex-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, MOSQUITTO_PASSWD).unwrap();
        for allow_anonymous in [false, true] {
            let password_file = Some(path.clone());
            let config = AuthConfig { password_file, allow_anonymous, ..AuthConfig::default() };
            let (with_file, _) = Credentials::load(config).unwrap();
            assert!(with_file.admits(Some("alice"), Some(b"secret1")));
            assert!(!with_file.admits(Some("alice"), Some(b"wrong")));
            assert!(!with_file.admits(Some("mallory"), Some(b"x")));
            assert_eq!(with_file.admits(None, None), allow_anonymous);
            let config = AuthConfig { allow_anonymous, ..AuthConfig::default() };
            let (no_file, _) = Credentials::load(config).unwrap();
            assert!(no_file.admits(Some("anyone"), None));
            assert_eq!(no_file.admits(None, None), allow_anonymous);
        }
        let config = AuthConfig { password_file: Some(path.clone()), ..AuthConfig::default() };
        let (credentials, _) = Credentials::load(config).unwrap();
        std::fs::write(&path, "bob:$6$ftwpGp6DSVmywvQk$nnxabfxcH5CDWfrb5nqvIVe+EaDeyaHIoPb1qHRsmznubFOZ/iGwBtlmwufw1j9sDhfkDs1hZFjXlQISlsVyEA==\n").unwrap();
        let reloaded = credentials.reload(None).unwrap();
        let expected = Reloaded { users_removed: vec!["alice".into()], ..Reloaded::default() };
        assert_eq!(reloaded, expected);
        assert!(!credentials.admits(Some("alice"), Some(b"secret1")));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(credentials.reload(None).is_err(), "an unreadable file is an error");
        assert!(credentials.admits(Some("bob"), Some(b"secret2")), "the old file stays");
    }

    #[test]
    fn a_reload_may_change_the_settings_and_a_bad_one_keeps_them() {
        let (credentials, _) = Credentials::load(AuthConfig::default()).unwrap();
        assert!(!credentials.admits(None, None));
        let open = AuthConfig { allow_anonymous: true, ..AuthConfig::default() };
        credentials.reload(Some(open.clone())).unwrap();
        assert!(credentials.admits(None, None));
        let missing = Some(PathBuf::from("/nonexistent/culex/passwords"));
        let broken = AuthConfig { password_file: missing, ..AuthConfig::default() };
        assert!(credentials.reload(Some(broken)).is_err());
        assert!(credentials.admits(None, None), "the settings in force stay");
        assert_eq!(credentials.config().password_file, None);
    }
}
