//! Network faults on a node's peer traffic, and their healing: added latency and one-way
//! loss, made with netfilter inside the node's own network namespace.
//!
//! This kernel has no `sch_netem` (the usual `tc qdisc add ... netem delay`), so:
//!
//! - **Latency**: an iptables rule in the node's namespace sends every packet that arrives
//!   from the peer network to an NFQUEUE; a reader thread of the test process, which entered
//!   that namespace with `setns(2)` before opening its netlink socket, holds each packet and
//!   accepts it once the delay has passed, in arrival order (the `nfq` crate speaks the
//!   queue's netlink protocol). Only the receive side of node `i` is slowed: every packet
//!   reaching `i` from a peer, whichever side opened the connection, waits; what `i` sends
//!   leaves at once.
//! - **Loss**: iptables `DROP` rules for packets arriving from one peer or from all of them,
//!   optionally matching at random (`-m statistic --mode random --probability p`). One-way:
//!   what `i` sends still arrives.
//!
//! Only packets whose source is on the peer network, and that do not arrive on loopback,
//! are touched: the test's access network to each node (and a node's traffic to itself,
//! and Docker's DNS on 127.0.0.11) keeps its speed, so the test can still watch and call
//! a slowed or deafened node.
//!
//! The rules live in a chain of their own (`AFFINITY-FAULTS`, jumped to first from
//! `INPUT`), so healing flushes it. A fault belongs to the namespace it was applied in: a
//! node whose container is restarted gets a fresh namespace, without the fault. Healing
//! releases the packets still held at once. Dropping the cluster heals every node.
//!
//! Commands (`iptables`) run from a fresh thread that has entered the node's namespace, so
//! the test needs no tool in the `FROM scratch` image and no `nsenter`; it needs root and
//! the host's `iptables` (`tests/install-deps.sh` installs it).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use parking_lot::Mutex;

use super::ContainerCluster;

/// The chain holding every fault rule of a node.
const CHAIN: &str = "AFFINITY-FAULTS";
/// The NFQUEUE number the delay rule uses (queues are per namespace).
const QUEUE: u16 = 7400;
/// Packets the kernel keeps queued for the reader before it drops more.
const QUEUE_MAX: u32 = 20_000;
/// How often the reader looks for new packets and due verdicts.
const TICK: Duration = Duration::from_millis(1);

/// Why the network faults cannot be made on this machine, if they cannot.
pub fn network_tools_missing() -> Option<String> {
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Some("no /proc/self/ns/net (not Linux?)".into());
    }
    match Command::new("iptables").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "iptables --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no iptables ({e}): apt-get install iptables")),
    }
}

/// What a network fault did by the time it was healed.
#[derive(Debug, Clone, Default)]
pub struct NetHealed {
    /// Packets held by the delay for its full length.
    pub delayed: u64,
    /// Shortest and longest time one of those was held, in ms.
    pub held_ms: Option<(u128, u128)>,
    /// Packets released early, when the delay was healed.
    pub released_at_heal: u64,
    /// Packets that arrived from the sources of the drop rules.
    pub from_dropped_sources: u64,
    /// Of those, packets dropped.
    pub dropped: u64,
}

impl fmt::Display for NetHealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.held_ms {
            Some((low, high)) => write!(
                f,
                "{} packets held {low}-{high} ms each ({} released early at healing)",
                self.delayed, self.released_at_heal
            )?,
            None => write!(f, "no packet held")?,
        }
        write!(
            f,
            "; {} of {} packets from the dropped sources dropped",
            self.dropped, self.from_dropped_sources
        )
    }
}

/// The network faults in force, per node.
#[derive(Default)]
pub(super) struct NetFaults {
    nodes: Mutex<HashMap<usize, NodeNet>>,
}

/// One node's faulted namespace.
struct NodeNet {
    netns: Arc<File>,
    id: (u64, u64),
    delayer: Option<Delayer>,
}

