//! SYN cookies from the kernel's own helpers, for the flood defence: the
//! SYN-ACK the program sends on behalf of the local listener, and the check
//! of the ACK that answers it.
//!
//! The socket-tied helpers (`bpf_tcp_gen_syncookie`, `bpf_tcp_check_syncookie`)
//! rather than the raw ones: generating a cookie for a listener marks it as
//! having sent cookies, so the listener itself accepts the ACK with its own
//! secret and creates the connection; no conntrack or SYN proxy is needed.
//! Without a timestamp option, such a cookie encodes only the MSS, so the
//! SYN-ACK offers no window scaling and no SACK.
//!
//! Both are BPF global functions taking the context: the verifier checks
//! each once, and the decision reaches each through one call.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, tcphdr, xdp_md},
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_tcp_gen_syncookie,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
};
use rampart_common::parse::Packet;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// Any negative 32-bit id: the namespace of the device the packet came in on.
const CURRENT_NETNS: u64 = u64::MAX;
/// The furthest an IP header starts: Ethernet and two VLAN tags.
const MAX_L3_OFF: u32 = 22;
/// The furthest a TCP header may start (the parser's bound).
const MAX_L4_OFF: u32 = 1024;
/// The SYN-ACK's TCP header: 20 bytes and the MSS option.
const SYNACK_TCP_LEN: u32 = 24;
/// The window the SYN-ACK offers, in MSS: a cookie connection has no
/// window scaling, and the listener's first window is at least this.
const SYNACK_WINDOW_MSS: u32 = 10;
const SYNACK_WINDOW_MAX: u32 = 32_768;

/// [`rampart_ack_check`]'s answers.
pub mod ack {
    pub const NO_SOCKET: u32 = 0;
    pub const ESTABLISHED: u32 = 1;
    pub const VALID: u32 = 2;
    pub const BAD: u32 = 3;
}

/// The lookup tuple, as the incoming packet sees it (IPv4 uses the first
/// 12 bytes).
#[repr(C, align(4))]
struct Tuple {
    words: [u32; 9],
}

/// Headers of the packet copied to the stack, where the helpers may read
/// them at any length the verifier can bound; then the reply's headers,
/// written over them. Left uninitialised (a zeroed 100 bytes is a memset
/// call): the loads fill what the helpers read, and the reply writes every
/// byte it sends. Word writes stay aligned, as the verifier insists.
#[repr(C, align(8))]
struct Headers {
    ip: [u8; 40],
    tcp: [u8; 60],
}

/// Aligned big-endian writes into a [`Headers`] buffer. Volatile, so that
/// LLVM does not merge neighbours into a wider store the verifier would
/// find misaligned on the stack.
struct Out(*mut u8);

impl Out {
    #[inline(always)]
    fn u8(&self, off: usize, v: u8) {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(off).write_volatile(v) }
    }
    #[inline(always)]
    fn u16(&self, off: usize, v: u16) {
        // SAFETY: inside the buffer, at an even offset of an 8-aligned one.
        unsafe { self.0.add(off).cast::<u16>().write_volatile(v.to_be()) }
    }
    #[inline(always)]
    fn u32(&self, off: usize, v: u32) {
        // SAFETY: inside the buffer, at a multiple of 4 of an 8-aligned one.
        unsafe { self.0.add(off).cast::<u32>().write_volatile(v.to_be()) }
    }
    /// A word already in network order.
    #[inline(always)]
    fn raw32(&self, off: usize, v: u32) {
        // SAFETY: as `u32`.
        unsafe { self.0.add(off).cast::<u32>().write_volatile(v) }
    }
}

/// The 16-bit sum of network-order address words, as a checksum adds them.
#[inline(always)]
fn addr_sum(words: &[u32]) -> u32 {
    let mut s = 0;
    for w in words {
        let x = u32::from_be(*w);
        s += (x >> 16) + (x & 0xffff);
    }
    s
}

