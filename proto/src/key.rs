//! Client keys: how a client IP becomes the prefix a lease is stored under.
//!
//! The rule, shared by the server and the client so both always agree:
//!
//! 1. parse the address; an IPv4-mapped IPv6 address (`::ffff:192.0.2.7`) is the IPv4 address
//!    (`192.0.2.7`), *before* any mask is applied;
//! 2. truncate it to the mask of its family (host bits cleared, with `ipnet`);
//! 3. the result, family + network bits + prefix length, is the [`ClientKey`].
//!
//! [`ClientKey`] is 18 bytes, `Copy`, with no heap data, so it hashes, compares and orders
//! cheaply. IPv4 keys order before IPv6 keys; within a family, keys order by address, then by
//! prefix length.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::ValidationError;

/// Address family of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4, prefix lengths 0..=32.
    V4,
    /// IPv6, prefix lengths 0..=128.
    V6,
}

impl Family {
    /// Longest prefix of the family: 32 or 128.
    pub const fn max_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// Address length in bytes: 4 or 16.
    pub const fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }
}

/// Prefix lengths kept of client addresses, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Masks {
    v4: u8,
    v6: u8,
}

impl Default for Masks {
    /// One address per key: /32 and /128.
    fn default() -> Self {
        Self { v4: 32, v6: 128 }
    }
}

impl Masks {
    /// Masks from prefix lengths; IPv4 must be 0..=32 and IPv6 0..=128.
    pub fn new(ipv4: u32, ipv6: u32) -> Result<Self, ValidationError> {
        Ok(Self {
            v4: check_len("ipv4_mask", ipv4, Family::V4)?,
            v6: check_len("ipv6_mask", ipv6, Family::V6)?,
        })
    }

    /// IPv4 prefix length.
    pub const fn ipv4(self) -> u8 {
        self.v4
    }

    /// IPv6 prefix length.
    pub const fn ipv6(self) -> u8 {
        self.v6
    }

    /// The prefix length for a family.
    pub const fn for_family(self, family: Family) -> u8 {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

fn check_len(field: &'static str, len: u32, family: Family) -> Result<u8, ValidationError> {
    let max = family.max_len();
    match u8::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(ValidationError::new(
            field,
            format!("must be 0..={max} (got {len})"),
        )),
    }
}

/// The key of a lease within a scope: a client address truncated to a prefix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey {
    family: Family,
    /// Network bits, big-endian; for IPv4 only the first 4 bytes are used (the rest are 0).
    addr: [u8; 16],
    len: u8,
}

impl ClientKey {
    /// The smallest key in key order (`0.0.0.0/0`), a lower bound for ranges.
    pub const MIN: ClientKey = ClientKey {
        family: Family::V4,
        addr: [0; 16],
        len: 0,
    };

    /// The key of `ip` under `masks`: canonicalize, then truncate.
    pub fn new(ip: IpAddr, masks: Masks) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                // `masks` guarantees the length is valid for the family.
                let net = Ipv4Net::new_assert(v4, masks.v4).trunc();
                Self::from_v4(net.network(), masks.v4)
            }
            IpAddr::V6(v6) => {
                let net = Ipv6Net::new_assert(v6, masks.v6).trunc();
                Self::from_v6(net.network(), masks.v6)
            }
        }
    }

    /// Parse a client address (as sent in `client_ip`) and take its key.
    pub fn parse_ip(text: &str, masks: Masks) -> Result<Self, ValidationError> {
        let ip = parse_client_ip(text)?;
        Ok(Self::new(ip, masks))
    }

    /// Rebuild a key from its stored parts: 4 or 16 address bytes and a prefix length.
    /// Host bits must already be clear.
    pub fn from_parts(addr: &[u8], len: u32) -> Result<Self, ValidationError> {
        let family = match addr.len() {
            4 => Family::V4,
            16 => Family::V6,
            n => {
                return Err(ValidationError::new(
                    "prefix.addr",
                    format!("must be 4 or 16 bytes (got {n})"),
                ));
            }
        };
        let len = check_len("prefix.len", len, family)?;
        let mut bytes = [0u8; 16];
        bytes[..addr.len()].copy_from_slice(addr);
        let key = Self {
            family,
            addr: bytes,
            len,
        };
        if key.network() != key.network().trunc() {
            return Err(ValidationError::new(
                "prefix",
                format!("host bits must be zero in {}", key.network()),
            ));
        }
        Ok(key)
    }

    fn from_v4(addr: Ipv4Addr, len: u8) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&addr.octets());
        Self {
            family: Family::V4,
            addr: bytes,
            len,
        }
    }

    fn from_v6(addr: Ipv6Addr, len: u8) -> Self {
        Self {
            family: Family::V6,
            addr: addr.octets(),
            len,
        }
    }

    /// Address family.
    pub const fn family(&self) -> Family {
        self.family
    }

    /// Prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Network address bytes: 4 for IPv4, 16 for IPv6.
    pub fn addr_bytes(&self) -> &[u8] {
        &self.addr[..self.family.addr_len()]
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            )),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.addr)),
        }
    }

    /// The key as an `ipnet` network.
    pub fn network(&self) -> IpNet {
        match self.addr() {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new_assert(v4, self.len)),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new_assert(v6, self.len)),
        }
    }

    /// Whether `ip` (canonicalized) falls in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network().contains(&canonical_ip(ip))
    }
}

