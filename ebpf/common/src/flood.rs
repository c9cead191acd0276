//! Flood defence state, shared by the kernel and the model: the SYN rate
//! that engages `auto` cookie mode, and the newcomer budget. The decision
//! that uses them is in [`crate::decide`].
use crate::{
    abi::{
        Addr, CALM_WINDOWS, FloodState, Policy, SYN_WINDOW_NS, VERIFIED_HINT_WORDS, policy_flag,
        syn_cookies,
    },
    bucket::{SCALE, refill},
};

/// The word and bit of `VERIFIED_HINT` for an address: a keyed hash, so
/// sources cannot aim at each other's bits. The data plane reads the
/// verified tables only when the bit is set, so a spoofed flood, whose
/// sources are never verified, costs an array read instead of a hash miss
/// per packet. A set bit proves nothing (the tables decide); bits of
/// sources no longer verified are cleared when the agent rebuilds the map.
#[inline(always)]
pub fn verified_hint(addr: &Addr, seed: u64) -> (u32, u64) {
    let x = addr.words[0] ^ addr.words[1].rotate_left(29) ^ seed;
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bits = VERIFIED_HINT_WORDS.trailing_zeros() + 6;
    let index = (h >> (64 - bits)) as u32;
    (index >> 6, 1u64 << (index & 63))
}

/// Counts one SYN to the policy's ports. `auto` mode engages as soon as the
/// current window's count passes `syn_above`; it disengages once
/// [`CALM_WINDOWS`] windows in a row stayed under half of it (a window with
/// no SYN at all is calm).
#[inline(always)]
pub fn count_syn(fs: &mut FloodState, p: &Policy, now: u64) {
    // A clock a little behind the window's start (another CPU's) counts
    // into the current window.
    let since = now.saturating_sub(fs.window_start_ns);
    if since >= SYN_WINDOW_NS {
        close_window(fs, p, since);
        fs.window_start_ns = now;
        fs.syns = 0;
    }
    fs.syns = fs.syns.saturating_add(1);
    if p.syn_cookies == syn_cookies::AUTO && fs.syns > p.syn_above {
        fs.engaged = 1;
        fs.calm = 0;
    }
}

/// Ends the window that started `since` ns ago: a calm window, and the
/// windows after it that saw no SYN, count toward disengaging.
#[inline(always)]
fn close_window(fs: &mut FloodState, p: &Policy, since: u64) {
    let empty_after = if since >= (CALM_WINDOWS as u64 + 1) * SYN_WINDOW_NS {
        CALM_WINDOWS
    } else {
        (since / SYN_WINDOW_NS) as u32 - 1
    };
    fs.last_window_syns = if empty_after == 0 { fs.syns } else { 0 };
    if fs.engaged == 0 {
        return;
    }
    let calm = if fs.syns < p.syn_above / 2 {
        fs.calm + 1
    } else {
        0
    };
    let calm = calm.saturating_add(empty_after);
    if calm >= CALM_WINDOWS {
        fs.engaged = 0;
        fs.calm = 0;
    } else {
        fs.calm = calm;
    }
}

/// Whether the policy answers SYNs from unverified sources with cookies:
/// always in `on`; in `auto` while its SYN rate engaged it, or while the
/// traffic detector defends it.
#[inline(always)]
pub fn cookies_engaged(fs: &FloodState, p: &Policy) -> bool {
    match p.syn_cookies {
        syn_cookies::ON => true,
        syn_cookies::AUTO => fs.engaged != 0 || p.flags & policy_flag::DEFEND != 0,
        _ => false,
    }
}

/// Whether `auto` mode is still engaged at `now`, as the agent reports it:
/// the kernel only closes a window on the next SYN, so a flood that stopped
/// dead leaves `engaged` set until then.
pub fn engaged_at(fs: &FloodState, p: &Policy, now: u64) -> bool {
    if p.syn_cookies != syn_cookies::AUTO {
        return p.syn_cookies == syn_cookies::ON;
    }
    if p.flags & policy_flag::DEFEND != 0 {
        return true;
    }
    let mut probe = *fs;
    let since = now.saturating_sub(fs.window_start_ns);
    if since >= SYN_WINDOW_NS {
        close_window(&mut probe, p, since);
    }
    probe.engaged != 0
}