impl NetFaults {
    /// Heal every node at once, without waiting on anything but the rules' removal (for
    /// the cluster's drop).
    pub(super) fn heal_all(&self) {
        let nodes: Vec<NodeNet> = self.nodes.lock().drain().map(|(_, n)| n).collect();
        for node in nodes {
            let _ = in_netns_blocking(&node.netns, remove_chain_args());
            if let Some(delayer) = node.delayer {
                delayer.stop();
            }
        }
    }
}

/// The `iptables` invocations that remove the chain and its hook.
fn remove_chain_args() -> Vec<Vec<String>> {
    [
        vec!["-D", "INPUT", "-j", CHAIN],
        vec!["-F", CHAIN],
        vec!["-X", CHAIN],
    ]
    .into_iter()
    .map(|a| a.into_iter().map(String::from).collect())
    .collect()
}

/// Run `iptables -w ARGS` for each argument list, in order, from a fresh thread inside
/// `netns`; the output of each, or the first failure.
fn in_netns_blocking(netns: &Arc<File>, runs: Vec<Vec<String>>) -> Result<Vec<String>, String> {
    let netns = Arc::clone(netns);
    std::thread::spawn(move || {
        // This thread is used once and ends: the namespace it enters never leaks.
        setns(&*netns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let mut outputs = Vec::new();
        for args in runs {
            let out = Command::new("iptables")
                .arg("-w")
                .args(&args)
                .output()
                .map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Ok(outputs)
    })
    .join()
    .unwrap_or_else(|_| Err("the iptables thread panicked".into()))
}

/// [`in_netns_blocking`] off the async runtime's threads.
async fn in_netns(netns: &Arc<File>, runs: Vec<Vec<String>>) -> Result<Vec<String>, String> {
    let netns = Arc::clone(netns);
    tokio::task::spawn_blocking(move || in_netns_blocking(&netns, runs))
        .await
        .unwrap_or_else(|e| Err(format!("iptables task: {e}")))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

impl ContainerCluster {
    /// Fault: hold every packet arriving at node `i` from its peers for `delay` before it
    /// is delivered (the receive side only). Calling it again changes the delay.
    pub async fn delay_incoming_peer_traffic(&self, i: usize, delay: Duration) {
        let netns = self.faulted_netns(i).await;
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if let Some(delayer) = self
            .net
            .nodes
            .lock()
            .get(&i)
            .and_then(|n| n.delayer.as_ref())
        {
            delayer.delay_ms.store(ms, Ordering::Relaxed);
            return;
        }
        let delayer = Delayer::start(&netns, ms)
            .unwrap_or_else(|e| panic!("node {i}: cannot read its NFQUEUE: {e}"));
        if let Some(node) = self.net.nodes.lock().get_mut(&i) {
            node.delayer = Some(delayer);
        }
        let subnet = self.peer_subnet().await;
        in_netns(
            &netns,
            vec![args(&[
                "-A",
                CHAIN,
                "!",
                "-i",
                "lo",
                "-s",
                &subnet,
                "-m",
                "comment",
                "--comment",
                "delay",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE.to_string(),
                "--queue-bypass",
            ])],
        )
        .await
        .unwrap_or_else(|e| panic!("node {i}: add the delay rule: {e}"));
    }

    /// Fault: drop packets arriving at node `i` from node `j`, each with `probability`
    /// (1.0: all of them). What `i` sends to `j` still arrives.
    pub async fn drop_incoming_from(&self, i: usize, j: usize, probability: f64) {
        let source = format!("{}/32", self.peer_ip(j).await);
        self.drop_incoming(i, &source, probability).await;
    }

    /// Fault: drop packets arriving at node `i` from any peer, each with `probability`.
    pub async fn drop_incoming_from_peers(&self, i: usize, probability: f64) {
        let subnet = self.peer_subnet().await;
        self.drop_incoming(i, &subnet, probability).await;
    }

    async fn drop_incoming(&self, i: usize, source: &str, probability: f64) {
        assert!(
            probability > 0.0 && probability <= 1.0,
            "a drop probability is in (0, 1], not {probability}"
        );
        let netns = self.faulted_netns(i).await;
        let mut drop = args(&["-I", CHAIN, "1", "!", "-i", "lo", "-s", source]);
        drop.extend(args(&["-m", "comment", "--comment", "drop"]));
        if probability < 1.0 {
            drop.extend(args(&[
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
            ]));
            drop.push(format!("{probability}"));
        }
        drop.extend(args(&["-j", "DROP"]));
        // A rule without a target ahead of it counts what the drop rule sees.
        let count = args(&[
            "-I",
            CHAIN,
            "1",
            "!",
            "-i",
            "lo",
            "-s",
            source,
            "-m",
            "comment",
            "--comment",
            "seen",
        ]);
        in_netns(&netns, vec![drop, count])
            .await
            .unwrap_or_else(|e| panic!("node {i}: add the drop rule: {e}"));
    }

    /// Heal: remove every network fault of node `i` (releasing held packets at once) and
    /// say what they did. A node without faults is left alone.
    pub async fn heal_network(&self, i: usize) -> NetHealed {
        let node = self.net.nodes.lock().remove(&i);
        match node {
            Some(node) => heal_node(i, node).await,
            None => NetHealed::default(),
        }
    }

    /// Node `i`'s current network namespace, registered with its fault chain made. A node
    /// restarted since its last fault starts afresh (its old namespace is healed).
    async fn faulted_netns(&self, i: usize) -> Arc<File> {
        let pid = self
            .docker
            .inspect_container(&self.nodes[i].container, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.pid)
            .filter(|pid| *pid > 0)
            .unwrap_or_else(|| panic!("node {i} is not running: no network namespace"));
        let path = format!("/proc/{pid}/ns/net");
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let meta = file
            .metadata()
            .unwrap_or_else(|e| panic!("stat {path}: {e}"));
        let id = (meta.dev(), meta.ino());
        let stale = {
            let mut nodes = self.net.nodes.lock();
            match nodes.get(&i) {
                Some(node) if node.id == id => return Arc::clone(&node.netns),
                _ => nodes.remove(&i),
            }
        };
        if let Some(stale) = stale {
            heal_node(i, stale).await;
        }
        let netns = Arc::new(file);
        in_netns(
            &netns,
            vec![
                args(&["-N", CHAIN]),
                args(&["-I", "INPUT", "1", "-j", CHAIN]),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("node {i}: make the fault chain: {e}"));
        self.net.nodes.lock().insert(
            i,
            NodeNet {
                netns: Arc::clone(&netns),
                id,
                delayer: None,
            },
        );
        netns
    }

    /// The peer network's subnet, as `a.b.c.d/n`.
    async fn peer_subnet(&self) -> String {
        self.docker
            .inspect_network(&self.peers, None)
            .await
            .ok()
            .and_then(|n| n.ipam)
            .and_then(|ipam| ipam.config)
            .and_then(|configs| configs.into_iter().find_map(|c| c.subnet))
            .unwrap_or_else(|| panic!("the peer network {} has no subnet", self.peers))
    }

    /// Node `j`'s address on the peer network.
    async fn peer_ip(&self, j: usize) -> String {
        self.docker
            .inspect_container(&self.nodes[j].container, None)
            .await
            .ok()
            .and_then(|c| c.network_settings)
            .and_then(|s| s.networks)
            .and_then(|n| n.get(&self.peers).cloned())
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| panic!("node {j} has no address on the peer network"))
    }
}

/// Remove node `i`'s fault chain and stop its delay; what they did.
async fn heal_node(i: usize, node: NodeNet) -> NetHealed {
    let mut healed = NetHealed::default();
    // Unhooked first, so no packet moves the counters while they are read.
    let mut runs = remove_chain_args();
    runs.insert(1, args(&["-n", "-v", "-x", "-L", CHAIN]));
    match in_netns(&node.netns, runs).await {
        Ok(outputs) => {
            for line in outputs[1].lines() {
                let pkts = line
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                if line.contains("/* seen */") {
                    healed.from_dropped_sources += pkts;
                } else if line.contains("/* drop */") {
                    healed.dropped += pkts;
                }
            }
        }
        // The namespace may be gone with its node; the faults went with it.
        Err(e) => eprintln!("node {i}: removing the network faults: {e}"),
    }
    if let Some(delayer) = node.delayer {
        let stats = tokio::task::spawn_blocking(move || delayer.stop())
            .await
            .unwrap_or_default();
        healed.delayed = stats.held;
        healed.released_at_heal = stats.early;
        healed.held_ms = stats.range.map(|(a, b)| (a.as_millis(), b.as_millis()));
    }
    healed
}

/// What a delay reader did.
#[derive(Debug, Default)]
struct DelayStats {
    held: u64,
    early: u64,
    range: Option<(Duration, Duration)>,
}

/// A thread holding one namespace's queued packets for a delay, then accepting them.
struct Delayer {
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<DelayStats>>,
}

impl Delayer {
    /// Start reading the queue inside `netns`; returns once the queue is bound (so the
    /// rule that feeds it can be added), or why it could not be.
    fn start(netns: &Arc<File>, delay_ms: u64) -> Result<Delayer, String> {
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = std::sync::mpsc::channel();
        let thread = {
            let (netns, delay, stop) = (Arc::clone(netns), Arc::clone(&delay), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("nfqueue-delay".into())
                .spawn(move || match open_queue(&netns) {
                    Ok(queue) => {
                        let _ = ready.send(Ok(()));
                        hold_packets(queue, &delay, &stop)
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        DelayStats::default()
                    }
                })
                .map_err(|e| format!("spawn: {e}"))?
        };
        let mut delayer = Delayer {
            delay_ms: delay,
            stop,
            thread: Some(thread),
        };
        match bound.recv() {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(e)) => {
                delayer.stop_thread();
                Err(e)
            }
            Err(_) => {
                delayer.stop_thread();
                Err("the queue thread ended".into())
            }
        }
    }

    /// Release everything held and end the thread.
    fn stop(mut self) -> DelayStats {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> DelayStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Enter `netns` (this thread only, for good) and bind its queue.
fn open_queue(netns: &File) -> Result<nfq::Queue, String> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let mut queue = nfq::Queue::open().map_err(|e| format!("open: {e}"))?;
    queue.bind(QUEUE).map_err(|e| format!("bind: {e}"))?;
    // Metadata only: a verdict needs the packet's id, not its bytes.
    queue
        .set_copy_range(QUEUE, 0)
        .map_err(|e| format!("copy range: {e}"))?;
    queue
        .set_queue_max_len(QUEUE, QUEUE_MAX)
        .map_err(|e| format!("queue length: {e}"))?;
    queue
        .set_recv_gso(QUEUE, true)
        .map_err(|e| format!("gso: {e}"))?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Hold each packet `delay` from its arrival, then accept it, in arrival order, until
/// `stop`; then accept everything still held or queued.
fn hold_packets(mut queue: nfq::Queue, delay: &AtomicU64, stop: &AtomicBool) -> DelayStats {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut stats = DelayStats::default();
    let mut release = |queue: &mut nfq::Queue, arrived: Instant, mut msg: nfq::Message, early| {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = queue.verdict(msg);
        if early {
            stats.early += 1;
            return;
        }
        let took = arrived.elapsed();
        stats.held += 1;
        stats.range = Some(match stats.range {
            None => (took, took),
            Some((low, high)) => (low.min(took), high.max(took)),
        });
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Ok(msg) = queue.recv() {
            held.push_back((Instant::now(), msg));
        }
        let wait = Duration::from_millis(delay.load(Ordering::Relaxed));
        while let Some((arrived, _)) = held.front() {
            let early = arrived.elapsed() < wait;
            if early && !stopping {
                break;
            }
            let (arrived, msg) = held.pop_front().expect("front exists");
            release(&mut queue, arrived, msg, early);
        }
        if stopping {
            break;
        }
        std::thread::sleep(TICK);
    }
    stats
}
