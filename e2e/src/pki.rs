//! Fresh certificates for the test bed's servers, generated in-process with rcgen so that no
//! openssl CLI is needed. Every key is ECDSA P-256 (quick to generate; Go's TLS and key
//! loaders in kube-apiserver, kube-controller-manager and etcd all accept PKCS#8 EC keys).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A PEM certificate and its PEM private key, both also written to files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that signs serving and client certificates.
pub struct CertificateAuthority {
    pub files: CertFiles,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("files", &self.files)
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a new CA and writes `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("stowage test bed {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let files = write_pair(dir, name, cert.pem(), key.serialize_pem())?;
        Ok(Self {
            files,
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for 127.0.0.1 and localhost (`CA:FALSE`, serverAuth): rustls
    /// refuses a CA certificate presented as a server certificate.
    pub fn issue_server(&self, dir: &Path, name: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, name, params)
    }

    /// A client certificate with the given common name (clientAuth).
    pub fn issue_client(&self, dir: &Path, name: &str, common_name: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, name, params)
    }

    fn issue(&self, dir: &Path, name: &str, mut params: CertificateParams) -> anyhow::Result<CertFiles> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().with_context(|| format!("generating the key of {name}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate of {name}"))?;
        write_pair(dir, name, cert.pem(), key.serialize_pem())
    }
}

/// A key pair for signing and verifying service-account tokens: `<dir>/<name>.key` (PKCS#8)
/// and `<dir>/<name>.pub` (PKIX public key). Returns (private, public) paths.
pub fn write_signing_key(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = KeyPair::generate().context("generating the service-account key")?;
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    write_private(&private, &key.serialize_pem())?;
    std::fs::write(&public, key.public_key_pem()).with_context(|| format!("writing {}", public.display()))?;
    Ok((private, public))
}

fn write_pair(dir: &Path, name: &str, cert_pem: String, key_pem: String) -> anyhow::Result<CertFiles> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert_pem).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key_pem)?;
    Ok(CertFiles {
        cert_path,
        key_path,
        cert_pem,
        key_pem,
    })
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
