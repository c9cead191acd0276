//! Packet parsing, generic over where the bytes live: packet memory in the
//! kernel (bounds-checked against `data_end` for the verifier) or a slice in
//! user space.
//!
//! Parsing never fails open: an IP packet that cannot be parsed comes back as
//! [`Parsed::Malformed`], with its source when the fixed IP header was there,
//! so the lists still apply to it.

use crate::abi::Addr;

/// Plain integers that may be read out of packet bytes: every bit pattern
/// is a valid value. Sealed, so safe code cannot read a reference or any
/// other type with invalid bit patterns out of a frame.
pub trait Wire: Copy + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! wire {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Wire for $t {}
    )*};
}
wire!(u8, u16, u32, u64);

/// Read access to a frame.
pub trait Frame {
    /// Reads a `T` at byte offset `off`, or `None` past the end of the frame.
    fn read<T: Wire>(&self, off: usize) -> Option<T>;
    /// Length of the frame in bytes.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q and 802.1ad: an outer and an inner tag.
pub const MAX_VLAN_TAGS: usize = 2;
/// Longest IPv6 extension-header chain walked; a longer one is malformed.
pub const MAX_IPV6_EXT: usize = 8;

pub mod ipproto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DSTOPTS: u8 = 60;
}

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    /// IP, but unparseable. The source is known when the fixed header was intact.
    Malformed(Option<Source>),
    Ip(Packet),
}

/// The source of an IP packet. Eight-byte aligned, like [`Packet`]: the
/// kernel build reads addresses as 64-bit words, and the verifier refuses
/// misaligned stack access.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// IPv4 in the first four bytes.
    pub addr: Addr,
    /// 4 or 6.
    pub family: u8,
}

/// The fields the decision needs. The ports come first after the addresses,
/// at a 4-byte-aligned offset: LLVM may merge the two 16-bit stores into one
/// 32-bit store, which the verifier refuses on the stack unless aligned (seen
/// once the program makes a BPF-to-BPF call).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub src: Source,
    pub dst: Addr,
    pub sport: u16,
    /// Destination port; for ICMP and ICMPv6 the message type.
    pub dport: u16,
    /// The transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// A fragment other than the first: it has no transport header.
    pub later_fragment: bool,
    /// TCP: the flags byte ([`tcp_flag`]); 0 for anything else.
    pub tcp_flags: u8,
}

/// TCP flag bits, in [`TcpAt::flags`].
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[inline(always)]
fn be16<F: Frame>(f: &F, off: usize) -> Option<u16> {
    f.read::<u16>(off)
        .map(|w| u16::from_be_bytes(w.to_ne_bytes()))
}

/// Parses Ethernet, VLAN tags, IPv4/IPv6 and the transport ports.
#[inline(always)]
pub fn parse<F: Frame>(f: &F) -> Parsed {
    let Some(mut ethertype) = be16(f, 12) else {
        return Parsed::NonIp;
    };
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if tags == MAX_VLAN_TAGS {
            // A third tag: the inner payload may still be IP, so never pass it
            // unexamined.
            return Parsed::Malformed(None);
        }
        match be16(f, off + 2) {
            Some(t) => ethertype = t,
            None => return Parsed::Malformed(None),
        }
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => parse_v4(f, off),
        ETH_P_IPV6 => parse_v6(f, off),
        _ => Parsed::NonIp,
    }
}

/// Reads `N` bytes as a scalar and returns them in wire order. Headers are
/// read as words rather than byte arrays: the kernel build turns a word into
/// one load, where an array copy becomes byte-by-byte stack traffic.
#[inline(always)]
fn bytes4<F: Frame>(f: &F, off: usize) -> Option<[u8; 4]> {
    f.read::<u32>(off).map(u32::to_ne_bytes)
}

#[inline(always)]
fn bytes8<F: Frame>(f: &F, off: usize) -> Option<[u8; 8]> {
    f.read::<u64>(off).map(u64::to_ne_bytes)
}

