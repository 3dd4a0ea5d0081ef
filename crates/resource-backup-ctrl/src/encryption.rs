//! Per-object encryption compatible with the API server's encryption at rest.
//!
//! The configuration is the API server's own EncryptionConfiguration
//! (`apiserver.config.k8s.io/v1`), so a platform team reuses the file and keys it already
//! has. Objects of a listed resource are written with the rule's first provider in the
//! exact value format the API server stores in etcd:
//!
//! ```text
//! aescbc     k8s:enc:aescbc:v1:<key name>:    IV (16 bytes) ‖ AES-CBC(PKCS#7-padded plaintext)
//! aesgcm     k8s:enc:aesgcm:v1:<key name>:    nonce (12 bytes) ‖ AES-GCM ciphertext ‖ tag (16)
//! secretbox  k8s:enc:secretbox:v1:<key name>: nonce (24 bytes) ‖ tag (16) ‖ XSalsa20 ciphertext
//! ```
//!
//! The API server authenticates AES-GCM values with their etcd key; we use the object's path
//! inside the archive instead, which binds each value to its place the same way. Reading
//! accepts any key of any rule whose provider and name match the prefix, so a rotated
//! configuration (new first key, old key kept) still decrypts old archives.
//!
//! Crates: RustCrypto's `aes` + `cbc` (block mode with PKCS#7), `aes-gcm` and
//! `crypto_secretbox` (NaCl-compatible XSalsa20-Poly1305, tag first like Go's
//! `nacl/secretbox`): audited, pure Rust, maintained, and already what `age` builds on.

use std::fmt;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore as _;
use serde::Deserialize;

use crate::error::{Error, Result};

const PREFIX: &str = "k8s:enc:";

/// A parsed EncryptionConfiguration.
#[derive(Clone)]
pub struct EncryptionConfig {
    source_name: String,
    rules: Vec<Rule>,
}

#[derive(Clone)]
struct Rule {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    AesCbc,
    AesGcm,
    Secretbox,
}

#[derive(Clone)]
enum Provider {
    Keys(Cipher, Vec<Key>),
    Identity,
}

#[derive(Clone)]
struct Key {
    name: String,
    secret: Vec<u8>,
}

// Keys never reach logs, Events or status: Debug shows names only.
impl fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .all_keys()
            .map(|(cipher, key)| format!("{}:{}", cipher.name(), key.name))
            .collect();
        f.debug_struct("EncryptionConfig")
            .field("source", &self.source_name)
            .field("keys", &keys)
            .finish()
    }
}

impl Cipher {
    fn name(self) -> &'static str {
        match self {
            Cipher::AesCbc => "aescbc",
            Cipher::AesGcm => "aesgcm",
            Cipher::Secretbox => "secretbox",
        }
    }

    fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::AesCbc, Cipher::AesGcm, Cipher::Secretbox]
            .into_iter()
            .find(|c| c.name() == name)
    }

    fn valid_key_lengths(self) -> &'static [usize] {
        match self {
            Cipher::AesCbc | Cipher::AesGcm => &[16, 24, 32],
            Cipher::Secretbox => &[32],
        }
    }
}

// The file format, as the API server reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<FileRule>,
}

