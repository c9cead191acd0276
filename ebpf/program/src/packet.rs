//! Packet memory as a `Frame`, with the bounds checks the verifier needs.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use rampart_common::parse::{Frame, Wire};

/// Offsets beyond this are refused before pointer arithmetic, so the verifier
/// always sees a bounded offset (every header we read starts well below it).
const MAX_OFFSET: usize = 1024;

pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn read<T: Wire>(&self, off: usize) -> Option<T> {
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [p, p + size_of::<T>()) lies inside the packet (checked
        // above), and T is a plain integer (`Wire`), valid for any bytes.
        Some(unsafe { (p as *const T).read_unaligned() })
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }
}
