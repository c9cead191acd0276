//! Types and logic shared by the Rampart XDP program and its agent.
//!
//! Everything here is `no_std` and allocation-free so that the kernel side
//! compiles it for the BPF target. The same parsing and decision code runs in
//! the kernel (over packet memory and BPF maps) and in user space (over byte
//! slices and plain collections, see [`model`]), so the two cannot drift.
#![cfg_attr(not(any(feature = "model", test)), no_std)]

pub mod abi;
pub mod addr;
pub mod bucket;
pub mod decide;
pub mod flood;
pub mod list_table;
pub mod parse;
pub mod sketch;

#[cfg(feature = "model")]
pub mod model;
#[cfg(feature = "user")]
mod pod;
