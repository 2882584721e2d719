use anyhow::Result;
use clap::Args;

use crate::ModelArgs;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let model = a.model.load()?;
    let i = model.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    for (k, v) in reward_lens_report::model_info::rows(&i) {
        println!("{k:<24} {v}");
    }
    Ok(())
}
