#![allow(clippy::unwrap_used)]
//! The CRD schemas as an API server reads them: only formats it recognises, and CEL validation
//! rules that refuse what the controllers refuse. The test bed's 1.20 API server ignores CEL
//! rules, so they are evaluated here with kube's CEL validator, as a current server would.

use kube_cel::Validator;
use serde_json::{Value, json};

/// The openAPIV3Schema of each CRD, by kind.
fn schemas() -> Vec<(String, Value)> {
    stowage_api::crds()
        .into_iter()
        .map(|crd| {
            let schema = crd.spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap();
            (crd.spec.names.kind, serde_json::to_value(schema).unwrap())
        })
        .collect()
}

fn schema(kind: &str) -> Value {
    schemas().into_iter().find(|(k, _)| k == kind).unwrap().1
}

/// Every `format` in `schema` with its JSON path and its `type`.
fn formats(schema: &Value, path: &str, found: &mut Vec<(String, String, String)>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(format)) = map.get("format") {
                let kind = map.get("type").and_then(Value::as_str).unwrap_or_default();
                found.push((path.to_string(), kind.to_string(), format.clone()));
            }
            for (key, value) in map {
                formats(value, &format!("{path}.{key}"), found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                formats(item, &format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// Formats every API server since 1.0 validates (apiextensions-apiserver's formats.go; string
/// formats are compared without dashes, so `date-time` is `datetime`). Any other is dropped
/// with a warning at `kubectl apply` by a current server.
fn recognised(kind: &str, format: &str) -> bool {
    const STRING_FORMATS: &[&str] = &[
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
        "quantity",
    ];
    match kind {
        "integer" => matches!(format, "int32" | "int64"),
        "number" => matches!(format, "float" | "double"),
        "string" | "" => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        _ => false,
    }
}

#[test]
fn every_schema_uses_only_formats_an_api_server_recognises() {
    let mut unrecognised = Vec::new();
    let mut integers = 0;
    for (kind, schema) in schemas() {
        let mut found = Vec::new();
        formats(&schema, &kind, &mut found);
        integers += found.iter().filter(|(_, kind, _)| kind == "integer").count();
        unrecognised.extend(found.into_iter().filter(|(_, kind, format)| !recognised(kind, format)));
    }
    assert!(integers > 10, "the schemas have integer fields to check");
    assert!(unrecognised.is_empty(), "{unrecognised:#?}");
}

#[test]
fn unsigned_fields_stay_unsigned() {
    let level = &schema("EtcdBackup")["properties"]["spec"]["properties"]["compression"]["properties"]["level"];
    assert_eq!(level["format"], "int64", "a u32 needs an int64: {level}");
    assert_eq!(level["minimum"], 1.0, "{level}");
    let stored =
        &schema("ResourceBackup")["properties"]["status"]["properties"]["artifact"]["properties"]["storedBytes"];
    assert_eq!(stored["format"], "int64", "{stored}");
    assert_eq!(stored["minimum"], 0.0, "{stored}");
}

/// The messages of the CEL rules `kind`'s schema refuses `object` with (empty: accepted).
fn refusals(kind: &str, object: Value) -> Vec<String> {
    match Validator::new().validate(&schema(kind), &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|error| error.message).collect(),
    }
}

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "db"}, "spec": spec,
    })
}

#[test]
fn an_exec_restore_names_exactly_one_source_and_all_a_stored_one_needs() {
    let command = json!({"command": ["sh", "-c", "psql"]});
    let template = json!({"spec": {"containers": [{"name": "db", "image": "postgres"}]}});
    let storage = json!({"name": "minio", "path": "db/1.sql.gz"});
    let refused = |spec| refusals("ExecRestore", object("ExecRestore", spec));

    assert_eq!(refused(json!({"backupRef": {"name": "nightly"}})), Vec::<String>::new());
    assert_eq!(
        refused(json!({"storage": storage, "restore": command, "template": template})),
        Vec::<String>::new()
    );
    assert_eq!(
        refused(json!({})),
        ["give exactly one of backupRef, storage"],
        "neither"
    );
    assert_eq!(
        refused(
            json!({"backupRef": {"name": "nightly"}, "storage": storage, "restore": command, "template": template})
        ),
        ["give exactly one of backupRef, storage"],
        "both"
    );
    assert_eq!(
        refused(json!({"storage": {"name": "minio"}, "restore": command})),
        ["with storage, also give storage.path, restore, template"]
    );
}