/// The packet's headers, checked and bounded.
struct Where {
    l3: u32,
    l4: u32,
    ip_len: u32,
    v6: bool,
}

/// The headers' places from their packed form (see `maps::pack`).
#[inline(always)]
fn locate(at: u32) -> Option<Where> {
    let l3 = at & 0xff;
    let l4 = (at >> 8) & 0xffff;
    if l3 > MAX_L3_OFF || l4 > MAX_L4_OFF {
        return None;
    }
    let v6 = at >> 24 != 0;
    Some(Where {
        l3,
        l4,
        ip_len: if v6 { 40 } else { 20 },
        v6,
    })
}

/// The tuple for the parsed packet, and its size for the helper.
#[inline(always)]
fn tuple(pkt: &Packet, w: &Where) -> (Tuple, u32) {
    let ports = (pkt.sport.to_be() as u32) | (pkt.dport.to_be() as u32) << 16;
    let src = pkt.src.addr.to_words32();
    let dst = pkt.dst.to_words32();
    if w.v6 {
        let words = [
            src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports,
        ];
        (Tuple { words }, 36)
    } else {
        let words = [src[0], dst[0], ports, 0, 0, 0, 0, 0, 0];
        (Tuple { words }, 12)
    }
}

/// The listening or connected socket for the packet's tuple, if any: the
/// caller must release it. The tuple is built in `scratch` (at least 36
/// bytes, 4-aligned: the headers' buffer, before they are loaded), so that
/// it takes no stack of its own: the SYN answer runs two calls deep, and
/// the verifier caps the stack of a call chain at 512 bytes.
#[inline(always)]
fn lookup(ctx: *mut xdp_md, pkt: &Packet, w: &Where, scratch: *mut u8) -> *mut bpf_sock {
    let (t, size) = tuple(pkt, w);
    let out = scratch.cast::<u32>();
    for (i, word) in t.words.iter().enumerate() {
        // SAFETY: inside the 36 bytes the caller provides, 4-aligned.
        unsafe { out.add(i).write_volatile(*word) };
    }
    // SAFETY: `scratch` holds the tuple's `size` initialised bytes.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.cast(),
            scratch.cast::<bpf_sock_tuple>(),
            size,
            CURRENT_NETNS,
            0,
        )
    }
}

/// Copies `len` bytes at `off` of the packet into `buf`; false if short.
#[inline(always)]
fn load(ctx: *mut xdp_md, off: u32, buf: *mut u8, len: u32) -> bool {
    // SAFETY: `buf` has room for `len` bytes (the callers bound it).
    unsafe { bpf_xdp_load_bytes(ctx, off, buf.cast::<c_void>(), len) == 0 }
}

#[inline(always)]
fn store(ctx: *mut xdp_md, off: u32, buf: *mut u8, len: u32) -> bool {
    // SAFETY: `buf` holds `len` initialised bytes.
    unsafe { bpf_xdp_store_bytes(ctx, off, buf.cast::<c_void>(), len) == 0 }
}

#[inline(always)]
fn release(sk: *mut bpf_sock) {
    // SAFETY: a socket from `bpf_skc_lookup_tcp`, released once.
    unsafe { bpf_sk_release(sk.cast()) };
}

/// Loads the SYN's IP header and its whole TCP header; returns the TCP
/// header's length. The helper wants that exact length; the options are
/// loaded only when there are any, and each branch leaves a length the
/// verifier can bound from below (a zero-length read is refused).
#[inline(always)]
fn load_syn(ctx: *mut xdp_md, w: &Where, ip: *mut u8, tcp: *mut u8) -> Option<u32> {
    if !load(ctx, w.l3, ip, w.ip_len) || !load(ctx, w.l4, tcp, 20) {
        return None;
    }
    // SAFETY: loaded above.
    let doff = unsafe { tcp.add(12).read() } >> 4;
    let doff_len = doff as u32 * 4;
    if doff_len == 20 {
        Some(20)
    } else if doff_len > 20 && load(ctx, w.l4, tcp, doff_len) {
        Some(doff_len)
    } else {
        None
    }
}