impl fmt::Display for ClientKey {
    /// CIDR text, e.g. `192.0.2.0/24` or `2001:db8::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

impl FromStr for ClientKey {
    type Err = ValidationError;

    /// Parse CIDR text. The host bits must be zero (`10.1.2.0/24`, not `10.1.2.3/24`), and
    /// an IPv4-mapped IPv6 network is refused: keys are always stored in canonical form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let net: IpNet = text.parse().map_err(|_| {
            ValidationError::new(
                "prefix",
                format!("must be CIDR text like 192.0.2.0/24 or 2001:db8::/64 (got {text:?})"),
            )
        })?;
        if let IpNet::V6(v6) = net
            && v6.addr().to_ipv4_mapped().is_some()
        {
            return Err(ValidationError::new(
                "prefix",
                format!("IPv4-mapped networks are written as IPv4 (got {text:?})"),
            ));
        }
        match net {
            IpNet::V4(v4) => Self::from_parts(&v4.addr().octets(), u32::from(v4.prefix_len())),
            IpNet::V6(v6) => Self::from_parts(&v6.addr().octets(), u32::from(v6.prefix_len())),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) becomes the IPv4 address; any other
/// address is returned unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Parse the `client_ip` field: an IPv4 or IPv6 address in text, nothing else (no port, no
/// prefix length, no zone, no surrounding spaces).
pub fn parse_client_ip(text: &str) -> Result<IpAddr, ValidationError> {
    if text.is_empty() {
        return Err(ValidationError::new("client_ip", "must not be empty"));
    }
    text.parse::<IpAddr>().map_err(|_| {
        ValidationError::new(
            "client_ip",
            format!(
                "must be an IPv4 or IPv6 address (got {:?})",
                truncate_for_message(text)
            ),
        )
    })
}

