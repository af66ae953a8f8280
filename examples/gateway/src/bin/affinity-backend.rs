//! `affinity-backend`: a tiny HTTP/1.1 backend for tests and demos. Every request is
//! answered `200 OK` with the backend's name as the body and in an `x-backend` header, so a
//! client can tell which backend a gateway chose. `GET /healthz` answers the same way (a
//! gateway's active health check). It prints `listening on ADDRESS` once bound (port 0
//! picks a free port), and exits on SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "affinity-backend",
    version,
    about = "A backend that answers with its name"
)]
struct Cli {
    /// The name it answers with.
    #[arg(long)]
    name: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

/// Largest request head read; a longer one is answered 431 and the connection closed.
const MAX_HEAD: usize = 16 * 1024;

async fn serve(mut stream: TcpStream, name: String) {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        // Read one request head (this backend ignores bodies: tests send none).
        let end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buffer.len() > MAX_HEAD {
                let _ = stream
                    .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                // Close gently: closing with unread input would reset the connection and
                // could discard the answer before the client reads it.
                let _ = stream.shutdown().await;
                let drain = async {
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told
        // to keep it (and then says so).
        let http10 = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
        let close = head.contains("\r\nconnection: close")
            || (http10 && !head.contains("\r\nconnection: keep-alive"));
        buffer.drain(..end);
        let body = format!("{name}\n");
        let connection = match (close, http10) {
            (true, _) => "connection: close\r\n",
            (false, true) => "connection: keep-alive\r\n",
            (false, false) => "",
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: {name}\r\ncontent-length: {}\r\n{connection}\r\n{body}",
            body.len(),
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let listener = TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", cli.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Watch for signals before announcing the address: whoever reads the line may signal
    // at once.
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch for SIGINT: {e}"))?;
    println!("listening on {address}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, cli.name.clone()));
                }
            }
            _ = interrupt.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.name.is_empty() || cli.name.contains(['\r', '\n']) {
        eprintln!("affinity-backend: --name must be non-empty and one line");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("affinity-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affinity-backend: {e}");
            ExitCode::FAILURE
        }
    }
}
