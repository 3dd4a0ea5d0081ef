//! `cargo xtask bench etcd` (issue 8).

pub fn run(_quick: bool) -> anyhow::Result<()> {
    anyhow::bail!("`bench etcd` is not built yet")
}