/// A 16-byte address read as two words.
#[inline(always)]
fn addr16<F: Frame>(f: &F, off: usize) -> Option<Addr> {
    let hi = f.read::<u64>(off)?;
    let lo = f.read::<u64>(off + 8)?;
    Some(Addr { words: [hi, lo] })
}

/// Length of the fixed IPv4 header.
const IPV4_HLEN: usize = 20;

#[inline(always)]
fn parse_v4<F: Frame>(f: &F, off: usize) -> Parsed {
    // The last word first: once it is there, the fixed header is. One read
    // at a time: a tuple of `Option`s leaves the payloads of `None`
    // uninitialised in registers, which the verifier refuses.
    let Some(daddr) = f.read::<u32>(off + 16) else {
        return Parsed::Malformed(None);
    };
    let Some(saddr) = f.read::<u32>(off + 12) else {
        return Parsed::Malformed(None);
    };
    let Some(w2) = bytes4(f, off + 8) else {
        return Parsed::Malformed(None);
    };
    let Some(w1) = bytes4(f, off + 4) else {
        return Parsed::Malformed(None);
    };
    let Some(w0) = bytes4(f, off) else {
        return Parsed::Malformed(None);
    };
    let src = Source {
        family: 4,
        addr: Addr::from_v4_word(saddr),
    };
    let version = w0[0] >> 4;
    let ihl = (w0[0] & 0x0f) as usize * 4;
    if version != 4 || ihl < IPV4_HLEN {
        return Parsed::Malformed(Some(src));
    }
    let mut pkt = Packet {
        src,
        dst: Addr::from_v4_word(daddr),
        proto: w2[1],
        later_fragment: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    let frag_off = u16::from_be_bytes([w1[2], w1[3]]) & 0x1fff;
    pkt.later_fragment = frag_off != 0;
    // IHL may carry options; the transport header starts after them.
    let l4 = off + ihl;
    if l4 > f.len() {
        return Parsed::Malformed(Some(src));
    }
    parse_l4(f, l4, pkt)
}

#[inline(always)]
fn parse_v6<F: Frame>(f: &F, off: usize) -> Parsed {
    let Some(dst) = addr16(f, off + 24) else {
        return Parsed::Malformed(None);
    };
    let Some(src_addr) = addr16(f, off + 8) else {
        return Parsed::Malformed(None);
    };
    let Some(first) = bytes8(f, off) else {
        return Parsed::Malformed(None);
    };
    let src = Source {
        family: 6,
        addr: src_addr,
    };
    if first[0] >> 4 != 6 {
        return Parsed::Malformed(Some(src));
    }
    let mut pkt = Packet {
        src,
        dst,
        proto: 0,
        later_fragment: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    let mut next = first[6];
    let mut off = off + 40;
    let mut walked = 0;
    while let ipproto::HOPOPTS
    | ipproto::ROUTING
    | ipproto::DSTOPTS
    | ipproto::AH
    | ipproto::FRAGMENT = next
    {
        if walked == MAX_IPV6_EXT {
            return Parsed::Malformed(Some(src));
        }
        walked += 1;
        let Some(ext) = bytes4(f, off) else {
            return Parsed::Malformed(Some(src));
        };
        let len = match next {
            ipproto::FRAGMENT => {
                let frag_off = u16::from_be_bytes([ext[2], ext[3]]) >> 3;
                if frag_off != 0 {
                    pkt.later_fragment = true;
                }
                8
            }
            // AH counts its length in 4-byte words, minus two.
            ipproto::AH => (ext[1] as usize + 2) * 4,
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        off += len;
        if pkt.later_fragment {
            break;
        }
    }
    pkt.proto = next;
    if off > f.len() {
        return Parsed::Malformed(Some(src));
    }
    parse_l4(f, off, pkt)
}

#[inline(always)]
fn parse_l4<F: Frame>(f: &F, off: usize, mut pkt: Packet) -> Parsed {
    if pkt.later_fragment {
        return Parsed::Ip(pkt);
    }
    let need = match pkt.proto {
        ipproto::TCP => 20,
        ipproto::UDP => 8,
        ipproto::ICMP | ipproto::ICMPV6 => 4,
        _ => return Parsed::Ip(pkt),
    };
    if off + need > f.len() {
        return Parsed::Malformed(Some(pkt.src));
    }
    let Some(ports) = bytes4(f, off) else {
        return Parsed::Malformed(Some(pkt.src));
    };
    if pkt.proto == ipproto::ICMP || pkt.proto == ipproto::ICMPV6 {
        pkt.dport = ports[0] as u16;
    } else {
        pkt.sport = u16::from_be_bytes([ports[0], ports[1]]);
        pkt.dport = u16::from_be_bytes([ports[2], ports[3]]);
    }
    if pkt.proto == ipproto::TCP {
        // Data offset, flags, window: inside the 20 bytes checked above.
        let Some(w) = bytes4(f, off + 12) else {
            return Parsed::Malformed(Some(pkt.src));
        };
        pkt.tcp_flags = w[1];
    }
    Parsed::Ip(pkt)
}

/// Where a TCP segment's headers are, for the flood defence's answers,
/// found apart from [`parse`]: carrying these through the decision gave
/// older verifiers (6.1) distinct states on every parse path, past their
/// budget. Read only for a TCP packet of a policy in cookie mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpAt {
    /// Where the IP header starts (after any VLAN tags).
    pub l3: usize,
    /// Where the TCP header starts.
    pub l4: usize,
    pub v6: bool,
    /// The flags byte ([`tcp_flag`]).
    pub flags: u8,
    /// The header length its data offset gives, options included.
    pub hlen: usize,
}

/// The TCP headers of an untagged, 802.1Q or QinQ frame carrying IPv4 (any
/// header length, not a later fragment) or IPv6 without extension headers,
/// with the 20-byte TCP header in the frame; `None` for anything else.
#[inline(always)]
pub fn tcp_at<F: Frame>(f: &F) -> Option<TcpAt> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(f, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(f, 16)?;
        l3 = ETH_HLEN + 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(f, 20)?;
            l3 = ETH_HLEN + 8;
        }
    }
    let (l4, v6) = match ethertype {
        ETH_P_IP => {
            let [vihl, _, _, _] = bytes4(f, l3)?;
            let [_, _, frag_hi, frag_lo] = bytes4(f, l3 + 4)?;
            let [_, proto, _, _] = bytes4(f, l3 + 8)?;
            let ihl = (vihl & 0x0f) as usize * 4;
            let later = u16::from_be_bytes([frag_hi, frag_lo]) & 0x1fff != 0;
            if vihl >> 4 != 4 || ihl < IPV4_HLEN || proto != ipproto::TCP || later {
                return None;
            }
            (l3 + ihl, false)
        }
        ETH_P_IPV6 => {
            let first = bytes8(f, l3)?;
            if first[0] >> 4 != 6 || first[6] != ipproto::TCP {
                return None;
            }
            (l3 + 40, true)
        }
        _ => return None,
    };
    // One read of the header's last 8 bytes: it proves the 20 are there
    // and holds the data offset and flags. (A length compare, or a second
    // read, is folded away by the compiler, and the verifier then cannot
    // see the bound.)
    let [doff, flags, ..] = bytes8(f, l4 + 12)?;
    Some(TcpAt {
        l3,
        l4,
        v6,
        flags,
        hlen: (doff >> 4) as usize * 4,
    })
}

/// A frame held in a byte slice (user space: the model, tests, `explain`).
impl Frame for &[u8] {
    fn read<T: Wire>(&self, off: usize) -> Option<T> {
        let end = off.checked_add(core::mem::size_of::<T>())?;
        if end > <[u8]>::len(self) {
            return None;
        }
        // SAFETY: in bounds (checked above); T is a plain integer (`Wire`),
        // valid for any bytes, read unaligned.
        Some(unsafe { self.as_ptr().add(off).cast::<T>().read_unaligned() })
    }

    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}
