//! age encryption of stored objects. The sidecar holds only recipients (public keys); identities are
//! needed to read data back (restore, `verify --read-data`) and are never stored in the repository.

use std::io::{Read, Seek, Write};
use std::path::Path;

use super::format::RepoConfig;
use super::{Id, RepoError};

pub type Recipient = age::x25519::Recipient;

pub fn parse_recipient(text: &str) -> Result<Recipient, String> {
    text.trim().parse().map_err(|e| format!("{text:?} is not an age X25519 recipient (age1…): {e}"))
}

pub struct Identities(Vec<Box<dyn age::Identity + Send + Sync>>);

impl Identities {
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        let file = age::IdentityFile::from_file(path.display().to_string())
            .map_err(|e| RepoError::Crypto(format!("reading identity file {}: {e}", path.display())))?;
        let identities = file
            .into_identities()
            .map_err(|e| RepoError::Crypto(format!("identity file {}: {e}", path.display())))?;
        if identities.is_empty() {
            return Err(RepoError::Crypto(format!("{} holds no age identity (AGE-SECRET-KEY-1…)", path.display())));
        }
        Ok(Identities(identities))
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }
}

/// A new identity and its recipient, as `age-keygen` writes them.
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        crate::now_rfc3339(),
        identity.to_string().expose_secret()
    );
    (text, recipient)
}

pub fn encrypting_writer<W: Write>(recipients: &[Recipient], out: W) -> Result<age::stream::StreamWriter<W>, RepoError> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| RepoError::Crypto(format!("setting up encryption: {e}")))?;
    encryptor.wrap_output(out).map_err(|e| RepoError::Crypto(format!("writing the age header: {e}")))
}

pub fn encrypt_small(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, RepoError> {
    let mut writer = encrypting_writer(recipients, Vec::new())?;
    writer.write_all(plaintext).and_then(|_| writer.finish()).map_err(|e| RepoError::Crypto(e.to_string()))
}

/// Opens an age stream for reading; `what` names the object in errors. A stream for which none of the
/// identities holds a key is reported as a wrong identity, anything else as damage.
pub fn decrypting_reader<R: Read + Seek>(
    identities: &Identities,
    config: &RepoConfig,
    input: R,
    what: &str,
) -> Result<age::stream::StreamReader<R>, RepoError> {
    let decryptor = age::Decryptor::new(input).map_err(|e| RepoError::corrupt(what, format!("age header: {e}")))?;
    decryptor.decrypt(identities.iter()).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => RepoError::WrongIdentity { recipients: config.recipients().join(", ") },
        other => RepoError::corrupt(what, format!("decrypting: {other}")),
    })
}

/// Confirms that `identities` can read this repository, before any data is touched.
pub fn check_identity(config: &RepoConfig, identities: &Identities) -> Result<(), RepoError> {
    let Some(encryption) = &config.encryption else { return Ok(()) };
    let sealed = hex::decode(&encryption.key_check).map_err(|e| RepoError::corrupt("config key_check", e))?;
    let mut reader = decrypting_reader(identities, config, std::io::Cursor::new(sealed), "config key_check")?;
    let mut secret = Vec::new();
    reader.read_to_end(&mut secret).map_err(|e| RepoError::corrupt("config key_check", e))?;
    if Id::of(&secret) != encryption.key_check_blake3 {
        return Err(RepoError::corrupt("config key_check", "decrypts to the wrong value"));
    }
    Ok(())
}
