//! Object keys. [`Layout`] is the one type that decides where artifacts live, as Velero's
//! `object_store_layout.go` is for Velero:
//!
//! ```text
//! <prefix>/<kind>/<namespace or _cluster>/<name>/<YYYYMMDDTHHMMSSZ>.<ext>   default payload key
//! <prefix>/<kind>/<namespace or _cluster>/<rendered path template>.<ext>   templated payload key
//! <payload key>.manifest.json                                              its manifest
//! <payload key>.scratch/<NNNNN>                                            scratch objects of a run
//! ```
//!
//! Scratch objects are what a run cannot hold in memory until its payload is written (a
//! resource backup's index, which must come last in its archive): the run deletes them when
//! it ends, and they are never artifacts. Their suffix fits in the room the manifest suffix
//! keeps, so every payload key has room for them.
//!
//! `<prefix>/<kind>/<namespace>` is the scope, the tenancy boundary: artifacts of a namespaced
//! kind always live under their namespace's scope, and a path template can only choose where
//! inside it. `_cluster` cannot collide with a namespace (namespace names have no `_`).
//!
//! Every key is a valid `object_store::path::Path` (pass it to `Path::parse`, not `Path::from`,
//! which would percent-encode characters such as `%`): no leading or trailing `/`, no empty, `.`
//! or `..` segments, no control characters.

use chrono::{DateTime, Utc};

/// What a manifest key adds to its payload key.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// The scope segment of cluster-scoped kinds.
pub const CLUSTER_SCOPE: &str = "_cluster";

/// The longest key S3, GCS and Azure all accept is 1024 bytes; a payload key leaves room for
/// its manifest suffix.
const MAX_PAYLOAD_KEY_BYTES: usize = 1024 - MANIFEST_SUFFIX.len();

/// What a scratch key adds to its payload key, before the scratch object's number.
pub const SCRATCH_SUFFIX: &str = ".scratch/";

/// The highest scratch object number: five digits keep a scratch key within the 1024 bytes a
/// payload key leaves room for (`.scratch/` and five digits are as long as `.manifest.json`).
pub const MAX_SCRATCH_NUMBER: u32 = 99_999;

/// Builds every object key under one storage prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// A key or prefix that would not stay where it belongs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("storage prefix {prefix:?} is invalid: {reason}")]
    InvalidPrefix { prefix: String, reason: String },
    #[error("path {rendered:?} rendered by the path template is refused: {reason}")]
    InvalidPath { rendered: String, reason: String },
    #[error("unknown compression {0:?}: expected gzip, zstd or none")]
    UnknownCompression(String),
    #[error("invalid file extension {0:?}: expected dot-separated letters and digits such as \"gz.age\"")]
    InvalidExtension(String),
}

impl Layout {
    /// A layout under `prefix`; leading and trailing slashes are dropped, an empty prefix means
    /// the root of the storage.
    pub fn new(prefix: &str) -> Result<Layout, LayoutError> {
        let trimmed = prefix.trim_matches('/');
        if !trimmed.is_empty() {
            check_relative(trimmed).map_err(|reason| LayoutError::InvalidPrefix {
                prefix: prefix.to_string(),
                reason,
            })?;
        }
        Ok(Layout {
            prefix: trimmed.to_string(),
        })
    }

    /// The normalised prefix ("" for the root): every key of this layout starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<kind, lowercased>/<namespace or _cluster>`: where all artifacts of one kind in
    /// one namespace live. `kind` is a Stowage kind and `namespace` a Kubernetes namespace name.
    ///
    /// Nothing is dropped or repaired: an empty or malformed kind, namespace or name (which the
    /// API server does not allow) gives a key that `Path::parse` refuses, so the upload fails
    /// loudly instead of landing in another scope.
    pub fn scope(&self, kind: &str, namespace: Option<&str>) -> String {
        let kind = kind.to_ascii_lowercase();
        let namespace = namespace.unwrap_or(CLUSTER_SCOPE);
        if self.prefix.is_empty() {
            format!("{kind}/{namespace}")
        } else {
            format!("{}/{kind}/{namespace}", self.prefix)
        }
    }

    /// `<scope>/<name>/<UTC timestamp YYYYMMDDTHHMMSSZ>.<ext>`, the key of a backup without a path
    /// template. `name` is a Kubernetes object name and `ext` comes from [`extension`].
    pub fn default_key(&self, kind: &str, namespace: Option<&str>, name: &str, at: DateTime<Utc>, ext: &str) -> String {
        let file = at.format("%Y%m%dT%H%M%SZ");
        let key = format!("{}/{name}/{file}", self.scope(kind, namespace));
        if ext.is_empty() { key } else { format!("{key}.{ext}") }
    }

