//! Running one node: logging, the listeners, and the stop signal.

use std::net::SocketAddr;

use affinity_server::server::{self, Listeners};
use tokio::net::TcpListener;

use crate::settings::{LogFormat, Settings};

pub(crate) fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("logging: {e}"))
}

pub(crate) async fn bind(what: &str, addr: &str) -> Result<TcpListener, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--{what} {addr:?} is not an IP:PORT to listen on"))?;
    TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--{what}): {e}"))
}

/// SIGTERM or SIGINT.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    } else {
        tracing::warn!("cannot install signal handlers; stopping only on Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Warn when `listener` serves plaintext beyond loopback: `exposed` says what anyone who
/// reaches it can do, `remedy` how to stop that.
fn warn_if_plaintext(listener: &TcpListener, tls: bool, exposed: &str, remedy: &str) {
    if let Ok(bound) = listener.local_addr()
        && !bound.ip().is_loopback()
        && !tls
    {
        tracing::warn!(
            address = %bound,
            "serving plaintext beyond loopback: anyone who can reach this address can {exposed}; {remedy} or restrict it with a NetworkPolicy (docs/security.md)"
        );
    }
}

pub(crate) async fn run_node(settings: Settings) -> Result<(), String> {
    let tls = settings.config.tls.is_some();
    let grpc = bind("listen", &settings.listen).await?;
    warn_if_plaintext(
        &grpc,
        tls,
        "read and change leases",
        "turn TLS on (--tls-cert, and --tls-client-ca for mTLS)",
    );
    let peer = match &settings.peer_listen {
        Some(addr) => Some(bind("peer-listen", addr).await?),
        None => None,
    };
    if let Some(peer) = &peer {
        warn_if_plaintext(
            peer,
            tls,
            "take part in Raft",
            "turn TLS on (--tls-cert, --tls-peer-ca)",
        );
    }
    let metrics = match &settings.metrics_listen {
        Some(addr) => Some(bind("metrics-listen", addr).await?),
        None => None,
    };
    server::run(
        settings.config,
        Listeners {
            grpc,
            peer,
            metrics,
        },
        stop_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}