/// Answers a SYN with a SYN-ACK carrying the listener's SYN cookie, in
/// place: 1 when the frame is ready for `XDP_TX`, else 0 with the frame
/// unchanged (no listener here, or the kernel gave no cookie).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_syn_answer(ctx: *mut xdp_md, pkt: *const Packet, at: u32) -> u32 {
    // SAFETY: null checked; the verifier checked it points to a Packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return 0;
    };
    let Some(w) = locate(at) else {
        return 0;
    };
    let mut h = MaybeUninit::<Headers>::uninit();
    let ip = h.as_mut_ptr().cast::<u8>();
    // SAFETY: `tcp` starts 40 bytes into the 100-byte buffer.
    let tcp = unsafe { ip.add(40) };
    let sk = lookup(ctx, pkt, &w, ip);
    if sk.is_null() {
        return 0;
    }
    // SAFETY: a valid socket pointer until released.
    let state = unsafe { (*sk).state };
    if state != TCP_LISTEN {
        release(sk);
        return 0;
    }
    let Some(tcp_len) = load_syn(ctx, &w, ip, tcp) else {
        release(sk);
        return 0;
    };
    // SAFETY: loaded by `load_syn`.
    let client_seq = unsafe { u32::from_be(tcp.add(4).cast::<u32>().read()) };
    // SAFETY: both buffers hold the lengths passed, loaded from the packet.
    let cookie = unsafe {
        bpf_tcp_gen_syncookie(
            sk.cast(),
            ip.cast(),
            w.ip_len,
            tcp.cast::<tcphdr>(),
            tcp_len,
        )
    };
    release(sk);
    if cookie < 0 {
        return 0;
    }
    let mss = (cookie >> 32) as u16;
    write_synack(&Out(ip), &Out(tcp), pkt, &w, cookie as u32, client_seq, mss);
    // SAFETY: reads the context's packet bounds.
    let old_len = unsafe { (*ctx).data_end.wrapping_sub((*ctx).data) };
    let new_len = w.l3 + w.ip_len + SYNACK_TCP_LEN;
    let delta = new_len as i32 - old_len as i32;
    // SAFETY: a context helper; on failure the frame is unchanged.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx, delta) } != 0 {
        return 0;
    }
    // Stores within the adjusted frame do not fail; if one did, the frame
    // would go on to the stack with the SYN's headers cut to a length that
    // no longer matches them, which the stack drops.
    if !store(ctx, w.l3, ip, w.ip_len) || !store(ctx, w.l3 + w.ip_len, tcp, SYNACK_TCP_LEN) {
        return 0;
    }
    // Swap the MAC addresses, as two words and a half, in the buffer the
    // headers have left.
    let macs = ip.cast::<u64>();
    if !load(ctx, 0, ip, 12) {
        return 0;
    }
    // SAFETY: 16 bytes of the 8-aligned buffer, the first 12 loaded.
    let ok = unsafe {
        let (a, b) = (u64::from_le(macs.read()), u64::from_le(macs.add(1).read()));
        macs.write_volatile(((a >> 48) | (b & 0xffff_ffff) << 16 | (a & 0xffff) << 48).to_le());
        macs.add(1)
            .write_volatile(((a >> 16) & 0xffff_ffff).to_le());
        store(ctx, 0, ip, 12)
    };
    ok as u32
}