    /// `<scope>/<rendered>` plus whatever parts of `ext` the rendered name does not already end
    /// with (`x.sql.gz` + `gz.age` = `x.sql.gz.age`). A single leading `/` means the root of the
    /// scope; `.` and `..` segments, empty segments, backslashes, control characters and an empty
    /// path are refused, so a template can never leave its scope.
    pub fn templated_key(
        &self,
        kind: &str,
        namespace: Option<&str>,
        rendered: &str,
        ext: &str,
    ) -> Result<String, LayoutError> {
        let refuse = |reason: String| LayoutError::InvalidPath {
            rendered: rendered.to_string(),
            reason,
        };
        if !valid_extension(ext) {
            return Err(LayoutError::InvalidExtension(ext.to_string()));
        }
        let relative = rendered.strip_prefix('/').unwrap_or(rendered);
        check_relative(relative).map_err(refuse)?;
        let key = with_extension(&format!("{}/{relative}", self.scope(kind, namespace)), ext);
        if Layout::is_scratch_key(&key) {
            return Err(refuse(format!(
                "{key:?} ends like a run's scratch object ({SCRATCH_SUFFIX} and five digits), which listings ignore"
            )));
        }
        if key.len() > MAX_PAYLOAD_KEY_BYTES {
            return Err(refuse(format!(
                "the object key would be {} bytes long; object stores accept at most {MAX_PAYLOAD_KEY_BYTES} (with room for the manifest suffix)",
                key.len()
            )));
        }
        Ok(key)
    }

    /// The manifest of a payload: `<payload key>.manifest.json`.
    pub fn manifest_key(payload_key: &str) -> String {
        format!("{payload_key}{MANIFEST_SUFFIX}")
    }

    /// The payload a manifest key belongs to, or None if `manifest_key` is not a manifest key.
    pub fn payload_key_of_manifest(manifest_key: &str) -> Option<String> {
        let payload = manifest_key.strip_suffix(MANIFEST_SUFFIX)?;
        let file = payload.rsplit('/').next().unwrap_or(payload);
        (!file.is_empty()).then(|| payload.to_string())
    }

    /// Scratch object `number` (1 to [`MAX_SCRATCH_NUMBER`]) of a payload:
    /// `<payload key>.scratch/<number, five digits>`, so that they list in order.
    pub fn scratch_key(payload_key: &str, number: u32) -> String {
        format!("{payload_key}{SCRATCH_SUFFIX}{number:05}")
    }

    /// True when `key` is a scratch object's ([`Layout::scratch_key`]), not an artifact's.
    pub fn is_scratch_key(key: &str) -> bool {
        key.rsplit_once(SCRATCH_SUFFIX).is_some_and(|(payload, number)| {
            !payload.is_empty() && number.len() == 5 && number.bytes().all(|b| b.is_ascii_digit())
        })
    }

    /// Whether `key` lies strictly inside `scope`, compared segment by segment: `ns-a` does not
    /// contain `ns-a2/x`, and a key with `.`, `..` or empty segments is inside nothing.
    pub fn is_within(&self, scope: &str, key: &str) -> bool {
        let scope = scope.trim_matches('/');
        if check_relative(key).is_err() || (!scope.is_empty() && check_relative(scope).is_err()) {
            return false;
        }
        if scope.is_empty() {
            return true;
        }
        key.strip_prefix(scope)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
    }
}

/// The extension of a payload: the compression's (`gz`, `zst` or none) then `age` when encrypted,
/// e.g. `gz.age`. `compression` is `gzip`, `zstd` or `none` (or its extension: `gz`, `zst`, "").
/// Parses a key into an object store path without re-encoding it, refusing
/// what is not a plain key (for keys that come from users or from storage).
pub fn object_path(key: &str) -> Result<object_store::path::Path, LayoutError> {
    object_store::path::Path::parse(key).map_err(|e| LayoutError::InvalidPath {
        rendered: key.to_string(),
        reason: e.to_string(),
    })
}

pub fn extension(compression: &str, encrypted: bool) -> Result<String, LayoutError> {
    let compressed = match compression.to_ascii_lowercase().as_str() {
        "gzip" | "gz" => "gz",
        "zstd" | "zst" => "zst",
        "none" | "" => "",
        _ => return Err(LayoutError::UnknownCompression(compression.to_string())),
    };
    let encryption = if encrypted { "age" } else { "" };
    Ok([compressed, encryption]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("."))
}

