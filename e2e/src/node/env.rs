//! A container's environment, resolved as a kubelet does: the `kubernetes` Service's variables
//! (pointing at the API server as the host reaches it), then `envFrom`, then `env` in order, with
//! `$(VAR)` references expanded and values taken from Secrets, ConfigMaps and the Pod. Other
//! Services' variables (`enableServiceLinks`) are not set.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EndpointPort, Endpoints, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};
use kube::Api;

/// Key → value of a Secret or ConfigMap, or `None` when it does not exist.
pub(crate) async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {namespace}/{name}"))?
    else {
        return Ok(None);
    };
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect();
    for (key, value) in secret.string_data.unwrap_or_default() {
        data.insert(key, value.into_bytes());
    }
    Ok(Some(data))
}

/// See [`secret_data`].
pub(crate) async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(config_map) = config_maps
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {namespace}/{name}"))?
    else {
        return Ok(None);
    };
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .binary_data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.0))
        .collect();
    for (key, value) in config_map.data.unwrap_or_default() {
        data.insert(key, value.into_bytes());
    }
    Ok(Some(data))
}

/// The container's environment variables, in the order a kubelet would set them.
pub(crate) async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(existing, _)| *existing != name);
        env.push((name, value));
    };
    if let Some(name) = &pod.metadata.name {
        set(&mut env, "HOSTNAME".into(), name.clone());
    }
    // The `kubernetes` Service's variables come first (a kubelet sets them whatever
    // enableServiceLinks says), so the container's own env can use and override them.
    for (name, value) in kubernetes_service_env(client).await? {
        set(&mut env, name, value);
    }
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(secret) = &source.secret_ref {
            (
                secret_data(client, namespace, &secret.name).await?,
                format!("Secret {}", secret.name),
                secret.optional,
            )
        } else if let Some(config_map) = &source.config_map_ref {
            (
                config_map_data(client, namespace, &config_map.name).await?,
                format!("ConfigMap {}", config_map.name),
                config_map.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, value) in data {
                    set(
                        &mut env,
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => bail!("envFrom refers to {what}, which does not exist in namespace {namespace}"),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(selector) = &from.secret_key_ref {
                    let data = secret_data(client, namespace, &selector.name).await?;
                    match lookup(data, &selector.key, selector.optional, "Secret", &selector.name)? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(selector) = &from.config_map_key_ref {
                    let data = config_map_data(client, namespace, &selector.name).await?;
                    match lookup(data, &selector.key, selector.optional, "ConfigMap", &selector.name)? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(field) = &from.field_ref {
                    field_value(pod, field)?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_value(container, resource)
                } else {
                    String::new()
                }
            }
            (Some(value), None) => expand(value, &env),
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and the Docker-link style
/// `KUBERNETES_PORT*` variables a kubelet derives from the `kubernetes` Service. A kubelet gives
/// the Service's cluster IP and port; Pods here run on the host, where no cluster IP routes, so
/// the values are the API server's own address, the endpoint of that Service (`127.0.0.1:<port>`
/// on the test bed).
async fn kubernetes_service_env(client: &kube::Client) -> anyhow::Result<Vec<(String, String)>> {
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let endpoints = endpoints
        .get("kubernetes")
        .await
        .context("reading Endpoints default/kubernetes for the KUBERNETES_SERVICE_* variables")?;
    let subset = endpoints
        .subsets
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("Endpoints default/kubernetes has no subsets: the API server has not published its address")?;
    let host = subset
        .addresses
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|address| address.ip)
        .context("Endpoints default/kubernetes has no address")?;
    let ports = subset.ports.unwrap_or_default();
    let first = ports.first().context("Endpoints default/kubernetes has no port")?;
    let mut env = vec![
        ("KUBERNETES_SERVICE_HOST".to_owned(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), first.port.to_string()),
    ];
    for port in &ports {
        if let Some(name) = port.name.as_deref().filter(|name| !name.is_empty()) {
            let name = name.to_uppercase().replace('-', "_");
            env.push((format!("KUBERNETES_SERVICE_PORT_{name}"), port.port.to_string()));
        }
    }
    let protocol = |port: &EndpointPort| port.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase();
    env.push((
        "KUBERNETES_PORT".to_owned(),
        format!("{}://{host}:{}", protocol(first), first.port),
    ));
    for port in &ports {
        let proto = protocol(port);
        let prefix = format!("KUBERNETES_PORT_{}_{}", port.port, proto.to_uppercase());
        env.push((prefix.clone(), format!("{proto}://{host}:{}", port.port)));
        env.push((format!("{prefix}_PROTO"), proto));
        env.push((format!("{prefix}_PORT"), port.port.to_string()));
        env.push((format!("{prefix}_ADDR"), host.clone()));
    }
    Ok(env)
}

fn lookup(
    data: Option<BTreeMap<String, Vec<u8>>>,
    key: &str,
    optional: Option<bool>,
    kind: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    match data.as_ref().and_then(|data| data.get(key)) {
        Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
        None if optional == Some(true) => Ok(None),
        None if data.is_none() => bail!("{kind} {name} does not exist"),
        None => bail!("{kind} {name} has no key {key:?}"),
    }
}

/// The downward API: a field of the Pod, as `fieldRef.fieldPath` names it.
pub(crate) fn field_value(pod: &Pod, field: &ObjectFieldSelector) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = field.field_path.as_str();
    let map_entry = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|map| map.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|spec| spec.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => "127.0.0.1".into(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => match map_entry(&meta.labels, "metadata.labels['")
            .or_else(|| map_entry(&meta.annotations, "metadata.annotations['"))
        {
            Some(value) => value,
            None => bail!("fieldRef {path:?} is not supported by the node simulator"),
        },
    };
    Ok(value)
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value:?}\n"))
        .collect()
}

/// `resourceFieldRef`: the container's limit or request as written (no divisor arithmetic).
pub(crate) fn resource_value(container: &Container, selector: &ResourceFieldSelector) -> String {
    let resources = container.resources.as_ref();
    let (table, name) = match selector.resource.split_once('.') {
        Some(("limits", name)) => (resources.and_then(|r| r.limits.as_ref()), name),
        Some(("requests", name)) => (resources.and_then(|r| r.requests.as_ref()), name),
        _ => (None, ""),
    };
    table
        .and_then(|table| table.get(name))
        .map(|quantity| quantity.0.clone())
        .unwrap_or_else(|| "0".into())
}

/// Expands `$(NAME)` from the variables defined so far; `$$` escapes a `$`, unknown references
/// stay as written (Kubernetes' rules).
pub(crate) fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
        {
            let name = &reference[..end];
            match env.iter().rev().find(|(existing, _)| existing == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&rest[at..at + 2 + end + 1]),
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_references_like_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "two".to_owned())];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$$(A) $(C) $ end$", &env), "$(A) $(C) $ end$");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
