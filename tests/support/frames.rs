//! Builds Ethernet frames byte by byte, so tests state exactly what the
//! program sees: VLAN tags, IPv4 options, IPv6 extension chains, fragments.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    vlans: Vec<u16>,
    qinq_outer: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    v4_options: usize,
    ipv6_ext: Vec<u8>,
    fragment: Option<(u16, bool)>,
    payload: usize,
    tcp_flags: u8,
    tcp_options: Vec<u8>,
    seq: u32,
    ack: u32,
}

impl FrameBuilder {
    /// A TCP SYN-sized packet from `src` to `dst`, port 40000 -> 443.
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::new(src, dst, TCP, 40000, 443)
    }

    pub fn udp(src: &str, dst: &str, dport: u16) -> Self {
        Self::new(src, dst, UDP, 40000, dport)
    }

    pub fn icmp(src: &str, dst: &str) -> Self {
        let v6 = src.contains(':');
        Self::new(src, dst, if v6 { ICMPV6 } else { ICMP }, 0, 8)
    }

    pub fn new(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Self {
        Self {
            vlans: Vec::new(),
            qinq_outer: false,
            src: src.parse().expect("test source address"),
            dst: dst.parse().expect("test destination address"),
            proto,
            sport,
            dport,
            v4_options: 0,
            ipv6_ext: Vec::new(),
            fragment: None,
            payload: 16,
            tcp_flags: 0x02,
            tcp_options: Vec::new(),
            seq: 1,
            ack: 0,
        }
    }

    /// TCP flags (default: SYN).
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// TCP options, padded with NOPs to whole words.
    pub fn tcp_options(mut self, opts: &[u8]) -> Self {
        self.tcp_options = opts.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(1);
        }
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    /// Makes the first tag an 802.1ad (QinQ) service tag.
    pub fn qinq(mut self) -> Self {
        self.qinq_outer = true;
        self
    }

    /// IPv4 options of `words` 4-byte words (0 to 10).
    pub fn v4_options(mut self, words: usize) -> Self {
        self.v4_options = words;
        self
    }

    /// Appends an IPv6 extension header (0, 43, 44, 51 or 60).
    pub fn ext(mut self, kind: u8) -> Self {
        self.ipv6_ext.push(kind);
        self
    }

    /// Makes the packet a fragment at `offset` (8-byte units).
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.fragment = Some((offset, more));
        self
    }

    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.qinq_outer {
                0x88a8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                self.ipv4(&mut f, s, d);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                self.ipv6(&mut f, s, d);
            }
            _ => panic!("source and destination of different families"),
        }
        f
    }

    fn l4(&self) -> Vec<u8> {
        let later = matches!(self.fragment, Some((off, _)) if off != 0);
        let mut l4 = Vec::new();
        if !later {
            match self.proto {
                TCP => {
                    l4.extend_from_slice(&self.sport.to_be_bytes());
                    l4.extend_from_slice(&self.dport.to_be_bytes());
                    l4.extend_from_slice(&self.seq.to_be_bytes());
                    l4.extend_from_slice(&self.ack.to_be_bytes());
                    let doff = (20 + self.tcp_options.len()) / 4;
                    l4.extend_from_slice(&[(doff as u8) << 4, self.tcp_flags, 0xff, 0xff]);
                    l4.extend_from_slice(&[0, 0, 0, 0]);
                    l4.extend_from_slice(&self.tcp_options);
                }
                UDP => {
                    l4.extend_from_slice(&self.sport.to_be_bytes());
                    l4.extend_from_slice(&self.dport.to_be_bytes());
                    l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                    l4.extend_from_slice(&[0, 0]);
                }
                ICMP | ICMPV6 => {
                    l4.extend_from_slice(&[self.dport as u8, 0, 0, 0, 0, 1, 0, 1]);
                }
                _ => {}
            }
        }
        l4.extend(std::iter::repeat_n(0xabu8, self.payload));
        l4
    }

    fn ipv4(&self, f: &mut Vec<u8>, s: Ipv4Addr, d: Ipv4Addr) {
        let l4 = self.l4();
        let ihl = 5 + self.v4_options;
        let total = (ihl * 4 + l4.len()) as u16;
        let mut frag: u16 = 0;
        if let Some((off, more)) = self.fragment {
            frag = off & 0x1fff;
            if more {
                frag |= 0x2000;
            }
        }
        let start = f.len();
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.push(64);
        f.push(self.proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        for _ in 0..self.v4_options {
            f.extend_from_slice(&[1, 1, 1, 1]); // NOP options
        }
        let csum = checksum(&f[start..]);
        f[start + 10..start + 12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&l4);
    }

    fn ipv6(&self, f: &mut Vec<u8>, s: Ipv6Addr, d: Ipv6Addr) {
        let mut chain = self.ipv6_ext.clone();
        if self.fragment.is_some() && !chain.contains(&44) {
            chain.push(44);
        }
        let mut exts = Vec::new();
        for (i, kind) in chain.iter().enumerate() {
            let next = chain.get(i + 1).copied().unwrap_or(self.proto);
            match *kind {
                44 => {
                    let (off, more) = self.fragment.unwrap_or((0, false));
                    let v = (off << 3) | u16::from(more);
                    exts.extend_from_slice(&[next, 0]);
                    exts.extend_from_slice(&v.to_be_bytes());
                    exts.extend_from_slice(&[0, 0, 0, 7]);
                }
                51 => {
                    // AH: length 4 words minus 2 -> 16 bytes.
                    exts.extend_from_slice(&[next, 2, 0, 0]);
                    exts.extend_from_slice(&[0; 12]);
                }
                _ => {
                    // 16 bytes: hdr ext len 1.
                    exts.extend_from_slice(&[next, 1]);
                    exts.extend_from_slice(&[1, 4, 0, 0, 0, 0]); // PadN
                    exts.extend_from_slice(&[1, 6, 0, 0, 0, 0, 0, 0]);
                }
            }
        }
        let l4 = self.l4();
        let first = chain.first().copied().unwrap_or(self.proto);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
        f.push(first);
        f.push(64);
        f.extend_from_slice(&s.octets());
        f.extend_from_slice(&d.octets());
        f.extend_from_slice(&exts);
        f.extend_from_slice(&l4);
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 2, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ]);
    f
}

/// The Internet checksum.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