/// Appends the parts of `ext` that `key` does not already end with: the longest leading run of
/// `ext`'s parts found at the end of the key is kept (compared without regard to ASCII case).
fn with_extension(key: &str, ext: &str) -> String {
    if ext.is_empty() {
        return key.to_string();
    }
    let parts: Vec<&str> = ext.split('.').collect();
    let present = (1..=parts.len())
        .rev()
        .find(|&n| {
            let suffix = format!(".{}", parts[..n].join("."));
            key.len() >= suffix.len()
                && key.as_bytes()[key.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        })
        .unwrap_or(0);
    let missing = &parts[present..];
    if missing.is_empty() {
        key.to_string()
    } else {
        format!("{key}.{}", missing.join("."))
    }
}

fn valid_extension(ext: &str) -> bool {
    ext.is_empty()
        || ext
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Checks a relative key or prefix, segment by segment, and says what is wrong with it.
fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".to_string());
    }
    if let Some(c) = path.chars().find(|c| *c == '\\' || c.is_control()) {
        return Err(if c == '\\' {
            "it contains a backslash: separate directories with \"/\"".to_string()
        } else {
            format!("it contains the control character U+{:04X}", u32::from(c))
        });
    }
    for segment in path.split('/') {
        match segment {
            "" => {
                return Err(
                    "it has an empty segment (\"//\", or a \"/\" at the end or after the leading one)".to_string(),
                );
            }
            "." | ".." => {
                return Err(format!(
                    "it has a {segment:?} segment: paths cannot leave their scope or refer to it"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use object_store::path::Path;

    use super::*;

    fn layout(prefix: &str) -> Layout {
        Layout::new(prefix).expect("valid prefix")
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        assert_eq!(layout("").prefix(), "");
        assert_eq!(layout("/").prefix(), "");
        assert_eq!(layout("backups").prefix(), "backups");
        assert_eq!(layout("/team/backups/").prefix(), "team/backups");
        for bad in ["a//b", "a/./b", "../x", "a/..", ".", "a\\b", "a\u{0}b", "a\nb"] {
            let err = Layout::new(bad).expect_err(bad);
            assert!(matches!(err, LayoutError::InvalidPrefix { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn scopes_and_default_keys() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 18, 57, 0).single().expect("valid");
        let l = layout("backups");
        assert_eq!(l.scope("ExecBackup", Some("shop")), "backups/execbackup/shop");
        assert_eq!(l.scope("ResourceBackup", None), "backups/resourcebackup/_cluster");
        assert_eq!(
            l.default_key("ExecBackup", Some("shop"), "mysql-nightly", at, "gz.age"),
            "backups/execbackup/shop/mysql-nightly/20261123T185700Z.gz.age"
        );
        assert_eq!(
            layout("").default_key("EtcdBackup", None, "etcd", at, ""),
            "etcdbackup/_cluster/etcd/20261123T185700Z"
        );
        assert!(Path::parse(l.default_key("ExecBackup", Some("shop"), "db", at, "zst")).is_ok());
    }

    #[test]
    fn malformed_names_give_keys_object_store_refuses() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 18, 57, 0).single().expect("valid");
        let l = layout("backups");
        for (namespace, name) in [
            (Some(""), "db"),
            (Some("shop"), ""),
            (Some("shop"), ".."),
            (Some(".."), "db"),
        ] {
            let key = l.default_key("ExecBackup", namespace, name, at, "gz");
            assert!(Path::parse(&key).is_err(), "{key:?} should be refused");
        }
    }

    #[test]
    fn manifest_keys() {
        assert_eq!(Layout::manifest_key("a/b/x.sql.gz"), "a/b/x.sql.gz.manifest.json");
        assert_eq!(
            Layout::payload_key_of_manifest("a/b/x.sql.gz.manifest.json").as_deref(),
            Some("a/b/x.sql.gz")
        );
        assert_eq!(Layout::payload_key_of_manifest("a/b/x.sql.gz"), None);
        assert_eq!(Layout::scratch_key("a/b/x.tar.gz", 7), "a/b/x.tar.gz.scratch/00007");
        assert!(Layout::is_scratch_key("a/b/x.tar.gz.scratch/00007"));
        for not_scratch in [
            "a/b/x.tar.gz",
            "a/b/x.tar.gz.manifest.json",
            "a/b.scratch/x.gz",
            ".scratch/00001",
        ] {
            assert!(!Layout::is_scratch_key(not_scratch), "{not_scratch}");
        }
        let refused = layout("backups").templated_key("ExecBackup", Some("s"), "x.scratch/00001", "");
        assert!(
            refused.is_err(),
            "a payload key that would be hidden from listings: {refused:?}"
        );
        assert_eq!(Layout::payload_key_of_manifest(".manifest.json"), None);
        assert_eq!(Layout::payload_key_of_manifest("a/.manifest.json"), None);
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("gzip", true), Ok("gz.age".to_string()));
        assert_eq!(extension("gzip", false), Ok("gz".to_string()));
        assert_eq!(extension("zstd", true), Ok("zst.age".to_string()));
        assert_eq!(extension("zst", false), Ok("zst".to_string()));
        assert_eq!(extension("none", true), Ok("age".to_string()));
        assert_eq!(extension("none", false), Ok(String::new()));
        assert_eq!(extension("", false), Ok(String::new()));
        assert_eq!(
            extension("lz4", false),
            Err(LayoutError::UnknownCompression("lz4".to_string()))
        );
    }

    #[test]
    fn keys_longer_than_object_stores_accept_are_refused() {
        let l = layout("backups");
        let fits = "x".repeat(MAX_PAYLOAD_KEY_BYTES - "backups/execbackup/s/".len());
        let key = l
            .templated_key("ExecBackup", Some("s"), &fits, "")
            .expect("fits exactly");
        assert_eq!(key.len(), MAX_PAYLOAD_KEY_BYTES);
        assert_eq!(Layout::manifest_key(&key).len(), 1024);
        assert_eq!(Layout::scratch_key(&key, MAX_SCRATCH_NUMBER).len(), 1024);
        let err = l
            .templated_key("ExecBackup", Some("s"), &fits, "gz")
            .expect_err("3 bytes too long");
        assert!(err.to_string().contains("would be 1013 bytes long"), "{err}");
    }

    /// tests/fixtures/layout.yaml: templated keys and is_within.
    mod fixtures {
        use serde::Deserialize;

        use super::*;
        use crate::template::{PathTemplate, TemplateVars};

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fixture {
            prefix: String,
            now: DateTime<Utc>,
            templated: Vec<TemplatedCase>,
            within: Vec<WithinCase>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct TemplatedCase {
            name: String,
            prefix: Option<String>,
            kind: String,
            namespace: Option<String>,
            rendered: Option<String>,
            template: Option<String>,
            #[serde(default)]
            object_name: String,
            ext: String,
            want: Option<String>,
            error: Option<String>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WithinCase {
            scope: String,
            key: String,
            want: bool,
        }

        fn fixture() -> Fixture {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/layout.yaml");
            let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {path}: {err}"));
            serde_saphyr::from_str(&text).unwrap_or_else(|err| panic!("parse {path}: {err}"))
        }

        fn key(fixture: &Fixture, case: &TemplatedCase) -> Result<String, String> {
            let l = layout(case.prefix.as_deref().unwrap_or(&fixture.prefix));
            let rendered = match (&case.rendered, &case.template) {
                (Some(rendered), None) => rendered.clone(),
                (None, Some(template)) => {
                    let vars = TemplateVars {
                        now: fixture.now,
                        name: case.object_name.clone(),
                        namespace: case.namespace.clone().unwrap_or_default(),
                        kind: case.kind.clone(),
                        schedule_name: String::new(),
                    };
                    let template = PathTemplate::parse(template).map_err(|err| format!("template: {err}"))?;
                    template.render(&vars).map_err(|err| format!("template: {err}"))?
                }
                _ => panic!("case {:?} needs exactly one of rendered and template", case.name),
            };
            l.templated_key(&case.kind, case.namespace.as_deref(), &rendered, &case.ext)
                .map_err(|err| err.to_string())
        }

        #[test]
        fn templated_keys_from_fixtures() {
            let fixture = fixture();
            assert!(fixture.templated.len() > 30, "the fixture lost its cases");
            let mut failures = Vec::new();
            for case in &fixture.templated {
                let got = key(&fixture, case);
                let ok = match (&got, &case.want, &case.error) {
                    (Ok(key), Some(want), None) => key == want && Path::parse(key).is_ok(),
                    (Err(err), None, Some(want)) => err.contains(want.as_str()),
                    (_, None, None) | (_, Some(_), Some(_)) => {
                        panic!("case {:?} needs exactly one of want and error", case.name)
                    }
                    _ => false,
                };
                if !ok {
                    let want = case.want.as_ref().or(case.error.as_ref());
                    failures.push(format!("{}\n  want: {want:?}\n  got:  {got:?}", case.name));
                }
            }
            let total = fixture.templated.len();
            assert!(
                failures.is_empty(),
                "{} of {total} cases failed:\n{}",
                failures.len(),
                failures.join("\n")
            );
        }

        #[test]
        fn is_within_from_fixtures() {
            let fixture = fixture();
            let l = layout(&fixture.prefix);
            let failures: Vec<String> = fixture
                .within
                .iter()
                .filter(|case| l.is_within(&case.scope, &case.key) != case.want)
                .map(|case| format!("is_within({:?}, {:?}) should be {}", case.scope, case.key, case.want))
                .collect();
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        }
    }
}