/// Takes one packet from the policy's newcomer budget; true when it fits
/// (or the policy has no budget).
#[inline(always)]
pub fn take_newcomer(fs: &mut FloodState, p: &Policy, now: u64) -> bool {
    if p.new_pps == 0 {
        return true;
    }
    let elapsed = now.saturating_sub(fs.newcomer_last_ns);
    if now > fs.newcomer_last_ns {
        fs.newcomer_last_ns = now;
    }
    let tokens = refill(
        fs.newcomer_tokens,
        elapsed,
        p.new_pps,
        p.new_fill_ns,
        p.new_burst,
    );
    let ok = tokens >= SCALE;
    fs.newcomer_tokens = if ok { tokens - SCALE } else { tokens };
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::fill_ns;

    const S: u64 = SYN_WINDOW_NS;

    fn auto(above: u32) -> Policy {
        Policy {
            syn_cookies: syn_cookies::AUTO,
            syn_above: above,
            ..Policy::default()
        }
    }

    /// `n` SYNs spread over the second starting at `t`.
    fn second(fs: &mut FloodState, p: &Policy, t: u64, n: u64) {
        for i in 0..n {
            count_syn(fs, p, t + i * (S / n.max(1)));
        }
    }

    #[test]
    fn auto_engages_within_the_window_that_passes_the_threshold() {
        let p = auto(100);
        let mut fs = FloodState::default();
        let t0 = 100 * S;
        second(&mut fs, &p, t0, 100);
        assert!(!cookies_engaged(&fs, &p), "at the threshold, not over it");
        second(&mut fs, &p, t0 + S, 101);
        assert!(cookies_engaged(&fs, &p));
    }

    #[test]
    fn auto_disengages_only_after_calm_windows_in_a_row() {
        let p = auto(100);
        let mut fs = FloodState::default();
        let t0 = 100 * S;
        second(&mut fs, &p, t0, 1000);
        assert!(cookies_engaged(&fs, &p));
        // Over half the threshold keeps it engaged, however long.
        for s in 1..30 {
            second(&mut fs, &p, t0 + s * S, 60);
        }
        assert!(cookies_engaged(&fs, &p));
        // Calm windows: it lets go on the tenth.
        let t1 = t0 + 30 * S;
        for s in 0..u64::from(CALM_WINDOWS) {
            assert!(cookies_engaged(&fs, &p), "still engaged at calm window {s}");
            second(&mut fs, &p, t1 + s * S, 10);
        }
        second(&mut fs, &p, t1 + u64::from(CALM_WINDOWS) * S, 10);
        assert!(!cookies_engaged(&fs, &p));
    }

    #[test]
    fn silence_counts_as_calm_and_the_agent_sees_it_before_the_kernel() {
        let p = auto(100);
        let mut fs = FloodState::default();
        let t0 = 100 * S;
        second(&mut fs, &p, t0, 1000);
        assert!(engaged_at(&fs, &p, t0 + S));
        let later = t0 + (u64::from(CALM_WINDOWS) + 1) * S;
        assert!(!engaged_at(&fs, &p, later));
        count_syn(&mut fs, &p, later);
        assert!(!cookies_engaged(&fs, &p));
    }

    #[test]
    fn on_is_always_engaged_and_off_never() {
        let fs = FloodState::default();
        let on = Policy {
            syn_cookies: syn_cookies::ON,
            ..Policy::default()
        };
        assert!(cookies_engaged(&fs, &on));
        assert!(!cookies_engaged(&fs, &Policy::default()));
    }

    #[test]
    fn the_newcomer_budget_caps_the_total_and_refills() {
        let p = Policy {
            new_pps: 100,
            new_burst: 50,
            new_fill_ns: fill_ns(100, 50),
            ..Policy::default()
        };
        let mut fs = FloodState::default();
        let t0 = 100 * S;
        let passed = (0..1000).filter(|_| take_newcomer(&mut fs, &p, t0)).count();
        assert_eq!(passed, 50, "one burst");
        let passed = (0..1000)
            .filter(|_| take_newcomer(&mut fs, &p, t0 + S / 10))
            .count();
        assert_eq!(passed, 10, "100/s for 100 ms");
        assert!(take_newcomer(&mut fs, &Policy::default(), t0), "no budget");
    }
}