#[derive(Deserialize)]
struct FileRule {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct FileKeys {
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
struct FileKey {
    name: String,
    secret: String,
}

impl EncryptionConfig {
    /// Parses `yaml`; `source_name` (e.g. `Secret stowage-system/keys`) names it in errors.
    pub fn parse(source_name: &str, yaml: &str) -> Result<EncryptionConfig> {
        let fail = |reason: String| Error::EncryptionConfig {
            source_name: source_name.to_string(),
            reason,
        };
        let file: File =
            serde_saphyr::from_str(yaml).map_err(|e| fail(format!("not an EncryptionConfiguration: {e}")))?;
        if file.kind.as_deref() != Some("EncryptionConfiguration")
            || !matches!(
                file.api_version.as_deref(),
                Some("apiserver.config.k8s.io/v1" | "apiserver.config.k8s.io/v1beta1")
            )
        {
            return Err(fail(format!(
                "expected apiVersion apiserver.config.k8s.io/v1 and kind EncryptionConfiguration, found {} {}",
                file.api_version.as_deref().unwrap_or("(none)"),
                file.kind.as_deref().unwrap_or("(none)")
            )));
        }
        if file.resources.is_empty() {
            return Err(fail("it lists no resources".into()));
        }
        let mut rules = Vec::new();
        for (index, rule) in file.resources.iter().enumerate() {
            if rule.resources.is_empty() || rule.providers.is_empty() {
                return Err(fail(format!("resources[{index}] needs both resources and providers")));
            }
            let providers = rule
                .providers
                .iter()
                .enumerate()
                .map(|(p, provider)| {
                    parse_provider(provider).map_err(|r| fail(format!("resources[{index}].providers[{p}]: {r}")))
                })
                .collect::<Result<Vec<_>>>()?;
            rules.push(Rule {
                resources: rule.resources.iter().map(|r| r.to_ascii_lowercase()).collect(),
                providers,
            });
        }
        Ok(EncryptionConfig {
            source_name: source_name.to_string(),
            rules,
        })
    }

    /// True when objects of `plural` in `group` are written encrypted.
    pub fn encrypts(&self, group: &str, plural: &str) -> bool {
        self.writer(group, plural).is_some()
    }

    /// The first provider of the first rule naming the resource, when it encrypts.
    fn writer(&self, group: &str, plural: &str) -> Option<(Cipher, &Key)> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.resources.iter().any(|r| names(r, group, plural)))?;
        match rule.providers.first()? {
            Provider::Identity => None,
            Provider::Keys(cipher, keys) => keys.first().map(|key| (*cipher, key)),
        }
    }

    /// Encrypts `plaintext` of a `group`/`plural` object if the configuration says so;
    /// `aad` binds it to its place (AES-GCM only). None means store it plain.
    pub fn seal(&self, group: &str, plural: &str, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let (cipher, key) = self.writer(group, plural)?;
        let mut value = format!("{PREFIX}{}:v1:{}:", cipher.name(), key.name).into_bytes();
        value.extend(match cipher {
            Cipher::AesCbc => {
                let mut iv = [0u8; 16];
                rand::rng().fill_bytes(&mut iv);
                seal_cbc(&key.secret, &iv, plaintext)
            }
            Cipher::AesGcm => {
                let mut nonce = [0u8; 12];
                rand::rng().fill_bytes(&mut nonce);
                seal_gcm(&key.secret, &nonce, aad, plaintext)
            }
            Cipher::Secretbox => {
                let mut nonce = [0u8; 24];
                rand::rng().fill_bytes(&mut nonce);
                seal_secretbox(&key.secret, &nonce, plaintext)
            }
        });
        Some(value)
    }

    /// Decrypts a value written by [`seal`](Self::seal) (or by the API server). `object`
    /// names the object in errors. The plaintext must be JSON: AES-CBC has no integrity of its
    /// own, so a wrong key is caught there.
    pub fn open(&self, object: &str, aad: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let (cipher, key_name, payload) = parse_prefix(object, value)?;
        let candidates: Vec<&Key> = self
            .all_keys()
            .filter(|(c, k)| *c == cipher && k.name == key_name)
            .map(|(_, k)| k)
            .collect();
        let fail = |reason: &str| Error::Decrypt {
            object: object.to_string(),
            provider: cipher.name().to_string(),
            key: key_name.to_string(),
            tried: self.key_names(),
            reason: format!("{reason} (configuration {})", self.source_name),
        };
        if candidates.is_empty() {
            return Err(fail("no key of that provider and name is in the configuration"));
        }
        for key in candidates {
            let opened = match cipher {
                Cipher::AesCbc => open_cbc(&key.secret, payload),
                Cipher::AesGcm => open_gcm(&key.secret, aad, payload),
                Cipher::Secretbox => open_secretbox(&key.secret, payload),
            };
            if let Some(plaintext) = opened.filter(|p| serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok()) {
                return Ok(plaintext);
            }
        }
        Err(fail("the key does not decrypt it (wrong key, or damaged data)"))
    }

