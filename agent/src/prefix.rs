//! IP prefixes as operators write them (`192.0.2.7`, `2001:db8::/48`), parsed
//! strictly: host bits set, IPv4-mapped IPv6 and out-of-range lengths are
//! errors that say what to write instead.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use rampart_common::{
    abi::{Addr, V4Key, V6Key},
    addr::{mask_v6, v4_key},
};

/// An IPv4 or IPv6 network: address with host bits clear, and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error(
        "'{0}' is not an IP address or prefix (expected e.g. 192.0.2.7, 198.51.100.0/24 or 2001:db8::/32)"
    )]
    Syntax(String),
    #[error("'{input}': prefix length {len} is out of range (0 to {max} for {family})")]
    Length {
        input: String,
        len: String,
        max: u8,
        family: &'static str,
    },
    #[error("'{input}' has host bits set; the network is {network}")]
    HostBits { input: String, network: String },
    #[error(
        "'{input}' is an IPv4-mapped IPv6 address; write the IPv4 form {v4} (IPv4 packets carry IPv4 addresses)"
    )]
    Mapped { input: String, v4: String },
}

impl Prefix {
    /// A prefix from an address and length, masking host bits.
    pub fn new_masked(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let k = v4_key(a.octets(), len);
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(k.addr)),
                    len: k.prefix_len as u8,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from(
                        mask_v6(Addr::from_bytes(a.octets()), len).to_bytes(),
                    )),
                    len,
                }
            }
        }
    }

    /// A single address as a host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// A key that sorts exactly as `Prefix` does (IPv4 first, then address,
    /// then length), and compares as plain integers: cheap to sort a
    /// million by.
    pub fn order_key(&self) -> (bool, u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), self.len),
            IpAddr::V6(a) => (true, u128::from(a), self.len),
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && Self::new_masked(ip, self.len) == *self
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The first and last address, as integers (IPv4 in the low 32 bits).
    pub fn bounds(&self) -> (u128, u128) {
        let (start, bits) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host = bits - u32::from(self.len);
        let span = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        (start, start | span)
    }

    pub fn v4_key(&self) -> Option<V4Key> {
        match self.addr {
            IpAddr::V4(a) => Some(V4Key {
                prefix_len: u32::from(self.len),
                addr: a.octets(),
            }),
            IpAddr::V6(_) => None,
        }
    }

    pub fn v6_key(&self) -> Option<V6Key> {
        match self.addr {
            IpAddr::V6(a) => Some(V6Key {
                prefix_len: u32::from(self.len),
                pad: 0,
                addr: Addr::from_bytes(a.octets()),
            }),
            IpAddr::V4(_) => None,
        }
    }

    pub fn from_v4_key(k: &V4Key) -> Self {
        Self::new_masked(IpAddr::V4(Ipv4Addr::from(k.addr)), k.prefix_len as u8)
    }

    pub fn from_v6_key(k: &V6Key) -> Self {
        Self::new_masked(
            IpAddr::V6(Ipv6Addr::from(k.addr.to_bytes())),
            k.prefix_len as u8,
        )
    }
}

