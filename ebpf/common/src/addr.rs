//! Prefix masking and the rate-table hash, identical in kernel and user space.
//!
//! Addresses travel as words ([`Addr`], and IPv4 as one `u32` holding its
//! four bytes in memory order): see [`Addr`] for why.
use crate::abi::{Addr, V4Key, V6Key};

/// Masks an IPv4 address to `len` bits (lengths over 32 are treated as 32).
#[inline(always)]
pub fn v4_key(addr: [u8; 4], len: u8) -> V4Key {
    v4_key_word(u32::from_ne_bytes(addr), len)
}

/// [`v4_key`] for the four address bytes loaded as one native-order word.
#[inline(always)]
pub fn v4_key_word(addr: u32, len: u8) -> V4Key {
    let len = v4_len(len);
    V4Key {
        prefix_len: len as u32,
        addr: mask_v4_word(addr, len).to_ne_bytes(),
    }
}

/// A prefix length valid for IPv4 (lengths over 32 are treated as 32).
#[inline(always)]
pub fn v4_len(len: u8) -> u8 {
    if len > 32 { 32 } else { len }
}

/// Masks a native-order IPv4 word to its first `len` bits (`len` <= 32).
#[inline(always)]
pub fn mask_v4_word(addr: u32, len: u8) -> u32 {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    };
    (u32::from_be(addr) & mask).to_be()
}

/// Masks an IPv6 address to `len` bits (lengths over 128 are treated as 128).
#[inline(always)]
pub fn v6_key(addr: Addr, len: u8) -> V6Key {
    let len = if len > 128 { 128 } else { len };
    V6Key {
        prefix_len: len as u32,
        pad: 0,
        addr: mask_v6(addr, len),
    }
}

#[inline(always)]
pub fn mask_v6(addr: Addr, len: u8) -> Addr {
    // Two u64 halves: the BPF backend has no native 128-bit shifts.
    let len = if len > 128 { 128 } else { len } as u32;
    let hi_mask = mask64(if len > 64 { 64 } else { len });
    let lo_mask = mask64(len.saturating_sub(64));
    Addr {
        words: [
            (u64::from_be(addr.words[0]) & hi_mask).to_be(),
            (u64::from_be(addr.words[1]) & lo_mask).to_be(),
        ],
    }
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

/// Mixes an aggregated source, its prefix length and the policy index into
/// a rate-table hash.
/// A keyed multiply-xorshift: cheap, and the secret seed keeps an attacker
/// from choosing sources that collide with a given client.
#[inline(always)]
pub fn rate_hash(addr: &Addr, family: u8, policy: u16, prefix_len: u8, seed: u64) -> u64 {
    let mut h =
        seed ^ ((family as u64) << 56) ^ ((prefix_len as u64) << 48) ^ ((policy as u64) << 32);
    h = mix(h ^ addr.words[0]);
    h = mix(h ^ addr.words[1]);
    h
}

/// The finaliser of splitmix64: every input bit moves about half the output bits.
#[inline(always)]
pub fn mix(mut x: u64) -> u64 {
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
        assert_eq!(v4_key([10, 1, 2, 3], 12).addr, [10, 0, 0, 0]);
        assert_eq!(v4_key([10, 255, 2, 3], 12).addr, [10, 240, 0, 0]);
    }

    #[test]
    fn masks_v6() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let key = |len| v6_key(Addr::from_bytes(a), len).addr.to_bytes();
        assert_eq!(&key(64)[..8], &a[..8]);
        assert_eq!(&key(64)[8..], &[0; 8]);
        assert_eq!(key(0), [0; 16]);
        assert_eq!(key(128), a);
        assert_eq!(key(12)[1], 0x00);
        assert_eq!(key(12)[0], 0x20);
        assert_eq!(key(70)[8], 0x04);
        assert_eq!(&key(70)[9..], &[0; 7]);
    }

    #[test]
    fn words_hold_the_bytes_in_memory_order() {
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(Addr::from_bytes(a).to_bytes(), a);
        let v4 = Addr::from_v4_word(u32::from_ne_bytes([192, 0, 2, 7]));
        assert_eq!(&v4.to_bytes()[..4], &[192, 0, 2, 7]);
        assert_eq!(&v4.to_bytes()[4..], &[0; 12]);
        assert_eq!(v4.v4_word().to_ne_bytes(), [192, 0, 2, 7]);
    }
}
