//! Who else may read the files that hold secrets.
//!
//! The client secret file holds nothing but the secret, so one that every local user may read
//! is refused, as ssh refuses such a private key: running with it would hide a leak. The
//! config file is meant to be readable (analysts run `stale` and `history` with it, and the
//! systemd unit installs it 0644), so a database password written into it is only warned
//! about, with the way to move the password out.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use secrecy::SecretString;

/// The permission bit that lets every local user read a file.
const OTHERS_READ: u32 = 0o004;

/// Why a secret file cannot be used.
#[derive(Debug)]
pub(crate) enum SecretFileError {
    /// It could not be opened or read.
    Io(io::Error),
    /// Every local user may read it; the mode is given.
    ReadableByOthers(u32),
    /// It holds nothing.
    Empty,
}

impl SecretFileError {
    /// Whether the file simply does not exist (a systemd credential that was not passed).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, SecretFileError::Io(error) if error.kind() == io::ErrorKind::NotFound)
    }

    /// What the operator should do about it.
    pub(crate) fn fix(&self, path: &Path) -> String {
        match self {
            SecretFileError::Io(_) => "check the path and that this user may read the file".to_owned(),
            SecretFileError::ReadableByOthers(_) => format!(
                "restrict it to the service's user (chmod 600 {0}), or to a group (chmod 640 {0}), \
                 and replace the secret if untrusted users had access",
                path.display()
            ),
            SecretFileError::Empty => "write the secret into the file".to_owned(),
        }
    }
}

impl std::fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretFileError::Io(error) => error.fmt(f),
            SecretFileError::ReadableByOthers(mode) => {
                write!(f, "the file is readable by every local user (mode {mode:o})")
            }
            SecretFileError::Empty => f.write_str("the file is empty"),
        }
    }
}

/// Reads a secret file, dropping the trailing newline editors and `echo` add, after checking
/// that other users may not read it. The mode is read from the opened file, so it is the
/// file actually read.
pub(crate) fn read_secret(path: &Path) -> Result<SecretString, SecretFileError> {
    let mut file = File::open(path).map_err(SecretFileError::Io)?;
    let mode = file.metadata().map_err(SecretFileError::Io)?.permissions().mode() & 0o777;
    if mode & OTHERS_READ != 0 {
        return Err(SecretFileError::ReadableByOthers(mode));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(SecretFileError::Io)?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(SecretString::from(secret))
}

/// A warning when the config file at `path`, whose text is `text`, writes a database password
/// and every local user may read it.
pub(crate) fn config_file_warning(path: &Path, text: &str) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & OTHERS_READ == 0 {
        return None;
    }
    let file = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build()
        .ok()?;
    let url = file.get_string("database.url").ok()?;
    super::url::has_password(&url).then(|| {
        format!(
            "{} is readable by every local user (mode {mode:o}) and database.url in it holds a password; \
             move the password to ~/.pgpass, PGPASSWORD or SCAN_AGENT_SYNC__DATABASE__URL in a root-only \
             environment file (the systemd unit reads /etc/scan-agent-sync/env), or chmod 640 the file",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding `text` with `mode`, in a directory kept alive by the caller.
    fn file_with_mode(text: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use secrecy::ExposeSecret;
        for mode in [0o600, 0o640, 0o400] {
            let (_dir, path) = file_with_mode("s3cret\n", mode);
            assert_eq!(read_secret(&path).unwrap().expose_secret(), "s3cret", "mode {mode:o}");
        }
        let (_dir, path) = file_with_mode("s3cret\n", 0o644);
        let error = read_secret(&path).unwrap_err();
        assert_eq!(error.to_string(), "the file is readable by every local user (mode 644)");
        assert!(error.fix(&path).contains("chmod 600"));
    }

    #[test]
    fn config_passwords_readable_by_others_are_warned_about() {
        let with_password = "[database]\nurl = \"postgres://sync:pw@db/x\"\n";
        let (_dir, path) = file_with_mode(with_password, 0o644);
        let warning = config_file_warning(&path, with_password).unwrap();
        assert!(warning.contains("readable by every local user") && !warning.contains("pw@"), "{warning}");

        let (_dir, path) = file_with_mode(with_password, 0o640);
        assert_eq!(config_file_warning(&path, with_password), None);
        let without_password = "[database]\nurl = \"postgres://sync@db/x\"\n";
        let (_dir, path) = file_with_mode(without_password, 0o644);
        assert_eq!(config_file_warning(&path, without_password), None);
    }
}
