//! From an EtcdBackup to what one run needs: the etcd target (endpoints, TLS from the
//! Secret), the storage and object keys, compression and recipients. Everything the user can
//! get wrong is found here, before a byte moves, and named in the error.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use stowage_api::EtcdBackup;
use stowage_api::NamespacedSecretRef;
use stowage_api::backup_schedule::SCHEDULE_LABEL;
use stowage_core::template::TemplateVars;
use stowage_core::{Progress, Recipients};
use stowage_operator::{Context, Error as KitError, ResolvedStorage, resolve_storage, secrets};

use crate::backup::{BackupPlan, KIND, certs_key, snapshot_extension};
use crate::certs;
use crate::snapshot::{EtcdTarget, TlsPem};

/// Keys of the credentials Secret.
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "client.crt";
pub const KEY_KEY: &str = "client.key";

/// Everything one run needs.
#[derive(Debug)]
pub struct Prepared {
    pub plan: BackupPlan,
    pub target: EtcdTarget,
    pub storage: ResolvedStorage,
}

/// The schedule that created `backup` (its label), else its own name: the metric label.
pub fn schedule_of(backup: &EtcdBackup, name: &str) -> String {
    backup
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SCHEDULE_LABEL))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

/// Checks the spec and gathers the run's inputs.
pub async fn prepare(ctx: &Context, backup: &EtcdBackup, name: &str, now: DateTime<Utc>) -> Result<Prepared, KitError> {
    let spec = &backup.spec;
    spec.compression
        .validate()
        .map_err(|e| KitError::InvalidSpec(format!("spec.compression: {e}")))?;
    let recipients = match &spec.encryption {
        Some(encryption) if !encryption.recipients.is_empty() => Recipients::parse(&encryption.recipients)?,
        _ => Recipients::default(),
    };
    for endpoint in spec.effective_endpoints() {
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(KitError::InvalidSpec(format!(
                "spec.endpoints: {endpoint:?} is not a URL: write it as https://HOST:PORT or http://HOST:PORT"
            )));
        }
    }
    let tls = match &spec.credentials_secret_ref {
        Some(reference) => Some(read_tls(ctx, reference).await?),
        None => None,
    };
    let certs_dir = spec
        .certs_dir
        .as_deref()
        .filter(|dir| !dir.trim().is_empty())
        .map(PathBuf::from);
    if let Some(dir) = &certs_dir {
        certs::check_dir(dir).map_err(crate::Error::into_kit)?;
    }

    let storage = resolve_storage(ctx, &spec.storage.name, None).await?;
    let encrypted = !recipients.is_empty();
    let ext = snapshot_extension(&spec.compression, encrypted);
    let vars = TemplateVars {
        now,
        name: name.to_string(),
        namespace: String::new(),
        kind: KIND.to_string(),
        schedule_name: backup
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SCHEDULE_LABEL))
            .cloned()
            .unwrap_or_default(),
    };
    let snapshot_key = storage.key_for(&vars, spec.storage.path.as_deref(), &ext)?;
    let certs = certs_dir.map(|dir| {
        let key = certs_key(&snapshot_key, &spec.compression, encrypted);
        (dir, key)
    });
    let plan = BackupPlan {
        store: storage.store.clone(),
        snapshot_key,
        certs,
        compression: spec.compression.clone(),
        recipients: Arc::new(recipients),
        source: format!("EtcdBackup {name}"),
        progress: Progress::default(),
    };
    let target = EtcdTarget {
        endpoints: spec.effective_endpoints(),
        tls,
    };
    Ok(Prepared { plan, target, storage })
}

/// The TLS material from the Secret: `ca.crt` is required, `client.crt` and `client.key`
/// come together or not at all.
async fn read_tls(ctx: &Context, reference: &NamespacedSecretRef) -> Result<TlsPem, KitError> {
    let (namespace, name) = (&reference.namespace, &reference.name);
    if namespace.is_empty() || name.is_empty() {
        return Err(KitError::InvalidSpec(
            "spec.credentialsSecretRef needs both namespace and name".into(),
        ));
    }
    let secret = secrets::get(&ctx.client, namespace, name).await?;
    let missing = |key: &str| KitError::MissingReference {
        reason: "SecretKeyMissing",
        message: format!(
            "Secret '{namespace}/{name}' has no key '{key}': it needs {CA_KEY}, {CERT_KEY} and {KEY_KEY} (PEM)"
        ),
    };
    let ca = secrets::value(&secret, CA_KEY)?.ok_or_else(|| missing(CA_KEY))?;
    let client = match (secrets::value(&secret, CERT_KEY)?, secrets::value(&secret, KEY_KEY)?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(missing(KEY_KEY)),
        (None, Some(_)) => return Err(missing(CERT_KEY)),
    };
    Ok(TlsPem { ca, client })
}
