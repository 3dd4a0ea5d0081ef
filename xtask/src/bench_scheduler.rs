//! `cargo xtask bench scheduler` (issue 7).

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("`bench scheduler` is not built yet")
}
