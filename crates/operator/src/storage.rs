//! BackupStorage resolution: from a name in a spec to core's object store, with its
//! credentials read from the referenced Secret and `allowedNamespaces` enforced.

use std::sync::Arc;

use kube::Api;
use object_store::ObjectStore;
use stowage_api::{BackupStorage, BackupStorageSpec};
use stowage_core::template::{PathTemplate, TemplateVars};
use stowage_core::{Credentials, Layout};

use crate::{Context, Error, Result, secrets};

/// Credential keys a BackupStorage's Secret may hold (the documented keys).
const CREDENTIAL_KEYS: [&str; 6] = [
    "accessKeyId",
    "secretAccessKey",
    "sessionToken",
    "serviceAccountJson",
    "accountKey",
    "sasToken",
];

/// A BackupStorage ready for the data path.
#[derive(Clone)]
pub struct ResolvedStorage {
    /// Name of the BackupStorage.
    pub name: String,
    /// Its spec.
    pub spec: BackupStorageSpec,
    /// The object store, with credentials.
    pub store: Arc<dyn ObjectStore>,
    /// Key layout under the storage's prefix.
    pub layout: Layout,
}

impl std::fmt::Debug for ResolvedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedStorage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Resolves BackupStorage `name` for an object in `namespace` (None for cluster-scoped kinds,
/// which only cluster administrators create).
pub async fn resolve(ctx: &Context, name: &str, namespace: Option<&str>) -> Result<ResolvedStorage> {
    if name.is_empty() {
        return Err(Error::InvalidSpec(
            "spec.storage.name is empty: name a BackupStorage".into(),
        ));
    }
    let storages: Api<BackupStorage> = Api::all(ctx.client.clone());
    let storage = storages.get_opt(name).await?.ok_or_else(|| Error::MissingReference {
        reason: "StorageNotFound",
        message: format!("BackupStorage '{name}' not found: create it or fix spec.storage.name"),
    })?;
    let spec = storage.spec;
    if let Some(namespace) = namespace
        && !spec.allows(namespace)
    {
        return Err(Error::Forbidden(format!(
            "BackupStorage '{name}' does not allow namespace '{namespace}' (allowedNamespaces: {}): add it there or use another storage",
            spec.allowed_namespaces.join(", ")
        )));
    }
    let credentials = match &spec.credentials_secret_ref {
        Some(reference) => {
            let secret = secrets::get(&ctx.client, &reference.namespace, &reference.name).await?;
            let mut values = serde_json::Map::new();
            for key in CREDENTIAL_KEYS {
                if let Some(value) = secrets::value(&secret, key)? {
                    values.insert(key.to_string(), value.into());
                }
            }
            if values.is_empty() {
                return Err(Error::MissingReference {
                    reason: "SecretKeyMissing",
                    message: format!(
                        "Secret '{}/{}' of BackupStorage '{name}' has none of the keys {}",
                        reference.namespace,
                        reference.name,
                        CREDENTIAL_KEYS.join(", ")
                    ),
                });
            }
            serde_json::from_value::<Credentials>(values.into())
                .map_err(|error| Error::InvalidSpec(format!("credentials of BackupStorage '{name}': {error}")))?
        }
        None => Credentials::default(),
    };
    let store = stowage_core::storage::build(&spec.storage, &credentials)
        .map_err(|error| Error::InvalidSpec(format!("BackupStorage '{name}': {error}")))?;
    let layout = Layout::new(&spec.storage.prefix)
        .map_err(|error| Error::InvalidSpec(format!("BackupStorage '{name}': {error}")))?;
    Ok(ResolvedStorage {
        name: name.to_string(),
        spec,
        store,
        layout,
    })
}

impl ResolvedStorage {
    /// The object key for the backup `vars` describes (kind, namespace, name, schedule, time):
    /// the rendered path template when given (always inside the object's own scope), else the
    /// default `<name>/<timestamp>.<ext>`.
    pub fn key_for(&self, vars: &TemplateVars, path_template: Option<&str>, ext: &str) -> Result<String> {
        let namespace = Some(vars.namespace.as_str()).filter(|namespace| !namespace.is_empty());
        let invalid = |error: &dyn std::fmt::Display| Error::InvalidSpec(format!("spec.storage.path: {error}"));
        match path_template.filter(|template| !template.trim().is_empty()) {
            None => Ok(self
                .layout
                .default_key(&vars.kind, namespace, &vars.name, vars.now, ext)),
            Some(source) => {
                let template = PathTemplate::parse(source).map_err(|error| invalid(&error))?;
                let rendered = template.render(vars).map_err(|error| invalid(&error))?;
                self.layout
                    .templated_key(&vars.kind, namespace, &rendered, ext)
                    .map_err(|error| invalid(&error))
            }
        }
    }

    /// Checks that a user-given artifact path (e.g. a restore of another run's artifact) lies in
    /// the area `namespace` may read: its own scope of `kind`, or anywhere for cluster-scoped kinds.
    pub fn check_readable(&self, kind: &str, namespace: Option<&str>, path: &str) -> Result<()> {
        let scope = match namespace {
            Some(namespace) => self.layout.scope(kind, Some(namespace)),
            None => self.layout.prefix().to_string(),
        };
        if self.layout.is_within(&scope, path) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "path '{path}' is outside '{scope}/', the area of storage '{}' this object may read",
                self.name
            )))
        }
    }
}
