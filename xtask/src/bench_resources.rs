//! `cargo xtask bench resources` (issue 5).

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("`bench resources` is not built yet")
}
