//! Evasion: no frame shape lets a packet from a blocklisted source pass.
//! Every IP protocol number, every IPv6 extension header alone and in chains
//! up to and past the parser's bound, VLAN and QinQ tags, IPv4 options,
//! fragments, and every truncation of each, through the kernel program
//! (BPF_PROG_TEST_RUN) with the reference model agreeing.
use rampart_common::abi::{action, reason};
use rampart_tests::{frames::FrameBuilder as F, harness::*};

const BAD: &str = "203.0.113.66";
const BAD6: &str = "2001:db8:bad::66";
const SERVER: &str = "198.51.100.1";
const SERVER6: &str = "2001:db8:ffff::1";

/// IPv6 extension headers, and ESP (which ends parsing).
const EXTS: &[u8] = &[0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

fn plane() -> Plane {
    let mut p = Plane::new();
    p.block(BAD);
    p.block("2001:db8:bad::/48");
    p
}

/// Length of the link-layer header (Ethernet plus VLAN tags).
fn l2_len(frame: &[u8]) -> usize {
    let mut off = 12;
    while frame.len() >= off + 2
        && matches!([frame[off], frame[off + 1]], [0x81, 0x00] | [0x88, 0xa8])
    {
        off += 4;
    }
    off + 2
}

/// Every `RAMPART_EVASION_CUT_STRIDE`-th truncation is tried (default 1:
/// all of them). The kernel matrix's VMs, about seven times slower under
/// emulation, sample with a stride whose phase moves from frame to frame,
/// so every cut position is still met across the frames of a test.
fn cut_stride() -> usize {
    std::env::var("RAMPART_EVASION_CUT_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(1)
}

/// The frame, and every truncation of it that still holds the source
/// address, must drop; shorter cuts must not pass as IP traffic.
fn never_passes(p: &Plane, frame: &[u8], what: &str) -> u64 {
    static PHASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let stride = cut_stride();
    let phase = PHASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % stride;
    let mut n = 0;
    let l2 = l2_len(frame);
    for cut in (14..=frame.len()).rev() {
        // The whole frame always; its truncations by the stride.
        if cut != frame.len() && (frame.len() - cut) % stride != phase {
            continue;
        }
        let f = &frame[..cut];
        let out = p.run_both(f);
        n += 1;
        if out.counted.0 == action::PASS {
            assert!(
                out.counted.1 == reason::NON_IP && cut <= l2,
                "{what}, cut at {cut}/{}: passed as {}/{}",
                frame.len(),
                out.action_name(),
                out.reason_name()
            );
        }
        if cut == frame.len() {
            assert_eq!(
                out.counted.0,
                action::DROP,
                "{what}: the whole frame was not dropped"
            );
        }
    }
    n
}

#[test]
fn every_protocol_number_from_a_blocked_source_drops() {
    let p = plane();
    let mut frames = 0;
    for proto in 0..=255u8 {
        frames += never_passes(
            &p,
            &F::new(BAD, SERVER, proto, 1234, 443).build(),
            &format!("IPv4 proto {proto}"),
        );
        frames += never_passes(
            &p,
            &F::new(BAD6, SERVER6, proto, 1234, 443).build(),
            &format!("IPv6 next header {proto}"),
        );
        frames += never_passes(
            &p,
            &F::new(BAD, SERVER, proto, 1234, 443)
                .vlan(5)
                .vlan(6)
                .qinq()
                .build(),
            &format!("QinQ IPv4 proto {proto}"),
        );
    }
    eprintln!("{frames} frames and truncations checked");
}

#[test]
fn every_extension_header_and_chain_from_a_blocked_source_drops() {
    let p = plane();
    let mut frames = 0;
    // Each header alone, before each upper protocol, fragmented or not.
    for &e in EXTS {
        for proto in [6u8, 17, 58, 59, 47] {
            for frag in [None, Some((0u16, true)), Some((100, false))] {
                let mut f = F::new(BAD6, SERVER6, proto, 1234, 443);
                if e != 44 {
                    f = f.ext(e);
                }
                if let Some((off, more)) = frag {
                    f = f.fragment(off, more);
                }
                frames += never_passes(
                    &p,
                    &f.build(),
                    &format!("ext {e} proto {proto} frag {frag:?}"),
                );
            }
        }
    }
    // Chains from empty to well past the parser's bound.
    for len in 0..=16usize {
        // Three rotations: every header type appears at every position
        // in chains of eight and more.
        for start in [0usize, 3, 5] {
            let mut f = F::tcp(BAD6, SERVER6).vlan(9);
            for i in 0..len {
                let e = [0u8, 43, 60, 135, 139, 140, 253, 254][(start + i) % 8];
                f = f.ext(e);
            }
            frames += never_passes(&p, &f.build(), &format!("chain of {len} from {start}"));
        }
    }
    eprintln!("{frames} frames and truncations checked");
}

#[test]
fn options_tags_and_fragments_from_a_blocked_source_drop() {
    let p = plane();
    let mut frames = 0;
    for words in 0..=10 {
        for (off, more) in [
            (0u16, false),
            (0, true),
            (1, true),
            (185, false),
            (8191, false),
        ] {
            for vlans in 0..=3u16 {
                let mut f = F::udp(BAD, SERVER, 53)
                    .v4_options(words)
                    .fragment(off, more);
                for v in 0..vlans {
                    f = f.vlan(v + 1);
                }
                frames += never_passes(
                    &p,
                    &f.build(),
                    &format!("{words} option words, frag {off}/{more}, {vlans} tags"),
                );
            }
        }
    }
    for off in [0u16, 1, 100, 8191] {
        for more in [false, true] {
            frames += never_passes(
                &p,
                &F::icmp(BAD6, SERVER6).fragment(off, more).build(),
                "IPv6 fragment",
            );
        }
    }
    eprintln!("{frames} frames and truncations checked");
}
