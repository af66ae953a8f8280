//! A TCP relay in front of one node's peer port, so that a test can cut what that node
//! receives from its peers without touching the host's firewall: its peers dial the relay
//! (the node advertises the relay's address), the relay forwards to the node's real peer
//! port. Cut, the relay closes every connection it carries and every new one at once, so
//! the node hears nothing from its peers; its own calls to them, and its client port, are
//! untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A relay; dropping it stops it and closes what it carries.
pub struct PeerRelay {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl PeerRelay {
    /// Listen on `listener` and forward to `target`.
    pub fn start(listener: std::net::TcpListener, target: SocketAddr) -> PeerRelay {
        let addr = listener.local_addr().expect("relay address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking relay socket");
        let listener = TcpListener::from_std(listener).expect("relay listener");
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let signal = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut_now = signal.subscribe();
                if *cut_now.borrow_and_update() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    carry(inbound, outbound, cut_now).await;
                });
            }
        });
        PeerRelay { addr, cut, task }
    }

    /// The address peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close every connection and refuse new ones, until [`PeerRelay::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Carry connections again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for PeerRelay {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}

/// Copy both ways until either side closes or the relay is cut.
async fn carry(mut inbound: TcpStream, mut outbound: TcpStream, mut cut: watch::Receiver<bool>) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}
