//! `affinityctl`: the operator's command line for an affinity cluster.
//!
//! Human tables by default, `--json` for scripts (one JSON document per command, one JSON
//! line per event for `watch`). On failure it prints one line and exits non-zero.
//!
//! # Layout
//!
//! - `main.rs`: the global flags, the command list, and the exit status.
//! - [`ctl`]: the connection every command shares (endpoints, deadline, TLS, token).
//! - [`cmd`]: one file per command, each with its arguments and its run function.
//! - [`backup`]: `snapshot --out` and `restore`; [`output`]: tables and JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use affinity_client::ClientTls;
use affinity_proto::GatewayDuration;
use clap::{Parser, Subcommand};
use serde_json::Value;
use tonic::Status;

mod backup;
mod cmd;
mod ctl;
mod output;

use ctl::{Ctl, Output};
use output::print_human;

#[derive(Parser)]
#[command(name = "affinityctl", version, about = "Operate an affinity cluster")]
struct Cli {
    /// Nodes to talk to, HOST:PORT,... (any node answers any request).
    #[arg(
        long,
        env = "AFFINITY_ENDPOINTS",
        default_value = "127.0.0.1:7400",
        value_delimiter = ',',
        global = true
    )]
    endpoints: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each request (a duration like 5s).
    #[arg(long, default_value = "5s", global = true)]
    deadline: GatewayDuration,
    /// Talk TLS, trusting node certificates this CA (PEM) signs.
    #[arg(long, env = "AFFINITY_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require one (mTLS); needs --tls-key.
    #[arg(long, env = "AFFINITY_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "AFFINITY_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Name to check the nodes' certificates for. [default: the host of each endpoint]
    #[arg(long, env = "AFFINITY_TLS_SERVER_NAME", global = true)]
    tls_server_name: Option<String>,
    /// Bearer token for nodes that check roles (--authz); sent only over TLS.
    #[arg(long, env = "AFFINITY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// TLS as given on the command line, read once.
fn tls_from_cli(cli: &Cli) -> Result<Option<ClientTls>, String> {
    let Some(ca) = &cli.tls_ca else {
        if cli.tls_cert.is_some() || cli.tls_key.is_some() {
            return Err("--tls-cert and --tls-key need --tls-ca".into());
        }
        return Ok(None);
    };
    let tls = ClientTls::from_files(ca, cli.tls_cert.as_deref(), cli.tls_key.as_deref())
        .map_err(|e| format!("--tls-*: {e}"))?;
    Ok(Some(match &cli.tls_server_name {
        Some(name) => tls.server_name(name.clone()),
        None => tls,
    }))
}

#[derive(Subcommand)]
enum Cmd {
    /// Get the lease of a client, creating it for ENDPOINT if there is none.
    Resolve(cmd::resolve::Args),
    /// Show the live lease of a client.
    Lookup(cmd::lookup::Args),
    /// Move a client's live lease from EXPECTED to ENDPOINT (compare-and-set).
    Reassign(cmd::reassign::Args),
    /// Delete a client's lease.
    Release(cmd::release::Args),
    /// Delete every lease on an endpoint.
    Drain(cmd::drain::Args),
    /// List live leases in key order.
    List(cmd::list::Args),
    /// Print changes as they happen.
    Watch(cmd::watch::Args),
    /// Show every node of the cluster.
    Status,
    /// Change membership.
    Members {
        #[command(subcommand)]
        action: cmd::members::MembersCmd,
    },
    /// Hand leadership to another voter.
    TransferLeader(cmd::transfer_leader::Args),
    /// Build a snapshot on the node asked (the first endpoint that answers). With --out,
    /// also take a backup: the snapshot, covering everything committed when asked, is
    /// checked and written to the file.
    Snapshot(cmd::snapshot::Args),
    /// Put the leases of a backup (from `snapshot --out` or `affinityd export`) into the
    /// cluster. Live leases whose keys hold no live lease are created with their own times;
    /// ended leases and keys already held are skipped, so running it twice is harmless.
    Restore(cmd::restore::Args),
}

/// Run a command that answers one document (`None`: it printed its own output).
async fn run(ctl: &Ctl, command: Cmd, as_json: bool) -> Result<Option<Value>, Status> {
    let one = |answer: Output| answer.map(Some);
    match command {
        Cmd::Resolve(args) => one(cmd::resolve::run(ctl, args).await),
        Cmd::Lookup(args) => one(cmd::lookup::run(ctl, args).await),
        Cmd::Reassign(args) => one(cmd::reassign::run(ctl, args).await),
        Cmd::Release(args) => one(cmd::release::run(ctl, args).await),
        Cmd::Drain(args) => one(cmd::drain::run(ctl, args).await),
        Cmd::List(args) => one(cmd::list::run(ctl, args).await),
        Cmd::Watch(args) => cmd::watch::run(ctl, args, as_json).await.map(|()| None),
        Cmd::Status => one(cmd::status::run(ctl).await),
        Cmd::Members { action } => one(cmd::members::run(ctl, action).await),
        Cmd::TransferLeader(args) => one(cmd::transfer_leader::run(ctl, args).await),
        Cmd::Snapshot(args) => cmd::snapshot::run(ctl, args).await,
        Cmd::Restore(args) => one(cmd::restore::run(ctl, args).await),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tls = match tls_from_cli(&cli) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("affinityctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let authorization = match (&cli.token, &tls) {
        (None, _) => None,
        (Some(_), None) => {
            eprintln!(
                "affinityctl: --token needs --tls-ca: a token must not cross the network in plaintext"
            );
            return ExitCode::FAILURE;
        }
        (Some(token), Some(_)) => {
            let Ok(value) = format!("Bearer {token}").parse() else {
                eprintln!("affinityctl: --token must be printable ASCII");
                return ExitCode::FAILURE;
            };
            Some(value)
        }
    };
    let ctl = Ctl {
        tls,
        authorization,
        endpoints: cli
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        deadline: cli.deadline.as_std(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("affinityctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let as_json = cli.json;
    let result = runtime.block_on(run(&ctl, cli.command, as_json));
    match result {
        Ok(Some(out)) => {
            if as_json {
                println!("{out}");
            } else {
                print_human(&out);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(status) => {
            let code = affinity_proto::code_name(status.code());
            match status
                .metadata()
                .get("affinity-leader")
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) => eprintln!(
                    "affinityctl: {code}: {} (leader: {leader})",
                    status.message()
                ),
                None => eprintln!("affinityctl: {code}: {}", status.message()),
            }
            ExitCode::FAILURE
        }
    }
}
