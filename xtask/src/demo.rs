//! `cargo xtask demo`: not yet implemented.

pub fn run(_args: Vec<String>) -> anyhow::Result<()> {
    eprintln!("cargo xtask demo: not yet implemented");
    std::process::exit(1)
}