/// Long values are cut in error messages so that a hostile input cannot make huge errors.
pub(crate) fn truncate_for_message(text: &str) -> &str {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(ip: &str, v4: u32, v6: u32) -> String {
        let masks = Masks::new(v4, v6).unwrap();
        ClientKey::parse_ip(ip, masks).unwrap().to_string()
    }

    #[test]
    fn masking_table() {
        let cases = [
            ("10.1.2.3", 24, 128, "10.1.2.0/24"),
            ("::ffff:10.1.2.3", 24, 128, "10.1.2.0/24"),
            ("::ffff:10.1.2.3", 32, 64, "10.1.2.3/32"),
            ("2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"),
            ("2001:db8:1:2:3:4:5:6", 32, 128, "2001:db8:1:2:3:4:5:6/128"),
            ("10.1.2.3", 0, 128, "0.0.0.0/0"),
            ("2001:db8::1", 32, 0, "::/0"),
            ("192.0.2.7", 32, 128, "192.0.2.7/32"),
            ("192.0.2.255", 31, 128, "192.0.2.254/31"),
            ("255.255.255.255", 1, 128, "128.0.0.0/1"),
            ("fe80::1", 32, 10, "fe80::/10"),
            // IPv4-compatible (not mapped) addresses stay IPv6.
            ("::10.1.2.3", 24, 96, "::/96"),
        ];
        for (ip, v4, v6, want) in cases {
            assert_eq!(key(ip, v4, v6), want, "{ip} with /{v4} /{v6}");
        }
    }

    #[test]
    fn bad_client_ips_name_the_field() {
        for bad in [
            "",
            "10.1.2",
            "10.1.2.3/24",
            "10.1.2.3:80",
            " 10.1.2.3",
            "256.1.1.1",
            "fe80::1%eth0",
            "example.com",
            "::ffff:10.1.2.3.4",
        ] {
            let err = ClientKey::parse_ip(bad, Masks::default()).unwrap_err();
            assert_eq!(err.field, "client_ip", "{bad:?}");
        }
    }

    #[test]
    fn mask_ranges() {
        assert!(Masks::new(32, 128).is_ok());
        assert!(Masks::new(0, 0).is_ok());
        let err = Masks::new(33, 128).unwrap_err();
        assert_eq!(err.field, "ipv4_mask");
        assert!(err.rule.contains("0..=32"), "{err}");
        let err = Masks::new(24, 129).unwrap_err();
        assert_eq!(err.field, "ipv6_mask");
        assert!(Masks::new(u32::MAX, 0).is_err());
    }

    #[test]
    fn cidr_text_round_trip_and_rules() {
        for text in [
            "10.1.2.0/24",
            "0.0.0.0/0",
            "2001:db8:1:2::/64",
            "::/0",
            "10.0.0.1/32",
        ] {
            let k: ClientKey = text.parse().unwrap();
            assert_eq!(k.to_string(), text);
        }
        assert_eq!(
            "10.1.2.3/24".parse::<ClientKey>().unwrap_err().field,
            "prefix"
        );
        assert!("::ffff:10.1.2.0/120".parse::<ClientKey>().is_err());
        assert!("nonsense".parse::<ClientKey>().is_err());
        assert!("10.1.2.0/33".parse::<ClientKey>().is_err());
    }

    #[test]
    fn from_parts_checks_everything() {
        assert!(ClientKey::from_parts(&[10, 1, 2, 0], 24).is_ok());
        assert_eq!(
            ClientKey::from_parts(&[10, 1, 2], 24).unwrap_err().field,
            "prefix.addr"
        );
        assert_eq!(
            ClientKey::from_parts(&[10, 1, 2, 0], 40).unwrap_err().field,
            "prefix.len"
        );
        assert_eq!(
            ClientKey::from_parts(&[10, 1, 2, 3], 24).unwrap_err().field,
            "prefix"
        );
    }

    #[test]
    fn ordering_is_family_then_address_then_length() {
        let mut keys: Vec<ClientKey> = ["2001:db8::/32", "10.0.0.0/8", "9.0.0.0/8", "10.0.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        keys.sort();
        let text: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32"]
        );
    }

    #[test]
    fn min_is_the_smallest_key() {
        assert_eq!(ClientKey::MIN.to_string(), "0.0.0.0/0");
        for text in ["0.0.0.0/0", "0.0.0.0/1", "::/0", "10.0.0.0/8"] {
            assert!(ClientKey::MIN <= text.parse::<ClientKey>().unwrap());
        }
    }

    #[test]
    fn key_is_small() {
        assert_eq!(size_of::<ClientKey>(), 18);
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
            // IPv4-mapped IPv6 addresses, the case canonicalization exists for.
            any::<u32>().prop_map(|v| IpAddr::V6(Ipv4Addr::from(v).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #[test]
        fn key_contains_its_ip_and_clears_host_bits(ip in any_ip(), v4 in 0u32..=32, v6 in 0u32..=128) {
            let masks = Masks::new(v4, v6).unwrap();
            let key = ClientKey::new(ip, masks);
            prop_assert!(key.contains(ip));
            prop_assert_eq!(key.network(), key.network().trunc());
            // Stored parts and CIDR text both round-trip.
            prop_assert_eq!(ClientKey::from_parts(key.addr_bytes(), u32::from(key.prefix_len())).unwrap(), key);
            prop_assert_eq!(key.to_string().parse::<ClientKey>().unwrap(), key);
        }

        #[test]
        fn mapped_and_plain_ipv4_give_one_key(v in any::<u32>(), v4 in 0u32..=32, v6 in 0u32..=128) {
            let masks = Masks::new(v4, v6).unwrap();
            let plain = Ipv4Addr::from(v);
            let a = ClientKey::new(IpAddr::V4(plain), masks);
            let b = ClientKey::new(IpAddr::V6(plain.to_ipv6_mapped()), masks);
            prop_assert_eq!(a, b);
            prop_assert_eq!(a.family(), Family::V4);
            prop_assert_eq!(a.prefix_len(), masks.ipv4());
        }

        #[test]
        fn same_prefix_same_key(ip in any_ip(), bits in any::<u128>(), v4 in 0u32..=32, v6 in 0u32..=128) {
            // Any other address inside the key's network maps to the same key.
            let masks = Masks::new(v4, v6).unwrap();
            let key = ClientKey::new(ip, masks);
            let other = match key.network() {
                IpNet::V4(net) => {
                    let host = u32::try_from(bits & u128::from(u32::MAX)).unwrap()
                        & !u32::from(net.netmask());
                    IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host))
                }
                IpNet::V6(net) => {
                    let host = bits & !u128::from(net.netmask());
                    IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host))
                }
            };
            prop_assert_eq!(ClientKey::new(other, masks), key);
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = ClientKey::parse_ip(&text, Masks::default());
            let _ = text.parse::<ClientKey>();
        }
    }
}
