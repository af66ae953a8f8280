//! `affinity-backend` as a real process: it answers with its name, keeps connections alive,
//! refuses an oversized head, and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Backend {
    child: Child,
    address: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str) -> Backend {
    let mut child = Command::new(env!("CARGO_BIN_EXE_affinity-backend"))
        .args(["--name", name, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Backend { child, address }
}

/// Read one response with a content-length body.
fn response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

#[test]
fn answers_with_its_name_on_a_kept_alive_connection() {
    let backend = start("b-1");
    let mut stream = TcpStream::connect(&backend.address).unwrap();
    for path in ["/", "/healthz"] {
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let got = response(&mut stream);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("x-backend: b-1\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nb-1\n"), "{got}");
    }
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let backend = start("b-4");
    let mut stream = TcpStream::connect(&backend.address).unwrap();
    write!(stream, "GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).unwrap();
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("b-4\n"), "{got}");

    let mut stream = TcpStream::connect(&backend.address).unwrap();
    for _ in 0..2 {
        write!(stream, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        let got = response(&mut stream);
        assert!(got.contains("connection: keep-alive\r\n"), "{got}");
        assert!(got.ends_with("b-4\n"), "{got}");
    }
}

#[test]
fn an_oversized_head_is_refused() {
    let backend = start("b-2");
    let mut stream = TcpStream::connect(&backend.address).unwrap();
    let huge = "a".repeat(20 * 1024);
    // The backend may close before reading all of it; the answer is what matters.
    let _ = write!(stream, "GET / HTTP/1.1\r\nx-big: {huge}\r\n\r\n");
    let mut got = String::new();
    let _ = stream.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut backend = start("b-3");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(backend.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = backend.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
