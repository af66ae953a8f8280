//! HTTP for the data-plane tests: a client that sends from a chosen loopback source address
//! (so one machine has clients in many /24s), and [`Backend`], an HTTP backend served by
//! hyper inside the test process that answers with its name and can be killed, connections
//! and all.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased (the last of repeated ones).
    pub headers: HashMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The backend that answered (its `x-backend` header).
    pub fn backend(&self) -> &str {
        self.header("x-backend")
    }

    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// `GET path` through `gateway`, sent from `source` (a loopback address), with `headers`.
pub async fn get(
    gateway: SocketAddr,
    source: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = socket
            .connect(gateway)
            .await
            .map_err(|e| format!("connect {gateway}: {e}"))?;
        let mut request = format!("GET {path} HTTP/1.1\r\nconnection: close\r\n");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request.push_str("host: web.test\r\n");
        }
        for (name, value) in headers {
            request = request + name + ": " + value + "\r\n";
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no complete head in {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer from {gateway} within 10 s"))?
}

/// Like [`get`], but a failure or a status other than 200 fails the test.
pub async fn get_ok(
    gateway: SocketAddr,
    source: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let answer = get(gateway, source, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {source} via {gateway}: {e}"));
    assert_eq!(
        answer.status, 200,
        "GET {path} from {source} via {gateway}: {answer:?}"
    );
    assert_eq!(
        answer.body,
        format!("{}\n", answer.backend()),
        "the body is the backend's name"
    );
    answer
}

/// A backend answering every request `200` with `x-backend: NAME` and the body `NAME\n`.
/// Its accept loop and every connection run in one task set, so [`Backend::kill`] closes
/// the listener and every open connection at once, as a crashed process would.
pub struct Backend {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Backend {
    /// Start on a port of 127.0.0.1 the system picks.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend port");
        let addr = listener.local_addr().expect("backend address");
        let mut backend = Backend {
            name: name.to_string(),
            addr,
            tasks: None,
        };
        backend.serve(listener);
        backend
    }

    /// Serve again on the same address after [`Backend::kill`].
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the backend's port again");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let name = self.name.clone();
        let mut tasks = JoinSet::new();
        let (conns_tx, mut conns_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if conns_tx.send(stream).is_err() {
                    break;
                }
            }
        });
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Some(stream) = conns_rx.recv().await {
                let name = name.clone();
                connections.spawn(async move {
                    let service = service_fn(move |_request| {
                        let name = name.clone();
                        async move {
                            let response = hyper::Response::builder()
                                .header("x-backend", name.as_str())
                                .header("content-type", "text/plain")
                                .body(Full::new(Bytes::from(format!("{name}\n"))))
                                .expect("a valid response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Dropping `connections` here (or when this task is aborted) ends them all.
        });
        self.tasks = Some(tasks);
    }

    /// Stop listening and drop every connection.
    pub fn kill(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
