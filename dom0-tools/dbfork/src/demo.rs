//! `dbfork demo`: the README's main job.
use crate::cli::DemoArgs;
use crate::output::Output;
use anyhow::Result;
use std::path::Path;

pub fn run(_store: &Path, _out: &Output, _args: DemoArgs) -> Result<()> {
    anyhow::bail!("the demo is not built yet")
}
