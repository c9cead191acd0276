//! Prefix masking and the rate-table hash, identical in kernel and user space.
use crate::abi::{V4Key, V6Key};

/// Masks an IPv4 address to `len` bits (lengths over 32 are treated as 32).
#[inline(always)]
pub fn v4_key(addr: [u8; 4], len: u8) -> V4Key {
    let len = if len > 32 { 32 } else { len };
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    };
    V4Key {
        prefix_len: len as u32,
        addr: (u32::from_be_bytes(addr) & mask).to_be_bytes(),
    }
}

/// Masks an IPv6 address to `len` bits (lengths over 128 are treated as 128).
#[inline(always)]
pub fn v6_key(addr: [u8; 16], len: u8) -> V6Key {
    let len = if len > 128 { 128 } else { len };
    V6Key {
        prefix_len: len as u32,
        pad: 0,
        addr: mask_v6(addr, len),
    }
}

#[inline(always)]
pub fn mask_v6(addr: [u8; 16], len: u8) -> [u8; 16] {
    // Two u64 halves: the BPF backend has no native 128-bit shifts.
    let len = if len > 128 { 128 } else { len } as u32;
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let hi_mask = mask64(if len > 64 { 64 } else { len });
    let lo_mask = mask64(len.saturating_sub(64));
    let hi = (hi & hi_mask).to_be_bytes();
    let lo = (lo & lo_mask).to_be_bytes();
    [
        hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], lo[0], lo[1], lo[2], lo[3], lo[4],
        lo[5], lo[6], lo[7],
    ]
}

/// The top `bits` bits set (0 to 64).
#[inline(always)]
fn mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        u64::MAX << (64 - bits)
    }
}

/// The first 4 bytes of a 16-byte address field (IPv4 is stored there).
#[inline(always)]
pub fn v4_of(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// Mixes an aggregated source, its prefix length and the policy index into
/// a rate-table hash.
/// A keyed multiply-xorshift: cheap, and the secret seed keeps an attacker
/// from choosing sources that collide with a given client.
#[inline(always)]
pub fn rate_hash(addr: &[u8; 16], family: u8, policy: u16, prefix_len: u8, seed: u64) -> u64 {
    let hi = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let mut h =
        seed ^ ((family as u64) << 56) ^ ((prefix_len as u64) << 48) ^ ((policy as u64) << 32);
    h = mix(h ^ hi);
    h = mix(h ^ lo);
    h
}

#[inline(always)]
fn mix(mut x: u64) -> u64 {
    // The finaliser of splitmix64.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_v4() {
        assert_eq!(v4_key([10, 1, 2, 3], 24).addr, [10, 1, 2, 0]);
        assert_eq!(v4_key([10, 1, 2, 3], 0).addr, [0, 0, 0, 0]);
        assert_eq!(v4_key([10, 1, 2, 3], 32).addr, [10, 1, 2, 3]);
        assert_eq!(v4_key([10, 1, 2, 3], 40).prefix_len, 32);
    }

    #[test]
    fn masks_v6() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let k = v6_key(a, 64);
        assert_eq!(&k.addr[..8], &a[..8]);
        assert_eq!(&k.addr[8..], &[0; 8]);
        assert_eq!(v6_key(a, 0).addr, [0; 16]);
        assert_eq!(v6_key(a, 128).addr, a);
        assert_eq!(v6_key(a, 12).addr[1], 0x00);
        assert_eq!(v6_key(a, 12).addr[0], 0x20);
    }
}
