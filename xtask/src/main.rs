//! Project automation: `cargo xtask <command>`.
//!
//! Commands: crds [--check] | envtest install|start|stop | test | bench | demo

mod bench;
mod crds;
mod demo;
mod deps;
mod envtest;
mod test;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "crds" => crds::run(rest),
        "envtest" => envtest::run(rest),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "demo" => demo::run(rest),
        _ => anyhow::bail!(
            "usage: cargo xtask <command>\n\n\
             commands:\n  \
             crds [--check]               generate deploy/crds/ (or check it is current)\n  \
             envtest install|start|stop   the test bed's control plane\n  \
             test                         the whole test suite, end-to-end tests included\n  \
             bench                        benchmarks against the baseline tools\n  \
             demo                         a guided tour on the test bed"
        ),
    }
}
