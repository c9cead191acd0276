//! BPF global functions for the costly steps of a decision.
//!
//! The verifier checks a global function once, on its own, and continues the
//! caller from a single state with an unknown return value. Inlined, these
//! steps multiply the paths the verifier walks past its limit. Arguments are
//! scalars only (addresses split into two u64), so no pointer checks apply.
use rampart_common::{
    decide::{List, find_ban_with, find_list_with, meter_with},
    parse::Source,
};

use crate::maps::{BpfTables, config};

/// Packs a source for a global-function call.
#[inline(always)]
pub fn split(src: &Source) -> (u64, u64) {
    let a = &src.addr;
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

#[inline(always)]
fn join(family: u64, hi: u64, lo: u64) -> Source {
    let h = hi.to_ne_bytes();
    let l = lo.to_ne_bytes();
    Source {
        family: family as u8,
        addr: [
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
            l[6], l[7],
        ],
    }
}

/// Result of [`rampart_find_list`]: bit 0 set when found; the entry's flags
/// and origin in the upper bits (bits 8..40: origin, 40..48: flags).
pub const FOUND: u64 = 1;

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_find_list(list: u64, family: u64, hi: u64, lo: u64, now: u64) -> u64 {
    let Some(cfg) = config() else { return 0 };
    let list = if list == 0 { List::Allow } else { List::Block };
    match find_list_with(&BpfTables, cfg, list, &join(family, hi, lo), now) {
        Some(e) => FOUND | ((e.origin as u64) << 8) | (((e.flags & 0xff) as u64) << 40),
        None => 0,
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_find_ban(family: u64, hi: u64, lo: u64, now: u64) -> u64 {
    let Some(cfg) = config() else { return 0 };
    find_ban_with(&BpfTables, cfg, &join(family, hi, lo), now) as u64
}

/// `meta`: policy index in bits 0..8, family in 8..16, global dry-run in bit 16.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rampart_meter(meta: u64, hi: u64, lo: u64, len: u64, now: u64) -> u64 {
    let Some(cfg) = config() else { return 1 };
    let index = (meta & 0xff) as u32;
    let src = join((meta >> 8) & 0xff, hi, lo);
    let dry = (meta >> 16) & 1 != 0;
    meter_with(&BpfTables, cfg, index, &src, len as u32, now, dry) as u64
}
