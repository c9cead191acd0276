//! Shared helpers for the integration tests: frame builders, the data plane
//! under test, namespaces and veth pairs that clean up after themselves.
pub mod frames;
pub mod harness;
pub mod lab;
pub mod lapi;
pub mod netns;
pub mod traffic;
pub mod web;