#[test]
fn a_resource_restore_names_exactly_one_source() {
    let refused = |spec| refusals("ResourceRestore", object("ResourceRestore", spec));
    let storage = json!({"name": "minio", "path": "cluster/1.tar.gz"});
    assert_eq!(refused(json!({"backupName": "nightly"})), Vec::<String>::new());
    assert_eq!(refused(json!({"storage": storage})), Vec::<String>::new());
    let message = ["give exactly one of backupName, storage"];
    assert_eq!(refused(json!({})), message);
    assert_eq!(refused(json!({"backupName": "nightly", "storage": storage})), message);
}

#[test]
fn a_volume_backup_names_its_volumes_exactly_one_way() {
    let refused = |spec| refusals("VolumeBackup", object("VolumeBackup", spec));
    let application = json!({"kind": "Deployment", "name": "web"});
    let selector = json!({"matchLabels": {"app": "web"}});
    assert_eq!(refused(json!({"applicationRef": application})), Vec::<String>::new());
    assert_eq!(refused(json!({"pvcNames": ["data"]})), Vec::<String>::new());
    assert_eq!(refused(json!({"pvcSelector": selector})), Vec::<String>::new());
    // An empty list names nothing, as the controller reads it.
    assert_eq!(
        refused(json!({"pvcNames": [], "pvcSelector": selector})),
        Vec::<String>::new()
    );
    let message = ["give exactly one of applicationRef, pvcNames, pvcSelector"];
    assert_eq!(refused(json!({})), message);
    assert_eq!(refused(json!({"pvcNames": ["data"], "pvcSelector": selector})), message);
    assert_eq!(
        refused(json!({"applicationRef": application, "pvcNames": ["data"]})),
        message
    );
}

#[test]
fn a_backup_storage_has_the_section_of_its_type() {
    let refused = |spec| refusals("BackupStorage", object("BackupStorage", spec));
    assert_eq!(
        refused(json!({"type": "S3", "s3": {"bucket": "backups"}})),
        Vec::<String>::new()
    );
    assert_eq!(
        refused(json!({"type": "Filesystem", "filesystem": {"path": "/backups"}})),
        Vec::<String>::new()
    );
    assert_eq!(
        refused(json!({"type": "GCS", "s3": {"bucket": "backups"}})),
        ["type GCS needs the gcs section"]
    );
    assert_eq!(
        refused(json!({"type": "Azure"})),
        ["type Azure needs the azure section"]
    );
}

/// The examples are what users apply first: a current server must take every one of them.
#[test]
fn every_example_passes_the_rules() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for scenario in std::fs::read_dir(&examples).unwrap() {
        for file in std::fs::read_dir(scenario.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for object in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
                let kind = object["kind"].as_str().unwrap_or_default().to_string();
                if object["apiVersion"] != "stowage.io/v1alpha1" {
                    continue;
                }
                checked += 1;
                assert_eq!(refusals(&kind, object), Vec::<String>::new(), "{}", path.display());
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} Stowage objects in {}",
        examples.display()
    );
}

/// Every rule names only fields its schema has, so a renamed field cannot leave a rule that
/// silently tests nothing.
#[test]
fn every_rule_names_fields_of_its_own_schema() {
    fn check(schema: &Value, path: &str, rules_seen: &mut usize, problems: &mut Vec<String>) {
        let Value::Object(map) = schema else { return };
        let properties = map.get("properties").and_then(Value::as_object);
        for rule in map
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            *rules_seen += 1;
            let text = rule["rule"].as_str().unwrap_or_default();
            for reference in text.split("self.").skip(1) {
                let field: String = reference
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !properties.is_some_and(|properties| properties.contains_key(&field)) {
                    problems.push(format!(
                        "{path}: rule {text:?} names {field:?}, which is not a field here"
                    ));
                }
            }
        }
        for (key, value) in map {
            match value {
                Value::Object(_) => check(value, &format!("{path}.{key}"), rules_seen, problems),
                Value::Array(items) => items
                    .iter()
                    .for_each(|item| check(item, &format!("{path}.{key}[]"), rules_seen, problems)),
                _ => {}
            }
        }
    }
    let mut rules_seen = 0;
    let mut problems = Vec::new();
    for (kind, schema) in schemas() {
        check(&schema, &kind, &mut rules_seen, &mut problems);
    }
    assert!(rules_seen >= 8, "only {rules_seen} rules");
    assert!(problems.is_empty(), "{problems:#?}");
}
