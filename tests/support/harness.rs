//! The data plane under test: the loaded program (run with
//! BPF_PROG_TEST_RUN) and the reference model, configured identically.
use rampart::{
    datapath::{Capacities, Datapath},
    prefix::Prefix,
};
use rampart_common::{
    abi::{BanEntry, ListEntry, Policy, action, counter_index, reason},
    decide::{List, Verdict},
    model::Model,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Small tables: the tests exercise behaviour, not size.
pub fn test_capacities() -> Capacities {
    Capacities {
        allow_v4: 1024,
        allow_v6: 1024,
        block_v4: 4096,
        block_v6: 1024,
        bans_v4: 1024,
        bans_v6: 1024,
        rate_sets: 256,
    }
}

/// `CLOCK_MONOTONIC_COARSE`, the clock the program reads.
pub use rampart::clock::mono_coarse_ns as now_ns;

pub struct Plane {
    pub dp: Datapath,
    pub model: Model,
}

/// The outcome of one frame through the kernel program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// XDP_DROP, XDP_PASS or XDP_TX.
    pub xdp: u32,
    /// (action, reason) of the one counter that moved.
    pub counted: (u8, u8),
}

impl Outcome {
    pub fn action_name(&self) -> &'static str {
        rampart_common::abi::action::NAMES[self.counted.0 as usize]
    }
    pub fn reason_name(&self) -> &'static str {
        rampart_common::abi::reason::NAMES[self.counted.1 as usize]
    }
}

impl Plane {
    pub fn new() -> Self {
        Self::with_capacities(test_capacities())
    }

    pub fn with_capacities(caps: Capacities) -> Self {
        let dp = Datapath::load(caps, None).expect("load the XDP program (run as root)");
        let mut model = Model::new(caps.rate_sets as usize, caps.bans_v4 as usize);
        model.config = *dp.config();
        Self { dp, model }
    }

    fn sync_config(&mut self) {
        self.model.config = *self.dp.config();
    }

    pub fn configure(&mut self, f: impl FnOnce(&mut rampart_common::abi::Config)) {
        self.dp.update_config(f).expect("update config");
        self.sync_config();
    }

    pub fn list(&mut self, list: List, prefix: &str, entry: ListEntry) {
        let p: Prefix = prefix.parse().expect("test prefix");
        self.dp.list_insert(list, &p, entry).expect("list insert");
        let t = &mut self.model.tables;
        match (list, p.v4_key(), p.v6_key()) {
            (List::Allow, Some(k), _) => drop(t.allow_v4.insert(k, entry)),
            (List::Allow, _, Some(k)) => drop(t.allow_v6.insert(k, entry)),
            (List::Block, Some(k), _) => drop(t.block_v4.insert(k, entry)),
            (List::Block, _, Some(k)) => drop(t.block_v6.insert(k, entry)),
            _ => unreachable!(),
        }
        self.sync_config();
    }

    pub fn block(&mut self, prefix: &str) {
        self.list(List::Block, prefix, ListEntry::default());
    }

    pub fn allow(&mut self, prefix: &str) {
        self.list(List::Allow, prefix, ListEntry::default());
    }

    pub fn unlist(&mut self, list: List, prefix: &str) {
        let p: Prefix = prefix.parse().expect("test prefix");
        self.dp.list_remove(list, &p).expect("list remove");
        let t = &mut self.model.tables;
        match (list, p.v4_key(), p.v6_key()) {
            (List::Allow, Some(k), _) => drop(t.allow_v4.remove(&k)),
            (List::Allow, _, Some(k)) => drop(t.allow_v6.remove(&k)),
            (List::Block, Some(k), _) => drop(t.block_v4.remove(&k)),
            (List::Block, _, Some(k)) => drop(t.block_v6.remove(&k)),
            _ => unreachable!(),
        }
        self.sync_config();
    }

    pub fn ban(&mut self, prefix: &str, ban: BanEntry) {
        let p: Prefix = prefix.parse().expect("test prefix");
        self.dp.ban_set(&p, ban).expect("ban");
        let t = &self.model.tables;
        match (p.v4_key(), p.v6_key()) {
            (Some(k), _) => drop(t.bans_v4.borrow_mut().insert(k, ban)),
            (_, Some(k)) => drop(t.bans_v6.borrow_mut().insert(k, ban)),
            _ => unreachable!(),
        }
        self.sync_config();
    }

    pub fn policies(&mut self, policies: &[Policy]) {
        self.dp.set_policies(policies).expect("set policies");
        self.model.tables.policies = policies.to_vec();
        self.sync_config();
    }

    /// Runs one frame through the kernel program; returns the XDP action and
    /// the counter that moved (exactly one must move).
    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.run_out(frame).0
    }

    /// As [`Plane::run`], and the frame as the program left it.
    pub fn run_out(&self, frame: &[u8]) -> (Outcome, Vec<u8>) {
        let before = self.dp.counters().expect("read counters");
        let (xdp, out) = self.dp.test_run_out(frame).expect("BPF_PROG_TEST_RUN");
        let after = self.dp.counters().expect("read counters");
        let mut moved = Vec::new();
        for a in 0..action::COUNT as u8 {
            for r in 0..reason::COUNT as u8 {
                let i = counter_index(0, a, r) as usize;
                let dp = after[i].packets - before[i].packets;
                if dp != 0 {
                    assert_eq!(dp, 1, "counter {a}/{r} moved by {dp}");
                    assert_eq!(
                        after[i].bytes - before[i].bytes,
                        frame.len() as u64,
                        "bytes counted for {a}/{r}"
                    );
                    moved.push((a, r));
                }
            }
        }
        assert_eq!(
            moved.len(),
            1,
            "exactly one counter moves per packet: {moved:?}"
        );
        let counted = moved[0];
        // The verdict returned is the verdict counted.
        let expect_xdp = match counted.0 {
            action::DROP => XDP_DROP,
            action::CHALLENGE => XDP_TX,
            _ => XDP_PASS,
        };
        assert_eq!(xdp, expect_xdp, "returned {xdp} but counted {counted:?}");
        if xdp != XDP_TX {
            assert_eq!(out, frame, "only an answer changes the frame");
        }
        (Outcome { xdp, counted }, out)
    }

    /// The kernel's statistics counters (`abi::stat`), summed over CPUs.
    pub fn stats(&self) -> [u64; rampart_common::abi::stat::COUNT as usize] {
        self.dp.stats().expect("read stats")
    }

    /// The model's verdict for a frame, now.
    pub fn model_verdict(&self, frame: &[u8]) -> Verdict {
        self.model.evaluate(frame, now_ns())
    }

    /// Runs the frame through both and requires the same action and reason.
    pub fn run_both(&self, frame: &[u8]) -> Outcome {
        let out = self.run(frame);
        let v = self.model_verdict(frame);
        assert_eq!(
            (v.action, v.reason),
            out.counted,
            "kernel and model disagree on frame {frame:02x?}"
        );
        out
    }
}

impl Default for Plane {
    fn default() -> Self {
        Self::new()
    }
}
