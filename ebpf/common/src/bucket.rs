//! Token-bucket arithmetic in fixed point, without division (the kernel side
//! runs it per packet). One token is `SCALE` units, so a rate in tokens per
//! second adds exactly `rate` units per elapsed nanosecond.

pub const SCALE: u64 = 1_000_000_000;
/// Largest accepted burst (packets or bytes): keeps `burst * SCALE` in a u64.
pub const MAX_BURST: u64 = 1 << 33;
/// Largest accepted rate (packets or bytes per second): keeps a full refill,
/// `rate * fill_ns`, in a u64 as well.
pub const MAX_RATE: u64 = 1 << 40;

// The kernel side multiplies without overflow checks (a checked 64-bit
// multiply needs a 128-bit libcall that BPF lacks); the agent refuses rates
// and bursts above these bounds, which keep every product below 2^64.
const _: () = assert!(MAX_BURST.checked_mul(SCALE).is_some());
const _: () = assert!(
    MAX_BURST
        .checked_mul(SCALE)
        .unwrap()
        .checked_add(MAX_RATE)
        .is_some()
);

/// `tokens * SCALE` for values the agent has bounded by [`MAX_BURST`].
#[inline(always)]
pub const fn scaled(tokens: u64) -> u64 {
    tokens.wrapping_mul(SCALE)
}

/// Tokens after `elapsed_ns` of refill at `rate`, capped at `burst`.
/// `fill_ns` is the time to fill from empty; capping the elapsed time at it
/// keeps the product from overflowing.
#[inline(always)]
pub fn refill(tokens: u64, elapsed_ns: u64, rate: u64, fill_ns: u64, burst: u64) -> u64 {
    let cap = scaled(burst);
    let elapsed = if elapsed_ns > fill_ns {
        fill_ns
    } else {
        elapsed_ns
    };
    // elapsed <= fill_ns, so elapsed * rate <= burst * SCALE + rate.
    let t = tokens.saturating_add(elapsed.wrapping_mul(rate));
    if t > cap { cap } else { t }
}

/// Nanoseconds to fill a bucket of `burst` tokens at `rate` per second,
/// rounded up (computed by the agent, never by the kernel).
pub fn fill_ns(rate: u64, burst: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    burst.saturating_mul(SCALE).div_ceil(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_and_caps_at_burst() {
        let fill = fill_ns(100, 10);
        assert_eq!(fill, 100_000_000);
        // 10 ms at 100/s is one token.
        assert_eq!(refill(0, 10_000_000, 100, fill, 10), SCALE);
        assert_eq!(refill(0, u64::MAX, 100, fill, 10), 10 * SCALE);
        assert_eq!(refill(5 * SCALE, 1_000_000_000, 100, fill, 10), 10 * SCALE);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let fill = fill_ns(MAX_RATE, MAX_BURST);
        assert_eq!(
            refill(0, u64::MAX, MAX_RATE, fill, MAX_BURST),
            MAX_BURST * SCALE
        );
        assert_eq!(fill_ns(0, 5), 0);
    }
}
