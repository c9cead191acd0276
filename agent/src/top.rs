//! Top sources by dropped packets, from the sampled drop events. Bounded:
//! when full, every count is halved and zeros leave, so a spoofed flood
//! cannot grow it and recent heavy hitters stay on top.
use std::{collections::HashMap, net::IpAddr};

use crate::api::TopRow;

const CAPACITY: usize = 8192;

#[derive(Default)]
pub struct Top {
    counts: HashMap<IpAddr, (u64, u8)>,
    /// Each sample stands for this many drops (the sampling rate).
    pub scale: u64,
}

impl Top {
    /// A table for drops sampled one in `scale`.
    pub fn new(scale: u64) -> Self {
        Self {
            counts: HashMap::new(),
            scale,
        }
    }

    pub fn record(&mut self, src: IpAddr, reason: u8) {
        if self.counts.len() >= CAPACITY && !self.counts.contains_key(&src) {
            self.counts.retain(|_, (n, _)| {
                *n /= 2;
                *n > 0
            });
        }
        let e = self.counts.entry(src).or_insert((0, reason));
        e.0 += 1;
        e.1 = reason;
    }

    pub fn top(&self, n: usize) -> Vec<TopRow> {
        let mut v: Vec<_> = self.counts.iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(ip, (c, r))| TopRow {
                source: ip.to_string(),
                dropped: c * self.scale.max(1),
                reason: rampart_common::abi::reason::NAMES
                    .get(*r as usize)
                    .copied()
                    .unwrap_or("?")
                    .into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_stays_bounded() {
        let mut t = Top::new(10);
        for _ in 0..5 {
            t.record("192.0.2.1".parse().unwrap(), 2);
        }
        t.record("192.0.2.2".parse().unwrap(), 4);
        for i in 0..20_000u32 {
            t.record(IpAddr::from(i.to_be_bytes()), 4);
        }
        assert!(t.counts.len() <= CAPACITY);
        let top = t.top(1);
        assert_eq!(top[0].source, "192.0.2.1");
        assert_eq!(top[0].reason, "blocklist");
    }
}
