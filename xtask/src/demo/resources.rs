//! The resources step (issue 5); not in `STEPS` until it is built.

use stowage_e2e::bed::TestBed;

use super::Demo;

pub async fn tour(_bed: &TestBed, _demo: &Demo) -> anyhow::Result<()> {
    anyhow::bail!("the resources step is not built yet")
}
