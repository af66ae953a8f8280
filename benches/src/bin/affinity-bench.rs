//! `affinity-bench`: a load generator for an affinity cluster.
//!
//! ```text
//! affinity-bench --spawn 3 --workload create,hit,cached --callers 1,16,256 --duration 10s
//! affinity-bench --endpoints 10.0.0.1:7400,10.0.0.2:7400 --workload mixed --rate 5000
//! ```
//!
//! Each (workload, callers) pair is one run on fresh keys; runs print one line each and,
//! with `--json-out`, are written as a JSON array. See `docs/benchmarks.md`.

#![allow(clippy::cast_precision_loss)]

// The load generator shares the machine with the systems it measures: the allocator the
// node uses (mimalloc) keeps its own per-call allocations cheaper than glibc's, leaving
// more of the CPU to whichever system is under test.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use affinity_bench::load::peers::{self, Connection, Peer};
use affinity_bench::load::run::{Limit, Mode, drive};
use affinity_bench::load::spawn::{LocalCluster, find_affinityd, wait_leader};
use affinity_bench::load::workload::{Keys, Workload, address, endpoint, policy, request};
use affinity_bench::load::{plot, report, run::Measured};
use affinity_client::Resolve;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use affinity_proto::{GatewayDuration, Policy, code_name};
use clap::Parser;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "affinity-bench",
    version,
    about = "Load generator for an affinity cluster"
)]
struct Cli {
    /// Cluster to load, HOST:PORT,... (any nodes of it).
    #[arg(long, value_delimiter = ',', conflicts_with = "spawn")]
    endpoints: Vec<String>,
    /// Start a local cluster of this many nodes instead (data on disk under --data-root).
    #[arg(long)]
    spawn: Option<u64>,
    /// The affinityd binary for --spawn. [default: next to this binary]
    #[arg(long)]
    affinityd: Option<PathBuf>,
    /// Folder for --spawn's data (a fresh subfolder is made and removed).
    #[arg(long, default_value = ".")]
    data_root: PathBuf,
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "create")]
    workload: Vec<Workload>,
    /// Closed loop: concurrent callers; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    callers: Vec<usize>,
    /// Open loop instead: operations started per second (latency counts queueing).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most operations in flight.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// gRPC connections (HTTP/2) shared by the callers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of each run.
    #[arg(long, default_value = "10s")]
    duration: GatewayDuration,
    /// Stop each run after this many operations (if sooner than --duration).
    #[arg(long)]
    ops: Option<u64>,
    /// Live leases preloaded for hit, cached and mixed; key space of churn.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// mixed: share of operations that create a new lease.
    #[arg(long, default_value_t = 0.05)]
    create_ratio: f64,
    /// mixed: Zipf exponent of key popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Lease lifetime (all but churn).
    #[arg(long, default_value = "1h")]
    lease_timeout: GatewayDuration,
    /// churn: lease lifetime, short so that leases end and are swept during the run.
    #[arg(long, default_value = "2s")]
    churn_timeout: GatewayDuration,
    /// Send raw requests to the leader only (as the client does), or spread them over
    /// every endpoint (followers forward writes).
    #[arg(long, default_value = "leader", value_parser = ["leader", "all"])]
    target: String,
    /// Run the same workloads on these peers too, each started fresh on loopback
    /// (`apt-get install etcd-server redis-server`). A peer has no client cache: its
    /// `cached` is its `hit`. `cached` is also always run on a plain HashMap of the keys.
    #[arg(long, value_enum, value_delimiter = ',')]
    peer: Vec<Peer>,
    /// With --peer: alternate affinity and the peers this many times per run (A B A B).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Write every run's figures here as a JSON array.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write a Markdown table of the closed-loop runs (systems side by side, ratios).
    #[arg(long)]
    table_out: Option<PathBuf>,
    /// Draw latency against throughput of the closed-loop runs to this PNG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// TrueType font for the plot's text. [default: DejaVu Sans from the system]
    #[arg(long)]
    plot_font: Option<PathBuf>,
    /// With --spawn and --target all: SIGKILL the leader this long into the first run,
    /// and report the time from the kill to the first successful write.
    #[arg(long)]
    kill_leader_after: Option<GatewayDuration>,
}

