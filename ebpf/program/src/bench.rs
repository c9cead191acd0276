//! The benchmark object: `rampart_varied` is the production filter behind a
//! prologue that rewrites the IPv4 source per packet (so multi-source and
//! spoofed floods are not one-key hot-cache figures), `floor` is the empty
//! XDP_DROP program every cost is compared with, `generator` transmits
//! frames back out (XDP_TX) for live-frames throughput runs, and
//! `syn_rebuild` is the prologue of mode 3 alone (its cost, to take out of
//! the SYN cookie figure).
#![no_std]
#![no_main]
#![expect(
    unreachable_pub,
    reason = "a BPF object is linked alone: no crate reaches its items, and its \
              `pub extern \"C\"` functions are BPF global functions the linker exports"
)]

mod cookie;
mod filter;
mod maps;
mod observe;
mod packet;
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// [0]: mode (0 keep, 1 cycle over [1] sources (a power of two), 2 a random source each
/// packet, 3 the SYN of `BENCH_FRAME` rebuilt from a random source, 4 the
/// same with its IPv4 and TCP checksums kept right, for frames the kernel
/// stack must accept); for `rampart_varied` and `generator` alike. Modes 3
/// and 4 write their whole frame each time: S7's answer turns the frame
/// into a SYN-ACK, and a repeated test run starts from what it left.
#[map]
static BENCH: Array<u32> = Array::with_max_entries(2, 0);
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Mode 3's SYN, [`SYN_LEN`] bytes: the cookie answer turns the frame into
/// a SYN-ACK, and `BPF_PROG_TEST_RUN` runs each repeat on what the last
/// left, so the prologue writes the SYN back first.
#[map]
static BENCH_FRAME: Array<[u8; 64]> = Array::with_max_entries(1, 0);
/// An untagged IPv4 SYN without options or payload.
const SYN_LEN: u32 = 54;

/// Offset of the IPv4 source in an untagged frame.
const SRC: usize = 14 + 12;

#[inline(always)]
fn vary_source(ctx: &XdpContext) {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SRC + 4 > end {
        return;
    }
    let mode = BENCH.get(0).copied().unwrap_or(0);
    let src = match mode {
        1 => {
            let n = BENCH.get(1).copied().unwrap_or(1).max(1);
            let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
                return;
            };
            // SAFETY: per-CPU value, only this CPU writes it.
            let s = unsafe {
                *seq = (*seq).wrapping_add(1);
                *seq
            };
            // n is a power of two (the benchmark's counts are): a mask, not
            // a division, keeps the prologue cheap.
            0x0a00_0000 | (s & (n - 1))
        }
        2 => {
            let Some(x) = next_random() else {
                return;
            };
            x
        }
        3 => {
            rebuild_syn(ctx, false);
            return;
        }
        4 => {
            rebuild_syn(ctx, true);
            return;
        }
        _ => return,
    };
    // SAFETY: [start + SRC, +4) is inside the packet (checked above).
    unsafe { ((start + SRC) as *mut [u8; 4]).write_unaligned(src.to_be_bytes()) };
}

/// A per-CPU xorshift rather than `bpf_get_prandom_u32`: a helper call
/// would charge the spoofed flood for the generator's work.
#[inline(always)]
fn next_random() -> Option<u32> {
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, only this CPU writes it.
    unsafe {
        let mut x = *seq | 1;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *seq = x;
        Some(x)
    }
}

/// A 16-bit one's-complement checksum after a 32-bit field in it changed
/// from `old` to `new` (RFC 1624), all in host order.
#[inline(always)]
fn csum_replace(csum: u16, old: u32, new: u32) -> u16 {
    let mut s = (!csum) as u32;
    s += (!(old >> 16) & 0xffff) + (!old & 0xffff);
    s += (new >> 16) + (new & 0xffff);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Sets the IPv4 source of an untagged TCP frame without options, fixing
/// the IPv4 header and TCP checksums (the source is in the TCP pseudo-header).
#[inline(always)]
fn set_source_keeping_checksums(ctx: &XdpContext, src: u32) {
    const IP_CSUM: usize = 14 + 10;
    const TCP_CSUM: usize = 14 + 20 + 16;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + TCP_CSUM + 2 > end {
        return;
    }
    let new = 0x0a00_0000 | (src & 0x00ff_ffff);
    // SAFETY: every offset below is under TCP_CSUM + 2, inside the packet
    // (checked above).
    unsafe {
        let at = |off: usize| (start + off) as *mut u8;
        let old = u32::from_be(at(SRC).cast::<u32>().read_unaligned());
        at(SRC).cast::<u32>().write_unaligned(new.to_be());
        for off in [IP_CSUM, TCP_CSUM] {
            let c = u16::from_be(at(off).cast::<u16>().read_unaligned());
            at(off)
                .cast::<u16>()
                .write_unaligned(csum_replace(c, old, new).to_be());
        }
    }
}

/// Writes `BENCH_FRAME`'s SYN over the frame, from a random source (with
/// its checksums fixed, if `checksums`).
#[inline(always)]
fn rebuild_syn(ctx: &XdpContext, checksums: bool) {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let delta = SYN_LEN as i32 - len as i32;
    // SAFETY: a context helper; on failure the frame is left as it was.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return;
    }
    let (Some(syn), Some(src)) = (BENCH_FRAME.get_ptr_mut(0), next_random()) else {
        return;
    };
    if checksums {
        // SAFETY: the map value holds 64 bytes; the frame is SYN_LEN long.
        unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, syn.cast(), SYN_LEN) };
        set_source_keeping_checksums(ctx, src);
        return;
    }
    let mut src = (0x0a00_0000 | (src & 0x00ff_ffff)).to_be_bytes();
    // SAFETY: the map value holds 64 bytes, the stack copy 4; the frame is
    // SYN_LEN bytes long now.
    unsafe {
        bpf_xdp_store_bytes(ctx.ctx, 0, syn.cast(), SYN_LEN);
        bpf_xdp_store_bytes(ctx.ctx, SRC as u32, src.as_mut_ptr().cast(), 4);
    }
}

#[xdp]
pub fn rampart_varied(ctx: XdpContext) -> u32 {
    vary_source(&ctx);
    filter::filter(&ctx)
}

#[xdp]
pub fn floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn syn_rebuild(ctx: XdpContext) -> u32 {
    vary_source(&ctx);
    xdp_action::XDP_DROP
}

#[xdp]
pub fn generator(ctx: XdpContext) -> u32 {
    vary_source(&ctx);
    xdp_action::XDP_TX
}
