//! The Rampart XDP program. The decision lives in `rampart_common::decide`,
//! shared with the reference model; `filter` binds it to maps and packets.
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

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn rampart(ctx: XdpContext) -> u32 {
    filter::filter(&ctx)
}
