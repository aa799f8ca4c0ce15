//! A node's identity on the fleet: its ed25519 key and the source id derived from it.
//!
//! Source ids are self-certifying: a signed node's source id is its public key written
//! as 64 lowercase hex digits, so a receiver checks a record's signature against the key
//! named by the record's own key expression and nobody can write as another source
//! without its secret key (docs/PROTOCOL.md, "Identity"). The key is generated at first
//! start and kept in a file readable only by its owner (0600). An unsigned identity (any
//! name, no key) exists only for fleets that opt out explicitly (`exchange.unsigned`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

use super::signing::{KEY_LEN, KeyParseError, parse_signing_key};
use crate::core::ids::SourceId;

/// Why an identity could not be loaded or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The key file could not be read, created or written.
    #[error("identity key file {path}: {reason}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The key file does not hold a key.
    #[error("identity key file {path}: {source}")]
    Parse {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        source: KeyParseError,
    },
    /// The key file can be read by others than its owner.
    #[error("identity key file {path} has mode {mode:o}; it must be 600 (chmod 600 {path})")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Who this node is on the fleet: a source id and, unless unsigned, the key behind it.
#[derive(Clone)]
pub struct Identity {
    source: SourceId,
    key: Option<SigningKey>,
}

impl std::fmt::Debug for Identity {
    // Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("source", &self.source)
            .field("signed", &self.key.is_some())
            .finish()
    }
}

/// The self-certifying source id of a public key: its 64 lowercase hex digits.
pub fn source_id_of(key: &VerifyingKey) -> SourceId {
    SourceId::new(hex::encode(key.as_bytes())).expect("64 hex digits are a valid source id")
}

/// The public key a self-certifying source id names, if it is one.
pub fn key_of_source(source: &SourceId) -> Option<VerifyingKey> {
    let s = source.as_str();
    if s.len() != 2 * KEY_LEN || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut bytes = [0u8; KEY_LEN];
    hex::decode_to_slice(s, &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

impl Identity {
    /// The identity of a signing key (source id derived from its public key).
    pub fn signed(key: SigningKey) -> Identity {
        Identity {
            source: source_id_of(&key.verifying_key()),
            key: Some(key),
        }
    }

    /// A new random signed identity, kept nowhere (tests, tools, ephemeral robots).
    pub fn generate() -> Identity {
        let mut seed = [0u8; KEY_LEN];
        rand::fill(&mut seed);
        Identity::signed(SigningKey::from_bytes(&seed))
    }

    /// An unsigned identity under any valid name (only for `exchange.unsigned` fleets).
    pub fn unsigned(source: SourceId) -> Identity {
        Identity { source, key: None }
    }

    /// Reads the key in `path` (64 hex digits, mode 0600), or creates it there with mode
    /// 0600 when the file does not exist. The parent directory must exist.
    pub fn load_or_create(path: &Path) -> Result<Identity, IdentityError> {
        let io = |e: std::io::Error| IdentityError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_private(path)?;
                let key = parse_signing_key(&text).map_err(|source| IdentityError::Parse {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(Identity::signed(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                let key = identity
                    .key
                    .as_ref()
                    .expect("generated identities are signed");
                write_private(path, &hex::encode(key.to_bytes())).map_err(io)?;
                Ok(identity)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// This node's source id.
    pub fn source(&self) -> &SourceId {
        &self.source
    }

    /// The signing key; `None` for an unsigned identity.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| IdentityError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// Writes `text` to a new file that only its owner can read (created exclusively, so an
/// existing file is never overwritten), flushed to disk.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ids_name_their_key() {
        let id = Identity::generate();
        let key = id.signing_key().unwrap().verifying_key();
        assert_eq!(id.source().as_str().len(), 64);
        assert_eq!(key_of_source(id.source()), Some(key));
        assert_eq!(key_of_source(&SourceId::new("robot-a").unwrap()), None);
        let upper = SourceId::new(id.source().as_str().to_uppercase()).unwrap();
        assert_eq!(key_of_source(&upper), None, "one spelling per key");
        assert!(
            Identity::unsigned(SourceId::new("x").unwrap())
                .signing_key()
                .is_none()
        );
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.source(), b.source());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load_or_create(&path),
                Err(IdentityError::Permissions { mode: 0o644, .. })
            ));
        }
        let bad = dir.path().join("bad.key");
        write_private(&bad, "zz").unwrap();
        assert!(matches!(
            Identity::load_or_create(&bad),
            Err(IdentityError::Parse { .. })
        ));
    }
}