/// A set of prefixes that answers "does this prefix overlap any of them"
/// in O(log n): merged address intervals per family.
#[derive(Debug, Default)]
pub struct OverlapIndex {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl OverlapIndex {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a Prefix>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in prefixes {
            let list = if p.is_ipv4() { &mut v4 } else { &mut v6 };
            list.push(p.bounds());
        }
        Self {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    pub fn overlaps(&self, p: &Prefix) -> bool {
        let list = if p.is_ipv4() { &self.v4 } else { &self.v6 };
        let (start, end) = p.bounds();
        // The first interval that does not end before `p` starts.
        let i = list.partition_point(|(_, e)| *e < start);
        list.get(i).is_some_and(|(s, _)| *s <= end)
    }
}

fn merged(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let (addr_s, len_s) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| PrefixError::Syntax(input.to_string()))?;
        if let IpAddr::V6(v6) = addr {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(PrefixError::Mapped {
                    input: input.to_string(),
                    v4: v4.to_string(),
                });
            }
        }
        let (max, family) = if addr.is_ipv4() {
            (32u8, "IPv4")
        } else {
            (128u8, "IPv6")
        };
        let len = match len_s {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => {
                    return Err(PrefixError::Length {
                        input: input.to_string(),
                        len: l.to_string(),
                        max,
                        family,
                    });
                }
            },
        };
        let p = Prefix::new_masked(addr, len);
        if p.addr != addr {
            return Err(PrefixError::HostBits {
                input: input.to_string(),
                network: p.to_string(),
            });
        }
        Ok(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_key_sorts_as_prefixes_do() {
        let mut by_ord: Vec<Prefix> = [
            "2001:db8::/48",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "9.255.255.255",
            "::/0",
            "0.0.0.0/0",
            "255.255.255.255",
            "2001:db8::/32",
            "ff00::/8",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut by_key = by_ord.clone();
        by_ord.sort();
        by_key.sort_by_key(Prefix::order_key);
        assert_eq!(by_ord, by_key);
    }

    #[test]
    fn the_overlap_index_agrees_with_pairwise_checks() {
        let set: Vec<Prefix> = [
            "10.0.0.0/8",
            "192.0.2.7",
            "192.0.2.8/31",
            "2001:db8::/48",
            "0.0.0.0/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let idx = OverlapIndex::new(&set);
        for probe in [
            "10.1.2.3",
            "11.0.0.0/8",
            "0.0.0.0/0",
            "192.0.2.0/29",
            "192.0.2.6",
            "192.0.2.9",
            "192.0.2.10",
            "2001:db8:0:1::/64",
            "2001:db8:1::/48",
            "::/0",
            "0.0.0.1",
        ] {
            let p: Prefix = probe.parse().unwrap();
            let want = set.iter().any(|s| s.overlaps(&p));
            assert_eq!(idx.overlaps(&p), want, "{probe}");
        }
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "192.0.2.7",
            "198.51.100.0/24",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::1",
        ] {
            assert_eq!(s.parse::<Prefix>().unwrap().to_string(), s);
        }
        assert_eq!(
            "192.0.2.7/32".parse::<Prefix>().unwrap().to_string(),
            "192.0.2.7"
        );
    }

    #[test]
    fn rejects_with_hints() {
        let e = "10.1.2.3/8".parse::<Prefix>().unwrap_err();
        assert!(e.to_string().contains("the network is 10.0.0.0/8"), "{e}");
        assert!(matches!(
            "::ffff:1.2.3.4".parse::<Prefix>(),
            Err(PrefixError::Mapped { .. })
        ));
        assert!(matches!(
            "1.2.3.4/33".parse::<Prefix>(),
            Err(PrefixError::Length { .. })
        ));
        assert!(matches!(
            "1.2.3.4/-1".parse::<Prefix>(),
            Err(PrefixError::Length { .. })
        ));
        assert!(matches!(
            "1.2.3.4/+8".parse::<Prefix>(),
            Err(PrefixError::Length { .. })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<Prefix>(),
            Err(PrefixError::Length { .. })
        ));
        assert!(matches!(
            "banana".parse::<Prefix>(),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!("".parse::<Prefix>(), Err(PrefixError::Syntax(_))));
    }

    #[test]
    fn containment() {
        let p: Prefix = "10.0.0.0/8".parse().unwrap();
        assert!(p.contains("10.9.9.9".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(!p.contains("::a00:1".parse().unwrap()));
        assert!(p.overlaps(&"10.1.0.0/16".parse().unwrap()));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(5000)))]
            /// Any text: a prefix that prints back to itself, or an error.
            #[test]
            fn any_text_parses_to_a_round_trip_or_errs(s in "[0-9a-fA-F:./%x ]{0,50}") {
                if let Ok(p) = s.parse::<Prefix>() {
                    prop_assert_eq!(p.to_string().parse::<Prefix>(), Ok(p));
                }
            }
        }
    }
}
