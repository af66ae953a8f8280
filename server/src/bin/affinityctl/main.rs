//! `affinityctl`: the operator's command line for an affinity cluster.
//!
//! Human tables by default, `--json` for scripts (one JSON document per command, one JSON
//! line per event for `watch`). On failure it prints one line and exits non-zero.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_proto::pb::cluster_client::ClusterClient;
use affinity_proto::{GatewayDuration, pb};
use clap::{Args, Parser, Subcommand};
use output::{format_time, lease_json, print_human, status_json};
use serde_json::{Value, json};

mod backup;
mod output;
use affinity_client::ClientTls;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

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

#[derive(Args, Clone)]
struct Masks {
    /// IPv4 prefix length of the key (0..=32).
    #[arg(long)]
    ipv4_mask: Option<u32>,
    /// IPv6 prefix length of the key (0..=128).
    #[arg(long)]
    ipv6_mask: Option<u32>,
}

#[derive(Args, Clone)]
struct Lifetime {
    /// Absolute timeout of a new lease (a duration like 5m).
    #[arg(long, default_value = "5m")]
    timeout: GatewayDuration,
    /// Idle timeout of a new lease.
    #[arg(long)]
    idle_timeout: Option<GatewayDuration>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Get the lease of a client, creating it for ENDPOINT if there is none.
    Resolve {
        scope: String,
        ip: String,
        endpoint: String,
        #[command(flatten)]
        masks: Masks,
        #[command(flatten)]
        lifetime: Lifetime,
        /// Endpoints that may serve (comma-separated); a lease on another is replaced.
        #[arg(long, value_delimiter = ',')]
        eligible: Vec<String>,
    },
    /// Show the live lease of a client.
    Lookup {
        scope: String,
        ip: String,
        #[command(flatten)]
        masks: Masks,
        /// Read the node's replica without a leader round trip.
        #[arg(long)]
        stale: bool,
    },
    /// Move a client's live lease from EXPECTED to ENDPOINT (compare-and-set).
    Reassign {
        scope: String,
        ip: String,
        expected: String,
        endpoint: String,
        #[command(flatten)]
        masks: Masks,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Delete a client's lease.
    Release {
        scope: String,
        ip: String,
        #[command(flatten)]
        masks: Masks,
    },
    /// Delete every lease on an endpoint.
    Drain {
        endpoint: String,
        /// Only this scope (default: all scopes).
        #[arg(long)]
        scope: Option<String>,
    },
    /// List live leases in key order.
    List {
        /// Only this scope (default: all scopes).
        #[arg(long)]
        scope: Option<String>,
        /// Leases per request.
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Stop after this many leases.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print changes as they happen.
    Watch {
        /// Only this scope (default: all scopes).
        #[arg(long)]
        scope: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// First replay the changes from this revision on (as far as the node remembers).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Show every node of the cluster.
    Status,
    /// Change membership.
    Members {
        #[command(subcommand)]
        action: MembersCmd,
    },
    /// Hand leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Build a snapshot on the node asked (the first endpoint that answers). With --out,
    /// also take a backup: the snapshot, covering everything committed when asked, is
    /// checked and written to the file.
    Snapshot {
        /// Write the backup here (`-` for standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Put the leases of a backup (from `snapshot --out` or `affinityd export`) into the
    /// cluster. Live leases whose keys hold no live lease are created with their own times;
    /// ended leases and keys already held are skipped, so running it twice is harmless.
    Restore {
        /// The backup file (`-` for standard input).
        file: PathBuf,
        /// Leases per Raft write.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum MembersCmd {
    /// Add a node as a learner (it starts receiving the log); `promote` it afterwards.
    Add {
        node_id: u64,
        /// Where clients reach the node (HOST:PORT).
        address: String,
        /// Where peers reach it, when it serves peer traffic on its own port
        /// (affinityd --peer-listen). [default: the address]
        #[arg(long)]
        peer_address: Option<String>,
        /// Return at once instead of waiting until the learner has caught up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a learner a voter.
    Promote { node_id: u64 },
    /// Remove a node (voter or learner) from the cluster.
    Remove { node_id: u64 },
}

type Output = Result<Value, Status>;

struct Ctl {
    endpoints: Vec<String>,
    deadline: Duration,
    tls: Option<ClientTls>,
    /// `Bearer <token>`, when given.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Ctl {
    async fn channel(&self, endpoint: &str) -> Result<Channel, Status> {
        let bad = |e: tonic::transport::Error| {
            Status::invalid_argument(format!("endpoint {endpoint:?}: {e}"))
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut target = Endpoint::from_shared(format!("{scheme}://{endpoint}")).map_err(bad)?;
        if let Some(tls) = &self.tls {
            target = target.tls_config(tls.for_address(endpoint)).map_err(bad)?;
        }
        target
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("{endpoint}: {e}")))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Try each endpoint until one answers with something other than UNAVAILABLE; while
    /// every node says UNAVAILABLE (an election, a node starting), go round again with a
    /// short pause, until the deadline.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut pause = Duration::from_millis(50);
        loop {
            let mut last = Status::unavailable("no endpoint given");
            for endpoint in &self.endpoints {
                let answer = match self.channel(endpoint).await {
                    Ok(channel) => f(channel).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Err(status) if status.code() == Code::Unavailable => last = status,
                    other => return other,
                }
            }
            if tokio::time::Instant::now() + pause >= give_up {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn affinity<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(AffinityClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| {
            let fut = f(AffinityClient::new(channel));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    async fn cluster<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| {
            let fut = f(ClusterClient::new(channel));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }
}

fn policy(masks: &Masks, lifetime: Option<&Lifetime>) -> pb::Policy {
    pb::Policy {
        ipv4_mask: masks.ipv4_mask,
        ipv6_mask: masks.ipv6_mask,
        absolute_timeout_ms: lifetime.map_or(0, |l| l.timeout.as_millis()),
        idle_timeout_ms: lifetime.and_then(|l| l.idle_timeout.map(GatewayDuration::as_millis)),
    }
}

async fn run(ctl: &Ctl, cmd: Cmd) -> Output {
    Ok(match cmd {
        Cmd::Resolve {
            scope,
            ip,
            endpoint,
            masks,
            lifetime,
            eligible,
        } => {
            let req = pb::ResolveRequest {
                scope,
                client_ip: ip,
                policy: Some(policy(&masks, Some(&lifetime))),
                endpoint,
                eligible_endpoints: eligible,
                request_id: affinity_proto::request::new_request_id(),
            };
            let resp = ctl
                .affinity(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.resolve(r).await }
                })
                .await?;
            json!({
                "lease": resp.lease.as_ref().map(lease_json),
                "created": resp.created,
                "replaced": resp.replaced,
            })
        }
        Cmd::Lookup {
            scope,
            ip,
            masks,
            stale,
        } => {
            let req = pb::LookupRequest {
                scope,
                client_ip: ip,
                policy: Some(policy(&masks, None)),
                allow_stale: stale,
            };
            let resp = ctl
                .affinity(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.lookup(r).await }
                })
                .await?;
            json!({ "lease": resp.lease.as_ref().map(lease_json) })
        }
        Cmd::Reassign {
            scope,
            ip,
            expected,
            endpoint,
            masks,
            lifetime,
        } => {
            let req = pb::ReassignRequest {
                scope,
                client_ip: ip,
                policy: Some(policy(&masks, Some(&lifetime))),
                expected_endpoint: expected,
                endpoint,
                request_id: affinity_proto::request::new_request_id(),
            };
            let resp = ctl
                .affinity(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.reassign(r).await }
                })
                .await?;
            json!({ "lease": resp.lease.as_ref().map(lease_json), "swapped": resp.swapped })
        }
        Cmd::Release { scope, ip, masks } => {
            let req = pb::ReleaseRequest {
                scope,
                client_ip: ip,
                policy: Some(policy(&masks, None)),
                request_id: affinity_proto::request::new_request_id(),
            };
            let resp = ctl
                .affinity(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.release(r).await }
                })
                .await?;
            json!({ "released": resp.released })
        }
        Cmd::Drain { endpoint, scope } => {
            let req = pb::DrainEndpointRequest {
                scope: scope.unwrap_or_default(),
                endpoint,
                request_id: affinity_proto::request::new_request_id(),
            };
            let resp = ctl
                .affinity(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.drain_endpoint(r).await }
                })
                .await?;
            json!({ "removed": resp.removed })
        }
        Cmd::List {
            scope,
            page_size,
            limit,
        } => {
            let mut leases = Vec::new();
            let mut token = String::new();
            loop {
                let req = pb::ListRequest {
                    scope: scope.clone().unwrap_or_default(),
                    page_size,
                    page_token: token.clone(),
                };
                let page = ctl
                    .affinity(|mut c| {
                        let r = ctl.request(req.clone());
                        async move { c.list(r).await }
                    })
                    .await?;
                leases.extend(page.leases.iter().map(lease_json));
                if limit.is_some_and(|l| leases.len() >= l) {
                    leases.truncate(limit.unwrap_or(usize::MAX));
                    break;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            json!({ "leases": leases })
        }
        Cmd::Watch { .. } => unreachable!("watch streams; handled in main"),
        Cmd::Status => status(ctl).await?,
        Cmd::Members { action } => members(ctl, action).await?,
        Cmd::TransferLeader { node_id } => {
            let req = pb::TransferLeaderRequest {
                to_node_id: node_id,
            };
            let resp = ctl
                .cluster(|mut c| {
                    let r = ctl.request(req);
                    async move { c.transfer_leader(r).await }
                })
                .await?;
            json!({ "leader_id": resp.leader_id })
        }
        Cmd::Restore { file, batch } => backup::restore(ctl, &file, batch).await?,
        Cmd::Snapshot { out: Some(_) } => {
            return Err(Status::internal("snapshot --out is handled before run"));
        }
        Cmd::Snapshot { out: None } => {
            let resp = ctl
                .cluster(|mut c| {
                    let r = ctl.request(pb::SnapshotRequest {});
                    async move { c.snapshot(r).await }
                })
                .await?;
            json!({
                "last_log_index": resp.last_log_index,
                "last_log_term": resp.last_log_term,
                "lease_count": resp.lease_count,
                "size_bytes": resp.size_bytes,
            })
        }
    })
}

/// Status of every member (found through the first node that answers), and of every
/// endpoint given that is not a member.
async fn status(ctl: &Ctl) -> Output {
    let first = ctl
        .cluster(|mut c| {
            let r = ctl.request(pb::StatusRequest {});
            async move { c.status(r).await }
        })
        .await?;
    let mut addresses: Vec<(Option<u64>, String, Option<bool>)> = first
        .members
        .iter()
        .map(|m| (Some(m.id), m.address.clone(), Some(m.voter)))
        .collect();
    for endpoint in &ctl.endpoints {
        if !addresses.iter().any(|(_, a, _)| a == endpoint) {
            addresses.push((None, endpoint.clone(), None));
        }
    }
    let mut nodes = Vec::new();
    for (id, address, voter) in addresses {
        let one = Ctl {
            endpoints: vec![address.clone()],
            deadline: ctl.deadline,
            tls: ctl.tls.clone(),
            authorization: ctl.authorization.clone(),
        };
        let answer = one
            .cluster(|mut c| {
                let r = one.request(pb::StatusRequest {});
                async move { c.status(r).await }
            })
            .await;
        nodes.push(match answer {
            Ok(s) => {
                let mut v = status_json(&s);
                v["voter"] = json!(voter);
                v
            }
            Err(e) => json!({ "node_id": id, "address": address, "voter": voter, "role": "unreachable", "error": e.message() }),
        });
    }
    Ok(json!({ "nodes": nodes, "leader_id": first.leader_id }))
}

async fn members(ctl: &Ctl, action: MembersCmd) -> Output {
    let current = ctl
        .cluster(|mut c| {
            let r = ctl.request(pb::StatusRequest {});
            async move { c.status(r).await }
        })
        .await?;
    let voters: Vec<u64> = current
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    let is_member = |id: u64| current.members.iter().any(|m| m.id == id);
    let change = |req: pb::ChangeMembershipRequest| async move {
        let resp = ctl
            .cluster(|mut c| {
                let r = ctl.request(req.clone());
                async move { c.change_membership(r).await }
            })
            .await?;
        Ok::<_, Status>(
            json!({ "log_index": resp.log_index, "members": output::members_json(&resp.members) }),
        )
    };
    match action {
        MembersCmd::Add {
            node_id,
            address,
            peer_address,
            no_wait,
        } => {
            let req = pb::AddLearnerRequest {
                node_id,
                address,
                blocking: !no_wait,
                peer_address: peer_address.unwrap_or_default(),
            };
            let resp = ctl
                .cluster(|mut c| {
                    let r = ctl.request(req.clone());
                    async move { c.add_learner(r).await }
                })
                .await?;
            Ok(
                json!({ "log_index": resp.log_index, "members": output::members_json(&resp.members) }),
            )
        }
        MembersCmd::Promote { node_id } => {
            if !is_member(node_id) {
                return Err(Status::not_found(format!(
                    "node {node_id} is not a member; add it first"
                )));
            }
            change(pb::ChangeMembershipRequest {
                add_voters: vec![node_id],
                ..Default::default()
            })
            .await
        }
        MembersCmd::Remove { node_id } => {
            if !is_member(node_id) {
                return Err(Status::not_found(format!("node {node_id} is not a member")));
            }
            if voters.contains(&node_id) {
                change(pb::ChangeMembershipRequest {
                    remove_voters: vec![node_id],
                    ..Default::default()
                })
                .await
            } else {
                change(pb::ChangeMembershipRequest {
                    remove_learners: vec![node_id],
                    ..Default::default()
                })
                .await
            }
        }
    }
}

async fn watch(
    ctl: &Ctl,
    scope: Option<String>,
    count: Option<usize>,
    from_revision: u64,
    as_json: bool,
) -> Result<(), Status> {
    let req = pb::WatchRequest {
        scope: scope.unwrap_or_default(),
        start_revision: from_revision,
    };
    let mut stream = ctl
        .affinity(|mut c| {
            let r = tonic::Request::new(req.clone());
            async move { c.watch(r).await }
        })
        .await?;
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let Some(event) = stream.message().await? else {
            break;
        };
        // Progress says the stream is alive; it is not a change to print.
        if event.kind == i32::from(pb::watch_event::Kind::Progress) {
            continue;
        }
        seen += 1;
        let kind =
            pb::watch_event::Kind::try_from(event.kind).map_or("UNKNOWN", |k| k.as_str_name());
        let lease = event.lease.unwrap_or_default();
        if as_json {
            println!(
                "{}",
                json!({ "kind": kind, "revision": event.revision, "lease": lease_json(&lease) })
            );
        } else {
            println!(
                "{:<8} rev {:<8} {} {} -> {} (expires {})",
                kind,
                event.revision,
                lease.scope,
                lease.prefix,
                lease.endpoint,
                format_time(lease.expires_at_ms)
            );
        }
    }
    Ok(())
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
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Watch {
                scope,
                count,
                from_revision,
            } => watch(&ctl, scope, count, from_revision, as_json)
                .await
                .map(|()| None),
            Cmd::Snapshot { out: Some(out) } => backup::backup(&ctl, &out).await,
            other => run(&ctl, other).await.map(Some),
        }
    });
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