/// The timed part of a run: `--duration`, or `--ops` if sooner.
fn timed(cli: &Cli) -> Limit {
    Limit {
        duration: cli.duration.as_std(),
        ops: cli.ops,
    }
}

/// The seed of run `run`'s key choices.
fn seed(run: u64) -> u64 {
    run.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// How long the leases of `workload` live.
fn lease_timeout(cli: &Cli, workload: Workload) -> GatewayDuration {
    if workload == Workload::Churn {
        cli.churn_timeout
    } else {
        cli.lease_timeout
    }
}

/// Per-call deadline of the raw workloads.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

async fn connect(
    addresses: &[String],
    connections: usize,
) -> Result<Vec<RawClient<Channel>>, String> {
    let mut clients = Vec::new();
    for i in 0..connections.max(1) {
        let address = &addresses[i % addresses.len()];
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("{address}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        clients.push(RawClient::new(channel));
    }
    Ok(clients)
}

async fn raw_resolve(
    client: &mut RawClient<Channel>,
    scope: &str,
    key: u32,
    policy: &Policy,
) -> Result<(), String> {
    let mut call = tonic::Request::new(request(scope, key, policy));
    call.set_timeout(CALL_DEADLINE);
    client
        .resolve(call)
        .await
        .map(|_| ())
        .map_err(|s| code_name(s.code()).to_string())
}

/// Preload `keys` live leases (untimed).
async fn preload(
    clients: &[RawClient<Channel>],
    scope: &str,
    keys: u32,
    policy: &Policy,
) -> Result<(), String> {
    let clients = Arc::new(clients.to_vec());
    let scope = Arc::new(scope.to_string());
    let policy = *policy;
    let limit = Limit {
        duration: Duration::from_secs(600),
        ops: Some(u64::from(keys)),
    };
    let measured = drive(Mode::Closed { callers: 64 }, limit, move |caller, n| {
        let mut client = clients[caller % clients.len()].clone();
        let scope = Arc::clone(&scope);
        async move { raw_resolve(&mut client, &scope, u32::try_from(n).unwrap_or(0), &policy).await }
    })
    .await;
    if measured.ok == u64::from(keys) {
        Ok(())
    } else {
        Err(format!(
            "preloading {keys} leases: {} ok, errors {:?}",
            measured.ok, measured.errors
        ))
    }
}

struct Target {
    endpoints: Vec<String>,
    raw: Vec<String>,
}

#[allow(clippy::too_many_lines)]
async fn one_run(
    cli: &Cli,
    target: &Target,
    workload: Workload,
    mode: Mode,
    run: u64,
) -> Result<Measured, String> {
    let scope = workload.scope(run);
    let timeout = lease_timeout(cli, workload);
    let policy = policy(timeout.as_std())?;
    let clients = connect(&target.raw, cli.connections).await?;
    if workload.preloads() {
        preload(&clients, &scope, cli.keys, &policy).await?;
    }
    let keys = Arc::new(Keys::new(workload, cli.keys, cli.create_ratio, cli.zipf));
    let limit = timed(cli);
    let seed = seed(run);
    if workload == Workload::Cached {
        let client = affinity_client::AffinityClient::builder()
            .endpoints(target.endpoints.iter().cloned())
            .cache_capacity(
                usize::try_from(cli.keys)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(2)
                    .max(1024),
            )
            .build()
            .map_err(|e| e.to_string())?;
        // Warm the cache: one resolve per key through the client (untimed).
        for key in 0..cli.keys {
            client
                .resolve(Resolve::new(&scope, address(key), &policy).proposed(&endpoint(key)))
                .await
                .map_err(|e| format!("warming the cache: {e}"))?;
        }
        // The cache answers only once its Watch stream reports progress from a node in
        // touch with the leader (max_staleness).
        let current_by = std::time::Instant::now() + Duration::from_secs(10);
        while !client.cache_is_current() {
            if std::time::Instant::now() > current_by {
                return Err("the client's cache did not become current within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = Arc::new(client);
        let scope = Arc::new(scope);
        return Ok(drive(mode, limit, move |_, n| {
            let mut rng = fastrand::Rng::with_seed(seed ^ n);
            let key = keys.next(&mut rng);
            let (client, scope) = (Arc::clone(&client), Arc::clone(&scope));
            async move {
                let ip: IpAddr = address(key);
                if client.cached(&scope, ip, &policy).is_some() {
                    return Ok(());
                }
                client
                    .resolve(Resolve::new(&scope, ip, &policy).proposed(&endpoint(key)))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("client: {e}"))
            }
        })
        .await);
    }
    let clients = Arc::new(clients);
    let scope = Arc::new(scope);
    Ok(drive(mode, limit, move |caller, n| {
        let mut rng = fastrand::Rng::with_seed(seed ^ n);
        let key = keys.next(&mut rng);
        let slot = usize::try_from(n).unwrap_or(0).wrapping_add(caller);
        let mut client = clients[slot % clients.len()].clone();
        let scope = Arc::clone(&scope);
        async move { raw_resolve(&mut client, &scope, key, &policy).await }
    })
    .await)
}

/// What affinity is compared with in a run.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// A peer system (etcd, Redis) started on loopback.
    Peer(Peer),
    /// For `cached`: a plain `HashMap` lookup of the same keys in this process, the floor
    /// a local cache is measured against.
    HashMap,
}

impl Other {
    fn name(self) -> String {
        match self {
            Other::Peer(peer) => format!("{peer:?}").to_lowercase(),
            Other::HashMap => "hashmap".into(),
        }
    }
}

/// `cached`'s floor: the same keys, drawn the same way and driven by the same loop, looked
/// up in a `std::collections::HashMap` from address to endpoint.
async fn hashmap_run(cli: &Cli, workload: Workload, mode: Mode, run: u64) -> Measured {
    let map: std::collections::HashMap<IpAddr, String> =
        (0..cli.keys).map(|k| (address(k), endpoint(k))).collect();
    let map = Arc::new(map);
    let keys = Arc::new(Keys::new(workload, cli.keys, cli.create_ratio, cli.zipf));
    let limit = timed(cli);
    let seed = seed(run);
    drive(mode, limit, move |_, n| {
        let mut rng = fastrand::Rng::with_seed(seed ^ n);
        let key = keys.next(&mut rng);
        let found = map.get(&address(key)).is_some();
        async move {
            if found {
                Ok(())
            } else {
                Err("miss".to_string())
            }
        }
    })
    .await
}

/// The same workload on a peer: get-or-create of the same keys, values carrying the
/// endpoint and the absolute expiry.
async fn peer_run(
    cli: &Cli,
    peer: Peer,
    workload: Workload,
    mode: Mode,
    run: u64,
) -> Result<Measured, String> {
    let running = peers::start(peer, &cli.data_root).await?;
    let mut connections = Vec::new();
    for n in 0..cli.connections.max(1) {
        connections.push(Connection::open(peer, &running.endpoints, n).await?);
    }
    let connections = Arc::new(connections);
    let scope = Arc::new(workload.scope(run));
    let timeout = lease_timeout(cli, workload);
    let ttl_ms = u64::try_from(timeout.as_std().as_millis()).unwrap_or(u64::MAX);
    let call =
        move |connections: &Arc<Vec<Connection>>, slot: usize, scope: &Arc<String>, key: u32| {
            let mut connection = connections[slot % connections.len()].clone();
            let key_text = format!("{scope}/{}", address(key));
            let now = affinity_server::clock::now_ms();
            let value = format!(
                "{}|{}",
                endpoint(key),
                now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX))
            );
            async move {
                connection
                    .get_or_create(&key_text, &value, ttl_ms)
                    .await
                    .map(|_| ())
            }
        };
    if workload.preloads() {
        let (connections, scope) = (Arc::clone(&connections), Arc::clone(&scope));
        let limit = Limit {
            duration: Duration::from_secs(600),
            ops: Some(u64::from(cli.keys)),
        };
        let loaded = drive(Mode::Closed { callers: 64 }, limit, move |caller, n| {
            call(&connections, caller, &scope, u32::try_from(n).unwrap_or(0))
        })
        .await;
        if loaded.ok != u64::from(cli.keys) {
            return Err(format!("preloading {peer:?}: {:?}", loaded.errors));
        }
    }
    let keys = Arc::new(Keys::new(workload, cli.keys, cli.create_ratio, cli.zipf));
    let limit = timed(cli);
    let seed = seed(run);
    let measured = drive(mode, limit, move |caller, n| {
        let mut rng = fastrand::Rng::with_seed(seed ^ n);
        let key = keys.next(&mut rng);
        let slot = usize::try_from(n).unwrap_or(0).wrapping_add(caller);
        call(&connections, slot, &scope, key)
    })
    .await;
    drop(running);
    Ok(measured)
}

/// Kill the leader after `after`, then write new leases through every other node until
/// one succeeds: the time from the kill to that write.
async fn failover(
    cluster: Arc<parking_lot::Mutex<LocalCluster>>,
    leader: String,
    after: Duration,
    scope: String,
) -> Result<(usize, Duration), String> {
    tokio::time::sleep(after).await;
    let node = cluster.lock().kill(&leader)?;
    let killed = std::time::Instant::now();
    let others: Vec<String> = cluster
        .lock()
        .endpoints
        .iter()
        .filter(|a| **a != leader)
        .cloned()
        .collect();
    let policy = policy(Duration::from_secs(3600))?;
    let mut key = 1 << 22;
    while killed.elapsed() < Duration::from_secs(60) {
        for address in &others {
            key += 1;
            let Ok(mut clients) = connect(std::slice::from_ref(address), 1).await else {
                continue;
            };
            let mut call = tonic::Request::new(request(&scope, key, &policy));
            call.set_timeout(Duration::from_millis(300));
            if clients[0].resolve(call).await.is_ok() {
                return Ok((node, killed.elapsed()));
            }
        }
    }
    Err(format!(
        "no write succeeded within 60 s of killing node {node}"
    ))
}

async fn main_async(cli: Cli) -> Result<(), String> {
    if cli.kill_leader_after.is_some() && (cli.spawn.is_none() || cli.target != "all") {
        return Err("--kill-leader-after needs --spawn N and --target all (calls sent only to the killed leader would fail for the rest of the run)".into());
    }
    let mut local = None;
    let endpoints = match cli.spawn {
        Some(n) => {
            let binary = find_affinityd(cli.affinityd.as_deref())?;
            let cluster = LocalCluster::start(n, &binary, &cli.data_root)?;
            let endpoints = cluster.endpoints.clone();
            eprintln!(
                "affinity-bench: started {n} nodes ({}), data in {}",
                endpoints.join(","),
                cluster
                    .dir()
                    .map_or_else(String::new, |d| d.display().to_string())
            );
            local = Some(Arc::new(parking_lot::Mutex::new(cluster)));
            endpoints
        }
        None if cli.endpoints.is_empty() => return Err("give --endpoints or --spawn N".into()),
        None => cli.endpoints.clone(),
    };
    let leader = wait_leader(&endpoints, Duration::from_secs(30)).await?;
    let raw = if cli.target == "leader" {
        vec![leader.clone()]
    } else {
        endpoints.clone()
    };
    let target = Target { endpoints, raw };
    let modes: Vec<Mode> = match cli.rate {
        Some(rate) => vec![Mode::Open {
            rate,
            in_flight: cli.in_flight,
        }],
        None => cli
            .callers
            .iter()
            .map(|&callers| Mode::Closed { callers })
            .collect(),
    };
    let mut records = Vec::new();
    let mut kill_after = cli.kill_leader_after;
    let mut run = u64::from(std::process::id()) << 16;
    for &workload in &cli.workload {
        for &mode in &modes {
            let label = match mode {
                Mode::Closed { callers } => format!("{workload:?} x{callers}").to_lowercase(),
                Mode::Open { rate, .. } => format!("{workload:?} @{rate}/s").to_lowercase(),
            };
            let mut peers: Vec<Other> = cli.peer.iter().map(|&p| Other::Peer(p)).collect();
            if workload == Workload::Cached {
                peers.push(Other::HashMap);
            }
            let mut ours = Vec::new();
            let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
            for _round in 0..cli.rounds.max(1) {
                run += 1;
                let kill = match (kill_after.take(), &local) {
                    (Some(after), Some(cluster)) => Some(tokio::spawn(failover(
                        Arc::clone(cluster),
                        leader.clone(),
                        after.as_std(),
                        format!("bench/failover/{run}"),
                    ))),
                    _ => None,
                };
                let measured = one_run(&cli, &target, workload, mode, run).await?;
                println!("{}", report::line(&format!("affinity {label}"), &measured));
                ours.push(measured.ops_per_sec());
                let mut record = report::record(
                    &settings(&cli, &target, workload, mode, "affinity"),
                    &measured,
                );
                if let Some(kill) = kill {
                    let (node, took) = kill.await.map_err(|e| e.to_string())??;
                    println!(
                        "failover: node {node} (the leader) killed; first successful write {:.0} ms later",
                        took.as_secs_f64() * 1000.0
                    );
                    record["failover_ms"] = json!(took.as_millis());
                }
                records.push(record);
                for (i, &other) in peers.iter().enumerate() {
                    run += 1;
                    let measured = match other {
                        Other::Peer(peer) => peer_run(&cli, peer, workload, mode, run).await?,
                        Other::HashMap => hashmap_run(&cli, workload, mode, run).await,
                    };
                    let system = other.name();
                    println!("{}", report::line(&format!("{system} {label}"), &measured));
                    theirs[i].push(measured.ops_per_sec());
                    records.push(report::record(
                        &settings(&cli, &target, workload, mode, &system),
                        &measured,
                    ));
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            for (i, other) in peers.iter().enumerate() {
                println!(
                    "ratio {label}: affinity / {} ops/s = {:.2}x (means of {} rounds)",
                    other.name(),
                    mean(&ours) / mean(&theirs[i]).max(f64::MIN_POSITIVE),
                    ours.len()
                );
            }
        }
    }
    if let Some(path) = &cli.json_out {
        let text = serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let series = plot::series(&records);
    if let Some(path) = &cli.table_out {
        std::fs::write(path, report::table(&series))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.plot {
        let title = format!(
            "affinity-bench: {} nodes, {} connections, {} s per run",
            target.endpoints.len(),
            cli.connections,
            cli.duration.as_std().as_secs()
        );
        plot::draw(&series, &title, cli.plot_font.as_deref(), path)?;
    }
    Ok(())
}

fn settings(
    cli: &Cli,
    target: &Target,
    workload: Workload,
    mode: Mode,
    system: &str,
) -> serde_json::Value {
    json!({
        "system": system,
        "workload": workload,
        "mode": match mode { Mode::Closed { .. } => "closed", Mode::Open { .. } => "open" },
        "callers": match mode { Mode::Closed { callers } => Some(callers), Mode::Open { .. } => None },
        "rate": match mode { Mode::Open { rate, .. } => Some(rate), Mode::Closed { .. } => None },
        "connections": cli.connections,
        "keys": cli.keys,
        "target": cli.target,
        "nodes": target.endpoints.len(),
    })
}

/// Run `work` until it ends or the process is asked to stop (Ctrl-C, SIGTERM); stopping
/// drops it, so a spawned cluster and any peer are killed and their folders removed.
async fn until_interrupted(work: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    tokio::select! {
        done = work => done,
        _ = tokio::signal::ctrl_c() => Err("interrupted; the spawned processes are stopped".into()),
        _ = term.recv() => Err("terminated; the spawned processes are stopped".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("affinity-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(until_interrupted(main_async(cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affinity-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
