use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::error::EXIT_OK;
use crate::render::{format_listing, render, Facts, Role};
use crate::version::PgVersion;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Which role's files to print
    #[arg(long, value_enum, default_value = "primary")]
    pub role: Role,
    /// PostgreSQL major version to render for (default: cluster.version from the config, else 15)
    #[arg(long, value_name = "N")]
    pub pg_version: Option<PgVersion>,
    /// Write the files under this directory (DIR/etc/postgresql/...) instead of printing them
    #[arg(long, value_name = "DIR")]
    pub root: Option<std::path::PathBuf>,
}

impl RenderArgs {
    /// Renders from the config alone, assuming Debian's defaults for anything a live cluster
    /// would tell, so it works on any machine and touches nothing.
    pub fn run(self, config_path: &Path) -> Result<i32> {
        let config = Config::load(config_path)?;
        let version = self.pg_version.or(config.cluster.version).unwrap_or(PgVersion::new(15, 0));
        let own_address = match self.role {
            Role::Primary => config.primary.address,
            Role::Standby => match crate::node::find_local_address(&config.standby.addresses)? {
                Some(address) => address,
                None => config.standby.addresses[0],
            },
        };
        let name = config.cluster.name.clone().unwrap_or_else(|| "main".into());
        let facts = Facts::assumed(version, &name, own_address, config.primary.address);
        let files = render(self.role, &config, &facts)?;
        match self.root {
            None => print!("{}", format_listing(&files)),
            Some(root) => {
                for file in files {
                    let path = root.join(file.path.strip_prefix("/").unwrap_or(&file.path));
                    std::fs::create_dir_all(path.parent().expect("rendered paths are absolute"))?;
                    std::fs::write(&path, &file.content)?;
                }
            }
        }
        Ok(EXIT_OK)
    }
}
