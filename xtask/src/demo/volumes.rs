//! The volumes step (issue 9); not in `STEPS` until it is built.

use stowage_e2e::bed::TestBed;

use super::Demo;

pub async fn tour(_bed: &TestBed, _demo: &Demo) -> anyhow::Result<()> {
    anyhow::bail!("the volumes step is not built yet")
}
