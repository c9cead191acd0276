//! What the traffic detector counts per packet, shared by the kernel and
//! the agent: a policy's port slot, and where a source lands in the
//! policy's HyperLogLog sketch of distinct sources.
use crate::abi::{
    Addr, MAX_POLICIES, PORT_SLOTS, Policy, SKETCH_EPOCH_SHIFT, SKETCH_REGISTERS, policy_flag,
};

/// The `POLICY_STATS` index of a packet to `dport` of policy entry `index`.
#[inline(always)]
pub fn stats_index(p: &Policy, index: u32, dport: u16) -> u32 {
    let slot = if p.flags & policy_flag::HAS_PORTS != 0 {
        (dport.saturating_sub(p.port_lo) as u32 >> (p.port_shift & 15)) & (PORT_SLOTS - 1)
    } else {
        0
    };
    (index & (MAX_POLICIES - 1)) * PORT_SLOTS + slot
}

/// The shift that cuts `lo..=hi` into at most [`PORT_SLOTS`] equal runs.
pub fn port_shift(lo: u16, hi: u16) -> u8 {
    let width = u32::from(hi.saturating_sub(lo)) + 1;
    let mut shift = 0u8;
    while (width - 1) >> shift >= PORT_SLOTS {
        shift += 1;
    }
    shift
}

/// The ports of slot `slot` of `lo..=hi` under `shift`, or `None` past the
/// range's end.
pub fn slot_ports(lo: u16, hi: u16, shift: u8, slot: u32) -> Option<(u16, u16)> {
    let first = u32::from(lo) + (slot << shift);
    if first > u32::from(hi) {
        return None;
    }
    let last = (first + (1 << shift) - 1).min(u32::from(hi));
    Some((first as u16, last as u16))
}

/// The register and rank of a source: a keyed hash, so that nobody can
/// pick sources that all land in one register (to hide a spoofed flood's
/// spread) or that rank high (to fake one). The rank is one more than the
/// leading zeros of the bits the register index did not use.
#[inline(always)]
pub fn place(addr: &Addr, seed: u64) -> (usize, u8) {
    let x =
        (addr.words[0] ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ addr.words[1].rotate_left(31);
    let h = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = h ^ (h >> 32);
    let index = (h >> 56) as usize & (SKETCH_REGISTERS - 1);
    // 56 bits remain; the low bit set bounds the rank at 57.
    let rank = ((h << 8) | 0x80).leading_zeros() as u8 + 1;
    (index, rank)
}

/// The sketch bank (0 or 1) of the epoch `now` falls in.
#[inline(always)]
pub const fn bank(now_ns: u64) -> u32 {
    ((now_ns >> SKETCH_EPOCH_SHIFT) & 1) as u32
}

/// The epoch `now` falls in.
pub const fn epoch(now_ns: u64) -> u64 {
    now_ns >> SKETCH_EPOCH_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_slots_cover_a_range_in_equal_runs() {
        assert_eq!(port_shift(80, 80), 0);
        assert_eq!(port_shift(8000, 8015), 0);
        assert_eq!(port_shift(8000, 8016), 1);
        assert_eq!(port_shift(0, u16::MAX), 12);
        assert_eq!(slot_ports(8000, 8016, 1, 0), Some((8000, 8001)));
        assert_eq!(slot_ports(8000, 8016, 1, 8), Some((8016, 8016)));
        assert_eq!(slot_ports(8000, 8016, 1, 9), None);
        assert_eq!(slot_ports(0, u16::MAX, 12, 15), Some((61_440, 65_535)));
    }

    #[test]
    fn ranks_follow_a_geometric_law() {
        let mut at_least_4 = 0;
        for i in 0..100_000u64 {
            let (index, rank) = place(&Addr { words: [i, 0] }, 7);
            assert!(index < SKETCH_REGISTERS && (1..=57).contains(&rank));
            at_least_4 += usize::from(rank >= 4);
        }
        // P(rank >= 4) = 1/8.
        assert!((11_500..13_500).contains(&at_least_4), "{at_least_4}");
    }
}
