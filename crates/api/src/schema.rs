//! What the CRD schemas say beyond the derived structure: only the integer formats an API
//! server recognises, and CEL validation rules (`x-kubernetes-validations`) for fields that
//! go together, so that `kubectl apply` refuses a spec that gives both or neither.
//!
//! API servers enforce CEL rules from 1.25 on, so on every version Stowage supports (1.29+).
//! An older server (the test bed's 1.20) drops them when the CRD is stored; the controllers
//! check the same rules at reconcile and report an `InvalidSpec` condition and Event.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::Schema;
use serde_json::{Value, json};

/// Adds a rule to `schema` (an object's schema, `self` in the rule) that exactly one of
/// `fields` is set. A list counts as set when it has an item: an empty one is the same as an
/// absent one to the controllers.
pub(crate) fn exactly_one_of(schema: &mut Schema, fields: &[&str]) {
    let terms: Vec<String> = fields
        .iter()
        .map(|field| format!("({} ? 1 : 0)", is_set(schema, field)))
        .collect();
    add_rule(
        schema,
        format!("{} == 1", terms.join(" + ")),
        format!("give exactly one of {}", fields.join(", ")),
    );
}

/// Adds a rule to `schema` that when `field` is set, every one of `required` (paths below
/// `self`, e.g. `storage.path`) is set too.
pub(crate) fn required_with(schema: &mut Schema, field: &str, required: &[&str]) {
    let all: Vec<String> = required.iter().map(|path| format!("has(self.{path})")).collect();
    add_rule(
        schema,
        format!("!has(self.{field}) || ({})", all.join(" && ")),
        format!("with {field}, also give {}", required.join(", ")),
    );
}

/// Adds a rule to `schema` that the section of `discriminator`'s value is set: each
/// `(value, section)` pair says which field holds the settings for that value.
pub(crate) fn section_for_each_value(schema: &mut Schema, discriminator: &str, sections: &[(&str, &str)]) {
    for (value, section) in sections {
        add_rule(
            schema,
            format!("self.{discriminator} != '{value}' || has(self.{section})"),
            format!("{discriminator} {value} needs the {section} section"),
        );
    }
}

/// `has(self.field)`, and for a list also that it has an item.
fn is_set(schema: &Schema, field: &str) -> String {
    let is_list = schema
        .get("properties")
        .and_then(|properties| properties.get(field))
        .and_then(|property| property.get("type"))
        .is_some_and(|kind| kind == "array");
    if is_list {
        format!("(has(self.{field}) && size(self.{field}) > 0)")
    } else {
        format!("has(self.{field})")
    }
}

fn add_rule(schema: &mut Schema, rule: String, message: String) {
    let rules = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    if let Value::Array(rules) = rules {
        rules.push(json!({"rule": rule, "message": message}));
    }
}

/// Rewrites the integer formats schemars derives for Rust's other integer types (`uint32`
/// and `uint64` for `u32` and `u64`, `int16`, `uint8`, …), which no API server knows (a
/// current one warns at `kubectl apply` and drops them), into `int32` or `int64`, whichever
/// holds the type. An unsigned type's `minimum: 0` stays and keeps it unsigned.
pub(crate) fn recognised_integer_formats(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else {
            continue;
        };
        let Ok(mut value) = serde_json::to_value(&*schema) else {
            continue;
        };
        rewrite_integer_formats(&mut value);
        if let Ok(rewritten) = serde_json::from_value(value) {
            *schema = rewritten;
        }
    }
}

fn rewrite_integer_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_integer = map.get("type").is_some_and(|kind| kind == "integer");
            if is_integer && let Some(Value::String(format)) = map.get_mut("format") {
                *format = match format.as_str() {
                    // A u32 does not fit an int32.
                    "int8" | "int16" | "int32" | "uint8" | "uint16" => "int32",
                    _ => "int64",
                }
                .to_string();
            }
            map.values_mut().for_each(rewrite_integer_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_integer_formats),
        _ => {}
    }
}
