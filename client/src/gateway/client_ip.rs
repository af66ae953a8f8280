//! Which address a request counts as coming from: the socket peer, or, behind proxies the
//! operator trusts, the `X-Forwarded-For` entry those proxies wrote.
//!
//! Every proxy appends the address it received the request from to `X-Forwarded-For`, so
//! with `N` trusted proxies in front of the gateway the client is the entry `N` from the
//! right; anything further left was written by the client and proves nothing. With `N = 0`
//! (the default) the header is ignored. A header too short for `N`, or an entry that is not
//! an address, means the request did not come through the trusted chain: the socket peer is
//! used and the caller is told, so it can count it.

use std::net::{IpAddr, SocketAddr};

/// Where the client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The socket peer (no trusted hops configured).
    Peer,
    /// The `X-Forwarded-For` entry at the trusted hop.
    Forwarded,
    /// The socket peer, because the header did not hold a usable entry at the trusted hop.
    PeerInstead,
}

/// One `X-Forwarded-For` entry as an address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`.
pub fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

/// The client address of a request from `peer` whose `X-Forwarded-For` header lines are
/// `forwarded` (in order), with `trusted_hops` proxies in front of the gateway.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted_hops: usize,
) -> (IpAddr, Origin) {
    if trusted_hops == 0 {
        return (peer, Origin::Peer);
    }
    // Lines of one header are one comma-separated list, in order.
    let entries: Vec<&str> = forwarded.flat_map(|line| line.split(',')).collect();
    let at = entries
        .len()
        .checked_sub(trusted_hops)
        .and_then(|i| entries.get(i))
        .and_then(|entry| parse_entry(entry));
    match at {
        Some(ip) => (ip.to_canonical(), Origin::Forwarded),
        None => (peer, Origin::PeerInstead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|_| panic!("{text} is an address"))
    }

    #[test]
    fn entries_in_every_common_spelling() {
        assert_eq!(parse_entry(" 192.0.2.7 "), Some(ip("192.0.2.7")));
        assert_eq!(parse_entry("192.0.2.7:5678"), Some(ip("192.0.2.7")));
        assert_eq!(parse_entry("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_entry("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        for bad in [
            "",
            "unknown",
            "_hidden",
            "192.0.2",
            "[2001:db8::1",
            "1.2.3.4:x",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_header_is_ignored_without_trusted_hops() {
        let got = client_ip(ip("10.0.0.1"), ["203.0.113.9"].into_iter(), 0);
        assert_eq!(got, (ip("10.0.0.1"), Origin::Peer));
    }

    #[test]
    fn the_entry_at_the_trusted_hop_counts_from_the_right() {
        let header = ["198.51.100.1, 203.0.113.9", "192.0.2.50"];
        let peer = ip("10.0.0.1");
        assert_eq!(
            client_ip(peer, header.into_iter(), 1),
            (ip("192.0.2.50"), Origin::Forwarded)
        );
        assert_eq!(
            client_ip(peer, header.into_iter(), 2),
            (ip("203.0.113.9"), Origin::Forwarded)
        );
        assert_eq!(
            client_ip(peer, header.into_iter(), 3),
            (ip("198.51.100.1"), Origin::Forwarded)
        );
    }

    #[test]
    fn a_short_or_bad_header_falls_back_to_the_peer() {
        let peer = ip("10.0.0.1");
        assert_eq!(
            client_ip(peer, ["192.0.2.50"].into_iter(), 2),
            (peer, Origin::PeerInstead)
        );
        assert_eq!(
            client_ip(peer, std::iter::empty(), 1),
            (peer, Origin::PeerInstead)
        );
        assert_eq!(
            client_ip(peer, ["192.0.2.50, garbage"].into_iter(), 1),
            (peer, Origin::PeerInstead)
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let got = client_ip(ip("10.0.0.1"), ["::ffff:192.0.2.8"].into_iter(), 1);
        assert_eq!(got, (ip("192.0.2.8"), Origin::Forwarded));
    }
}
