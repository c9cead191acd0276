//! The filter itself, shared by the production object and the benchmark
//! build: parse, decide, count, return the verdict.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use rampart_common::{
    abi::{MAX_IFINDEX, action, counter_index},
    decide::{Verdict, decide},
    parse::parse,
};

use crate::{
    maps::{self, BpfTables, COUNTERS, IFACE_SLOTS, config, now_ns},
    packet::XdpFrame,
};

#[inline(always)]
pub fn filter(ctx: &XdpContext) -> u32 {
    // Every context field is read once, here: the verifier refuses a context
    // pointer that the compiler kept around with an offset added.
    let ifindex = ctx.ingress_ifindex() as u32;
    let frame = XdpFrame::new(ctx);
    let len = (ctx.data_end() - ctx.data()) as u32;
    let Some(cfg) = config() else {
        // Unreachable for an array map; pass rather than fail closed on
        // something that says nothing about the packet.
        return xdp_action::XDP_PASS;
    };
    let parsed = parse(&frame);
    let tables = BpfTables { cfg, ctx: ctx.ctx };
    let verdict = decide(&tables, cfg, &parsed, len, &now_ns);
    maps::sample(cfg, &parsed, &verdict, ifindex, len);
    record(ifindex, &verdict, len)
}

/// The one exit: count the verdict per interface and return exactly it.
#[inline(always)]
fn record(ifindex: u32, v: &Verdict, len: u32) -> u32 {
    let slot = if ifindex < MAX_IFINDEX {
        IFACE_SLOTS.get(ifindex).copied().unwrap_or(0)
    } else {
        0
    };
    if let Some(c) = COUNTERS.get_ptr_mut(counter_index(slot, v.action, v.reason)) {
        // SAFETY: a per-CPU array value, only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
    match v.action {
        action::DROP => xdp_action::XDP_DROP,
        // The frame is now the SYN-ACK, going back out.
        action::CHALLENGE => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}
