//! Reading Secret values. Values are returned to the caller and never logged; errors
//! name the Secret and key, never the value.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::{Error, Result};

/// The Secret `namespace/name`, or a MissingReference error saying what to create.
pub async fn get(client: &kube::Client, namespace: &str, name: &str) -> Result<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    secrets.get_opt(name).await?.ok_or_else(|| Error::MissingReference {
        reason: "SecretNotFound",
        message: format!("Secret '{namespace}/{name}' not found: create it or fix the reference"),
    })
}

/// The value of `key` in `secret` as UTF-8 text, or None when the key is absent.
pub fn value(secret: &Secret, key: &str) -> Result<Option<String>> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| bytes.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|text| text.clone().into_bytes())
        });
    bytes
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                Error::InvalidSpec(format!(
                    "key '{key}' of Secret '{}' is not UTF-8 text",
                    secret.metadata.name.as_deref().unwrap_or("")
                ))
            })
        })
        .transpose()
}

/// The value of `key` in Secret `namespace/name`; a missing Secret or key is a MissingReference error.
pub async fn key(client: &kube::Client, namespace: &str, name: &str, key: &str) -> Result<String> {
    let secret = get(client, namespace, name).await?;
    value(&secret, key)?.ok_or_else(|| Error::MissingReference {
        reason: "SecretKeyMissing",
        message: format!("Secret '{namespace}/{name}' has no key '{key}': add it or fix the reference"),
    })
}
