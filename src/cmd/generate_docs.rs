use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct GenerateDocsArgs {
    /// Directory to write pgha.8, one page per subcommand, and the bash completion into
    pub out_dir: PathBuf,
}

impl GenerateDocsArgs {
    /// Man pages and completions come from the clap definitions, so they cannot drift from the code.
    pub fn run(self) -> Result<i32> {
        fs::create_dir_all(&self.out_dir).with_context(|| format!("cannot create {}", self.out_dir.display()))?;
        let command = Cli::command();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).section("8").render(&mut page)?;
        fs::write(self.out_dir.join("pgha.8"), page)?;
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            let name = format!("pgha-{}", sub.get_name());
            let mut page = Vec::new();
            clap_mangen::Man::new(sub.clone().name(name.clone())).section("8").render(&mut page)?;
            fs::write(self.out_dir.join(format!("{name}.8")), page)?;
        }
        let mut completion = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "pgha", &mut completion);
        fs::write(self.out_dir.join("pgha.bash"), completion)?;
        Ok(0)
    }
}