/// Writes the SYN-ACK's IP and TCP headers, with their checksums, over the
/// SYN's copies.
#[inline(always)]
fn write_synack(
    ip: &Out,
    tcp: &Out,
    pkt: &Packet,
    w: &Where,
    cookie: u32,
    client_seq: u32,
    mss: u16,
) {
    let src = pkt.src.addr.to_words32();
    let dst = pkt.dst.to_words32();
    let tcp_len = SYNACK_TCP_LEN as u16;
    let addrs = if w.v6 {
        ip.u32(0, 0x6000_0000);
        ip.u16(4, tcp_len);
        ip.u8(6, 6);
        ip.u8(7, 64);
        for i in 0..4 {
            ip.raw32(8 + 4 * i, dst[i]);
            ip.raw32(24 + 4 * i, src[i]);
        }
        addr_sum(&src) + addr_sum(&dst)
    } else {
        let total = 20 + tcp_len;
        ip.u16(0, 0x4500);
        ip.u16(2, total);
        ip.u32(4, 0x0000_4000);
        ip.u16(8, 64 << 8 | 6);
        ip.raw32(12, dst[0]);
        ip.raw32(16, src[0]);
        let addrs = addr_sum(&src[..1]) + addr_sum(&dst[..1]);
        let sum = 0x4500 + total as u32 + 0x4000 + (64 << 8 | 6) + addrs;
        ip.u16(10, !fold(sum));
        addrs
    };
    let window = (mss as u32 * SYNACK_WINDOW_MSS).min(SYNACK_WINDOW_MAX) as u16;
    let ack = client_seq.wrapping_add(1);
    let flags_word = ((SYNACK_TCP_LEN as u16 / 4) << 12) | 0x12;
    tcp.u16(0, pkt.dport);
    tcp.u16(2, pkt.sport);
    tcp.u32(4, cookie);
    tcp.u32(8, ack);
    tcp.u16(12, flags_word);
    tcp.u16(14, window);
    tcp.u16(18, 0);
    tcp.u16(20, 0x0204);
    tcp.u16(22, mss);
    // The pseudo-header (addresses, protocol, length), then the header.
    let sum = addrs
        + 6
        + tcp_len as u32
        + pkt.dport as u32
        + pkt.sport as u32
        + (cookie >> 16)
        + (cookie & 0xffff)
        + (ack >> 16)
        + (ack & 0xffff)
        + flags_word as u32
        + window as u32
        + 0x0204
        + mss as u32;
    tcp.u16(16, !fold(sum));
}

/// Folds a 32-bit sum to 16 bits: twice is enough for any sum of these.
#[inline(always)]
fn fold(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Looks at an ACK from an unverified source: one of [`ack`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_ack_check(ctx: *mut xdp_md, pkt: *const Packet, at: u32) -> u32 {
    // SAFETY: null checked; the verifier checked it points to a Packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return ack::NO_SOCKET;
    };
    let Some(w) = locate(at) else {
        return ack::NO_SOCKET;
    };
    let mut h = MaybeUninit::<Headers>::uninit();
    let ip = h.as_mut_ptr().cast::<u8>();
    // SAFETY: `tcp` starts 40 bytes into the 100-byte buffer.
    let tcp = unsafe { ip.add(40) };
    let sk = lookup(ctx, pkt, &w, ip);
    if sk.is_null() {
        return ack::NO_SOCKET;
    }
    // SAFETY: a valid socket pointer until released.
    let state = unsafe { (*sk).state };
    if state != TCP_LISTEN {
        release(sk);
        return if state == TCP_ESTABLISHED {
            ack::ESTABLISHED
        } else {
            ack::NO_SOCKET
        };
    }
    if !load(ctx, w.l3, ip, w.ip_len) || !load(ctx, w.l4, tcp, 20) {
        release(sk);
        return ack::NO_SOCKET;
    }
    // SAFETY: both buffers hold the lengths passed, loaded from the packet.
    let r = unsafe {
        bpf_tcp_check_syncookie(sk.cast(), ip.cast(), w.ip_len, tcp.cast::<tcphdr>(), 20)
    };
    release(sk);
    match r {
        0 => ack::VALID,
        // -EACCES: a wrong cookie; -ENOENT: none was sent lately.
        -13 | -2 => ack::BAD,
        // -EINVAL and the like: cookies are off in this namespace.
        _ => ack::NO_SOCKET,
    }
}
