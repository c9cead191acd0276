//! `aya::Pod` for the map types: they are `#[repr(C)]`, padding-free and made
//! only of integers and byte arrays (see the size asserts in `abi`).
use crate::{
    abi::{
        Addr, BanEntry, Config, Counter, Event, FloodState, ListEntry, Policy, PolicyStats,
        PrefixLens, RateBuckets, RateExtra, RateSet, Sketch, V4Key, V6Key, Verified,
    },
    list_table::{V4Slot, V6Slot},
};

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: repr(C), no padding (asserted in abi.rs), every bit pattern valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

pod!(
    Addr,
    BanEntry,
    FloodState,
    Verified,
    Config,
    Counter,
    Event,
    ListEntry,
    Policy,
    PolicyStats,
    PrefixLens,
    RateBuckets,
    RateExtra,
    RateSet,
    Sketch,
    V4Key,
    V4Slot,
    V6Key,
    V6Slot,
);
