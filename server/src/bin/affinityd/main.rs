//! `affinityd`: the affinity store node.
//!
//! Settings come from flags, then `AFFINITY_*` environment variables, then an optional TOML
//! file (`--config`), then defaults; flags win. With no flags at all it runs a single-node
//! cluster in `./affinity-data`. `affinityd dev --nodes 3` runs a local cluster in one
//! process. Everything here is parsing; the node itself is `affinity_server::server::run`.
//!
//! # Layout
//!
//! - `main.rs`: the command line and the exit status;
//! - `settings`: flags, environment and the TOML file layered into the node's settings;
//! - `node`: running a node (logging, listeners, stop signal);
//! - `check`, `export`, `dev`: the subcommands.

// The gRPC and Raft paths allocate many short-lived buffers per request; mimalloc served
// them with less CPU than glibc's allocator (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod check;
mod dev;
mod export;
mod node;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::check::check;
use crate::dev::{DevArgs, run_dev};
use crate::export::export;
use crate::node::{init_logging, run_node};
use crate::settings::{NodeArgs, layer};

#[derive(Parser)]
#[command(
    name = "affinityd",
    version,
    about = "The affinity store node: Raft-replicated client-IP session persistence leases",
    after_help = "Every flag is also an environment variable AFFINITY_<FLAG> (e.g. AFFINITY_NODE_ID) and a key of the --config TOML file (e.g. node-id = 2). Flags win over the environment, which wins over the file."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster of several nodes in this one process, for trying affinity out.
    Dev(DevArgs),
    /// Check the settings (flags, environment, --config) without starting, and print them
    /// as the node would use them (JSON), with what the data directory's Raft log holds.
    /// Exits 2 naming the first wrong setting, or the file and byte where the log is damaged.
    Check,
    /// Disaster recovery: write what this (stopped) node's data directory holds to a
    /// snapshot file, which `affinityctl restore` puts into a new cluster.
    Export {
        /// The file to write (replaced atomically), or `-` for standard output (the summary
        /// then goes to standard error).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match layer(cli.node) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("affinityd: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::Check)) {
        return match check(&settings) {
            Ok(resolved) => {
                println!("{resolved:#}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("affinityd: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = init_logging(settings.log_format, &settings.log_level) {
        eprintln!("affinityd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("affinityd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Dev(dev)) => run_dev(dev, settings).await,
            Some(Command::Export { out }) => export(&settings, &out).await,
            Some(Command::Check) | None => run_node(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("affinityd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::Settings;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec!["affinityd"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        layer(cli.node)
    }

    #[test]
    fn defaults_are_a_single_node_in_a_local_folder() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.config.node_id, 1);
        assert_eq!(s.listen, "127.0.0.1:7400");
        assert_eq!(s.metrics_listen.as_deref(), Some("127.0.0.1:9400"));
        assert_eq!(s.config.data_dir, PathBuf::from("./affinity-data"));
        assert!(s.config.peers.is_empty());
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("affinityd.toml");
        std::fs::write(
            &file,
            "node-id = 2\nlisten = \"0.0.0.0:7500\"\npeers = \"1=a:7400,2=b:7400\"\nraft-heartbeat = \"200ms\"\nmetrics-listen = \"off\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let s = settings(&["--config", path, "--node-id", "1"]).unwrap();
        assert_eq!(s.config.node_id, 1, "the flag wins");
        assert_eq!(s.listen, "0.0.0.0:7500", "the file wins over the default");
        assert_eq!(s.config.peers.len(), 2);
        assert_eq!(s.config.raft.heartbeat, Duration::from_millis(200));
        assert_eq!(s.metrics_listen, None);
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "node-idd = 2\n").unwrap();
        let err = settings(&["--config", file.to_str().unwrap()])
            .err()
            .unwrap();
        assert!(err.contains("node-idd"), "{err}");
        let err = settings(&["--peers", "1=a"]).err().unwrap();
        assert!(err.contains("peers"), "{err}");
        let err = settings(&["--raft-heartbeat", "1.5s"]).err().unwrap();
        assert!(err.contains("1.5s"), "{err}");
        let err = settings(&["--join", "affinity-0"]).err().unwrap();
        assert!(err.contains("join"), "{err}");
        let err = settings(&["--node-id", "2", "--node-id-from-hostname"])
            .err()
            .unwrap();
        assert!(err.contains("node-id-from-hostname"), "{err}");
    }

    #[test]
    fn check_resolves_what_a_start_would_use() {
        let s = settings(&[
            "--node-id",
            "2",
            "--listen",
            "0.0.0.0:7400",
            "--advertise",
            "affinity-1.affinity-peers.default.svc:7400",
            "--join",
            "affinity-0.affinity-peers.default.svc:7400",
        ])
        .unwrap();
        let resolved = check(&s).unwrap();
        assert_eq!(
            resolved["advertise"],
            "affinity-1.affinity-peers.default.svc:7400"
        );
        assert_eq!(
            resolved["join"][0],
            "affinity-0.affinity-peers.default.svc:7400"
        );
        let unreachable = settings(&["--listen", "0.0.0.0:7400", "--join", "a:7400"]).unwrap();
        assert!(check(&unreachable).unwrap_err().contains("advertise"));
        let bad_listen = settings(&["--listen", "localhost:7400"]).unwrap();
        assert!(check(&bad_listen).unwrap_err().contains("listen"));
    }
}