    fn all_keys(&self) -> impl Iterator<Item = (Cipher, &Key)> {
        self.rules
            .iter()
            .flat_map(|rule| rule.providers.iter())
            .flat_map(|provider| match provider {
                Provider::Keys(cipher, keys) => keys.iter().map(|k| (*cipher, k)).collect::<Vec<_>>(),
                Provider::Identity => Vec::new(),
            })
    }

    /// `aescbc:key2, aescbc:key1`: the names of every key, never their secrets.
    pub fn key_names(&self) -> String {
        let names: Vec<String> = self
            .all_keys()
            .map(|(c, k)| format!("{}:{}", c.name(), k.name))
            .collect();
        if names.is_empty() {
            "(none)".into()
        } else {
            names.join(", ")
        }
    }
}

/// The provider and key name of an encrypted value, and what follows its prefix.
pub fn describe(value: &[u8]) -> Option<(String, String)> {
    parse_prefix("", value)
        .ok()
        .map(|(cipher, key, _)| (cipher.name().to_string(), key.to_string()))
}

fn parse_prefix<'a>(object: &str, value: &'a [u8]) -> Result<(Cipher, &'a str, &'a [u8])> {
    let bad = || Error::Archive {
        path: object.to_string(),
        reason: "an encrypted entry does not start with k8s:enc:<provider>:v1:<key name>:".into(),
    };
    let rest = value.strip_prefix(PREFIX.as_bytes()).ok_or_else(bad)?;
    let mut parts = rest.splitn(4, |b| *b == b':');
    let (Some(provider), Some(b"v1"), Some(key), Some(payload)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let cipher = std::str::from_utf8(provider)
        .ok()
        .and_then(Cipher::from_name)
        .ok_or_else(bad)?;
    let key = std::str::from_utf8(key).map_err(|_| bad())?;
    Ok((cipher, key, payload))
}

fn names(pattern: &str, group: &str, plural: &str) -> bool {
    let (resource, pattern_group) = pattern.split_once('.').unwrap_or((pattern, ""));
    let group_matches = pattern_group == "*" || pattern_group == group;
    let resource_matches = resource == "*" || resource == plural;
    group_matches && resource_matches
}

fn parse_provider(provider: &serde_json::Map<String, serde_json::Value>) -> Result<Provider, String> {
    let [(name, settings)] = provider.iter().collect::<Vec<_>>()[..] else {
        return Err("each provider has exactly one of aescbc, aesgcm, secretbox, identity".into());
    };
    let name = name.as_str();
    if name == "identity" {
        return Ok(Provider::Identity);
    }
    let Some(cipher) = Cipher::from_name(name) else {
        return Err(format!(
            "provider {name:?} is not supported: use aescbc, aesgcm, secretbox or identity"
        ));
    };
    let settings: FileKeys = serde_json::from_value(settings.clone()).map_err(|e| format!("{name}: {e}"))?;
    if settings.keys.is_empty() {
        return Err(format!("{name} has no keys"));
    }
    let keys = settings
        .keys
        .into_iter()
        .map(|key| {
            let secret = BASE64
                .decode(key.secret.trim())
                .map_err(|e| format!("{name} key {:?}: secret is not base64: {e}", key.name))?;
            if !cipher.valid_key_lengths().contains(&secret.len()) {
                return Err(format!(
                    "{name} key {:?} is {} bytes long; {name} needs {:?}",
                    key.name,
                    secret.len(),
                    cipher.valid_key_lengths()
                ));
            }
            if key.name.is_empty() || key.name.contains(':') {
                return Err(format!(
                    "{name} key name {:?} must be non-empty and have no ':'",
                    key.name
                ));
            }
            Ok(Key { name: key.name, secret })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Provider::Keys(cipher, keys))
}

fn seal_cbc(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    let ciphertext = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext),
        24 => cbc::Encryptor::<aes::Aes192>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext),
        _ => cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext),
    };
    [iv.as_slice(), &ciphertext].concat()
}

