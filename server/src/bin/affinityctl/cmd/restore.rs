//! `affinityctl restore`: put the leases of a backup into the cluster (see `backup`).

use std::path::PathBuf;

use crate::ctl::{Ctl, Output};

// The arguments (the subcommand's help is on its `Cmd` variant).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The backup file (`-` for standard input).
    file: PathBuf,
    /// Leases per Raft write.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

pub(crate) async fn run(ctl: &Ctl, args: Args) -> Output {
    crate::backup::restore(ctl, &args.file, args.batch).await
}
