//! The traffic detector's counting: per policy slot, packets, bytes, SYNs,
//! new sources and drops, and per policy group a sketch of distinct
//! sources. The agent reads both once per sketch epoch.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use rampart_common::{
    abi::{
        Config, MAX_POLICIES, POLICY_STATS_ENTRIES, PolicyStats, SKETCH_ENTRIES, SKETCH_REGISTERS,
        Sketch,
    },
    decide::{Tables, outcome},
    parse::{Packet, ipproto, tcp_flag},
    sketch,
};

use crate::maps::BpfTables;

#[map]
static POLICY_STATS: PerCpuArray<PolicyStats> =
    PerCpuArray::with_max_entries(POLICY_STATS_ENTRIES, 0);
#[map]
static SKETCHES: PerCpuArray<Sketch> = PerCpuArray::with_max_entries(SKETCH_ENTRIES, 0);

/// Counts one packet of a policy entry out of line (see
/// `Tables::observe`). `packed` holds the entry's index (bits 0-7), the
/// outcome (8-15) and the length (16-31), so the call passes its scalars in one register.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_observe(
    cfg: *const Config,
    pkt: *const Packet,
    packed: u32,
    now: u64,
) -> u32 {
    // SAFETY: both null checked; the verifier checked each points to
    // initialised memory of its type's size.
    let (Some(cfg), Some(pkt)) = (unsafe { cfg.as_ref() }, unsafe { pkt.as_ref() }) else {
        return 0;
    };
    let index = packed & 0xff;
    let o = (packed >> 8) & 0xff;
    let len = u64::from(packed >> 16);
    let tables = BpfTables::without_packet(cfg);
    let Some(policy) = tables.policy(index) else {
        return 0;
    };
    let kind = tcp_flag::SYN | tcp_flag::ACK | tcp_flag::RST | tcp_flag::FIN;
    let syn = pkt.proto == ipproto::TCP && pkt.tcp_flags & kind == tcp_flag::SYN;
    if let Some(s) = POLICY_STATS.get_ptr_mut(sketch::stats_index(policy, index, pkt.dport)) {
        // SAFETY: a per-CPU value, only this CPU writes it.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).syns += u64::from(syn);
            (*s).new_sources += u64::from(o & outcome::NEW_SOURCE != 0);
            (*s).drops += u64::from(o & outcome::DROPPED != 0);
        }
    }
    let group = u32::from(policy.group) & (MAX_POLICIES - 1);
    let (register, rank) = sketch::place(&pkt.src.addr, cfg.hash_seed);
    if let Some(sk) = SKETCHES.get_ptr_mut(sketch::bank(now) * MAX_POLICIES + group) {
        // SAFETY: as above; the index is masked to the array's length.
        unsafe {
            let r = &mut (*sk).registers[register & (SKETCH_REGISTERS - 1)];
            if *r < rank {
                *r = rank;
            }
        }
    }
    0
}