fn open_cbc(key: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < 32 || !payload.len().is_multiple_of(16) {
        return None;
    }
    let (iv, ciphertext) = payload.split_at(16);
    match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new(key.into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok(),
        24 => cbc::Decryptor::<aes::Aes192>::new(key.into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok(),
        32 => cbc::Decryptor::<aes::Aes256>::new(key.into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .ok(),
        _ => None,
    }
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

fn seal_gcm(key: &[u8], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let payload = Payload { msg: plaintext, aad };
    let sealed = match key.len() {
        16 => aes_gcm::Aes128Gcm::new(key.into()).encrypt(nonce.into(), payload),
        24 => Aes192Gcm::new(key.into()).encrypt(nonce.into(), payload),
        _ => aes_gcm::Aes256Gcm::new(key.into()).encrypt(nonce.into(), payload),
    };
    // Encryption only fails for plaintexts over 64 GiB; objects are at most a few MiB.
    [nonce.as_slice(), &sealed.unwrap_or_default()].concat()
}

fn open_gcm(key: &[u8], aad: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < 12 + 16 {
        return None;
    }
    let (nonce, sealed) = payload.split_at(12);
    let payload = Payload { msg: sealed, aad };
    match key.len() {
        16 => aes_gcm::Aes128Gcm::new(key.into()).decrypt(nonce.into(), payload).ok(),
        24 => Aes192Gcm::new(key.into()).decrypt(nonce.into(), payload).ok(),
        32 => aes_gcm::Aes256Gcm::new(key.into()).decrypt(nonce.into(), payload).ok(),
        _ => None,
    }
}

fn seal_secretbox(key: &[u8], nonce: &[u8; 24], plaintext: &[u8]) -> Vec<u8> {
    let sealed = crypto_secretbox::XSalsa20Poly1305::new(key.into()).encrypt(nonce.into(), plaintext);
    [nonce.as_slice(), &sealed.unwrap_or_default()].concat()
}

fn open_secretbox(key: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    if key.len() != 32 || payload.len() < 24 + 16 {
        return None;
    }
    let (nonce, sealed) = payload.split_at(24);
    crypto_secretbox::XSalsa20Poly1305::new(key.into())
        .decrypt(nonce.into(), sealed)
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        key: String,
        plaintext: String,
        aad: String,
        aescbc: String,
        aesgcm: String,
        secretbox: String,
    }

    fn vectors() -> Vectors {
        serde_saphyr::from_str(include_str!("../fixtures/encryption-vectors.yaml")).unwrap()
    }

    fn config(providers: &str) -> EncryptionConfig {
        let yaml = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, widgets.example.com]\n  providers:\n{providers}"
        );
        EncryptionConfig::parse("test", &yaml).unwrap()
    }

    fn keys(provider: &str, names: &[(&str, &str)]) -> String {
        let keys: String = names
            .iter()
            .map(|(n, s)| format!("      - {{name: {n}, secret: \"{s}\"}}\n"))
            .collect();
        format!("  - {provider}:\n      keys:\n{keys}")
    }

    #[test]
    fn reads_values_written_by_other_implementations_and_writes_the_same_bytes() {
        let v = vectors();
        let key = BASE64.decode(&v.key).unwrap();
        for (provider, value) in [
            ("aescbc", &v.aescbc),
            ("aesgcm", &v.aesgcm),
            ("secretbox", &v.secretbox),
        ] {
            let config = config(&keys(provider, &[("key1", &v.key)]));
            let value = BASE64.decode(value).unwrap();
            let opened = config.open("Secret shop/db", v.aad.as_bytes(), &value).unwrap();
            assert_eq!(opened, v.plaintext.as_bytes(), "{provider}");
            assert_eq!(describe(&value), Some((provider.to_string(), "key1".to_string())));
        }
        // Same key, IV/nonce and plaintext give the other implementations' exact bytes.
        let body = |value: &str, prefix: &str| BASE64.decode(value).unwrap()[prefix.len()..].to_vec();
        let pt = v.plaintext.as_bytes();
        assert_eq!(seal_cbc(&key, &[7; 16], pt), body(&v.aescbc, "k8s:enc:aescbc:v1:key1:"));
        assert_eq!(
            seal_gcm(&key, &[9; 12], v.aad.as_bytes(), pt),
            body(&v.aesgcm, "k8s:enc:aesgcm:v1:key1:")
        );
        assert_eq!(
            seal_secretbox(&key, &[5; 24], pt),
            body(&v.secretbox, "k8s:enc:secretbox:v1:key1:")
        );
    }

    #[test]
    fn first_provider_writes_and_any_key_reads_after_rotation() {
        let v = vectors();
        let new_key = BASE64.encode([42u8; 32]);
        let old = config(&keys("aesgcm", &[("old", &v.key)]));
        let sealed = old.seal("", "secrets", b"aad", br#"{"a":1}"#).unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:old:"));
        let rotated = config(&format!(
            "{}{}",
            keys("secretbox", &[("new", &new_key)]),
            keys("aesgcm", &[("old", &v.key)])
        ));
        assert_eq!(rotated.open("Secret a/b", b"aad", &sealed).unwrap(), br#"{"a":1}"#);
        assert!(
            rotated
                .seal("", "secrets", b"aad", b"{}")
                .unwrap()
                .starts_with(b"k8s:enc:secretbox:v1:new:")
        );
        // Wrong place: GCM's authenticated data does not match.
        let moved = rotated.open("Secret a/c", b"other", &sealed).unwrap_err().to_string();
        assert!(
            moved.contains("Secret a/c") && moved.contains("secretbox:new, aesgcm:old"),
            "{moved}"
        );
    }

    #[test]
    fn only_listed_resources_are_encrypted_and_identity_first_means_plain() {
        let v = vectors();
        let config = config(&keys("aescbc", &[("k", &v.key)]));
        assert!(config.encrypts("", "secrets") && config.encrypts("example.com", "widgets"));
        assert!(!config.encrypts("", "configmaps") && !config.encrypts("other.com", "widgets"));
        let identity = EncryptionConfig::parse(
            "t",
            &format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n  - identity: {{}}\n{}", keys("aescbc", &[("k", &v.key)])),
        )
        .unwrap();
        assert!(!identity.encrypts("", "secrets"));
    }

    #[test]
    fn a_wrong_key_names_the_object_and_the_keys_tried() {
        let v = vectors();
        let wrong = config(&keys("aescbc", &[("key1", &BASE64.encode([1u8; 32]))]));
        let error = wrong
            .open("Secret shop/db", b"", &BASE64.decode(&v.aescbc).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("Secret shop/db") && error.contains("aescbc:key1") && error.contains("does not decrypt"),
            "{error}"
        );
        let renamed = config(&keys("aescbc", &[("key9", &v.key)]));
        let error = renamed
            .open("Secret shop/db", b"", &BASE64.decode(&v.aescbc).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no key of that provider and name") && error.contains("aescbc:key9"),
            "{error}"
        );
    }

    #[test]
    fn malformed_configurations_say_what_is_wrong() {
        let cases = [
            ("kind: Secret", "expected apiVersion apiserver.config.k8s.io/v1"),
            (
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []",
                "lists no resources",
            ),
            (
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{kms: {name: x}}]",
                "\"kms\" is not supported",
            ),
            (
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{aescbc: {keys: [{name: k, secret: 'c2hvcnQ='}]}}]",
                "5 bytes long",
            ),
            (
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: [{aescbc: {keys: [{name: k, secret: '!!'}]}}]",
                "not base64",
            ),
            ("{{{", "not an EncryptionConfiguration"),
        ];
        for (yaml, expected) in cases {
            let error = EncryptionConfig::parse("Secret stowage-system/keys", yaml)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected) && error.contains("Secret stowage-system/keys"),
                "{error}"
            );
        }
        let debug = format!("{:?}", config(&keys("aescbc", &[("k", &vectors().key)])));
        assert!(!debug.contains(&vectors().key) && debug.contains("aescbc:k"), "{debug}");
    }
}
