//! Names of the objects a VolumeBackup makes, kept within Kubernetes' length limits.

/// `<parent>-<suffix>` cut to `max` characters (the parent is shortened, the suffix kept),
/// never ending in `-` or `.`.
pub fn child(parent: &str, suffix: &str, max: usize) -> String {
    let keep = max.saturating_sub(suffix.len() + 1);
    let parent = if parent.len() > keep {
        parent[..keep].trim_end_matches(['-', '.'])
    } else {
        parent
    };
    format!("{parent}-{suffix}")
}

/// A label value: at most 63 characters, alphanumeric at both ends.
pub fn label_value(name: &str) -> String {
    let cut = if name.len() > 63 { &name[..63] } else { name };
    cut.trim_end_matches(['-', '.']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_fit_their_limit() {
        assert_eq!(child("nightly", "data", 63), "nightly-data");
        let long = "a".repeat(70);
        let name = child(&long, "copy-0", 63);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-copy-0"));
        assert_eq!(label_value(&format!("{}-b", "x".repeat(62))), "x".repeat(62));
    }
}
