//! age encryption: recipients (public keys) for backups, identities (private
//! keys) for restores, and the encrypting / decrypting stages.
//!
//! Recipients are parsed and validated before the first byte of a backup is
//! read, so a typo fails the run at once with the offending recipient named.
//! Private keys never appear in errors or `Debug` output.

use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

use crate::compress::FinishWrite;
use crate::error::{Error, Result};

/// Validated public keys an artifact is encrypted to. Empty means plaintext.
#[derive(Default)]
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    names: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Recipients {
    /// Parses `age1…` X25519 recipients and `ssh-ed25519` / `ssh-rsa` public keys.
    pub fn parse<S: AsRef<str>>(recipients: &[S]) -> Result<Recipients> {
        let mut parsed = Recipients::default();
        for recipient in recipients {
            let text = recipient.as_ref().trim();
            let invalid = |reason: &str| Error::InvalidRecipient {
                recipient: text.to_string(),
                reason: reason.to_string(),
            };
            let key: Box<dyn age::Recipient + Send + Sync> = if text.starts_with("age1") {
                Box::new(age::x25519::Recipient::from_str(text).map_err(invalid)?)
            } else if text.starts_with("ssh-") {
                Box::new(age::ssh::Recipient::from_str(text).map_err(|e| invalid(&ssh_reason(e)))?)
            } else if text.starts_with("AGE-SECRET-KEY-") || text.starts_with("-----BEGIN") {
                // Never echo a private key back into a status or log.
                return Err(Error::InvalidRecipient {
                    recipient: "<a private key>".into(),
                    reason: "this is a private key; give its public key (age-keygen -y, or the .pub file)".into(),
                });
            } else {
                return Err(invalid("unknown recipient type"));
            };
            parsed.keys.push(key);
            parsed.names.push(text.to_string());
        }
        Ok(parsed)
    }

    /// True when there is nobody to encrypt to: the payload stays plaintext.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The recipients as given, for manifests and status.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Wraps `inner` in an age encryption stage, or returns it unchanged when there are no recipients.
    pub(crate) fn encryptor(&self, inner: Box<dyn FinishWrite>) -> Result<Box<dyn FinishWrite>> {
        if self.is_empty() {
            return Ok(inner);
        }
        let encryptor = age::Encryptor::with_recipients(self.keys.iter().map(|k| k.as_ref() as &dyn age::Recipient))
            .map_err(|e| Error::InvalidRecipient {
                recipient: self.names.join(", "),
                reason: e.to_string(),
            })?;
        let writer = encryptor.wrap_output(inner).map_err(|source| Error::Stage {
            stage: "encryption",
            source,
        })?;
        Ok(Box::new(AgeWriter(writer)))
    }
}

fn ssh_reason(e: age::ssh::ParseRecipientKeyError) -> String {
    match e {
        age::ssh::ParseRecipientKeyError::Ignore => "SSH key type not supported by age".into(),
        age::ssh::ParseRecipientKeyError::Invalid(reason) => reason.to_string(),
        age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => "RSA modulus too large".into(),
        age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => "RSA modulus too small".into(),
        age::ssh::ParseRecipientKeyError::Unsupported(kind) => format!("unsupported SSH key type {kind}"),
        _ => "not a valid SSH public key".into(),
    }
}

struct AgeWriter(age::stream::StreamWriter<Box<dyn FinishWrite>>);

impl Write for AgeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for AgeWriter {
    /// Writes the final, authenticated chunk. Without it the file does not decrypt.
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}

/// Private keys for restores: age identity files (`AGE-SECRET-KEY-1…`) and
/// unencrypted OpenSSH private keys (ed25519, rsa).
#[derive(Default)]
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} keys, redacted)", self.keys.len())
    }
}

impl Identities {
    /// No keys: restores of encrypted artifacts fail with [`Error::KeyRequired`].
    pub fn none() -> Identities {
        Identities::default()
    }

    /// Parses the text of one key file (age identity file or OpenSSH private key).
    pub fn parse(text: &str) -> Result<Identities> {
        let mut identities = Identities::default();
        identities.add(text)?;
        Ok(identities)
    }

    /// Adds the keys of one more key file.
    pub fn add(&mut self, text: &str) -> Result<()> {
        if text.contains("-----BEGIN") {
            let key = age::ssh::Identity::from_buffer(text.as_bytes(), None)
                .map_err(|e| Error::InvalidIdentity(format!("not a readable SSH private key: {e}")))?;
            match key {
                age::ssh::Identity::Unencrypted(_) => self.keys.push(Box::new(key)),
                age::ssh::Identity::Encrypted(_) => {
                    return Err(Error::InvalidIdentity(
                        "the SSH private key is passphrase-protected: store an unencrypted copy (ssh-keygen -p -N '')"
                            .into(),
                    ));
                }
                age::ssh::Identity::Unsupported(_) => {
                    return Err(Error::InvalidIdentity(
                        "this SSH key type is not supported by age".into(),
                    ));
                }
            }
        } else {
            let file = age::IdentityFile::from_buffer(text.as_bytes())
                .map_err(|e| Error::InvalidIdentity(format!("not an age identity file: {e}")))?;
            let keys = file
                .into_identities()
                .map_err(|e| Error::InvalidIdentity(e.to_string()))?;
            if keys.is_empty() {
                return Err(Error::InvalidIdentity(
                    "the key file holds no AGE-SECRET-KEY-1… line".into(),
                ));
            }
            self.keys.extend(keys);
        }
        Ok(())
    }

    /// True when no key was given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Opens an age stream read from `input`. `recipients` names the artifact's
    /// recipients for the error when no key matches.
    pub(crate) fn decryptor<'a, R: BufRead + Send + 'a>(
        &self,
        input: R,
        recipients: &[String],
    ) -> Result<Box<dyn Read + Send + 'a>> {
        let listed = || recipients.join(", ");
        if self.keys.is_empty() {
            return Err(Error::KeyRequired { recipients: listed() });
        }
        let decryptor = age::Decryptor::new_buffered(input).map_err(|e| decrypt_error(e, &listed()))?;
        let reader = decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| decrypt_error(e, &listed()))?;
        Ok(Box::new(reader))
    }
}

fn decrypt_error(e: age::DecryptError, recipients: &str) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::WrongKey {
            recipients: recipients.to_string(),
        },
        // Header damage is indistinguishable from tampering: report it as such.
        other => Error::Integrity {
            path: String::new(),
            detail: format!("age header: {other}"),
        },
    }
}
