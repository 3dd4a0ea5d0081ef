//! `cargo xtask crds`: not yet implemented.

pub fn run(_args: Vec<String>) -> anyhow::Result<()> {
    eprintln!("cargo xtask crds: not yet implemented");
    std::process::exit(1)
}
