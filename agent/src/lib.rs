//! The Rampart agent and CLI as a library, so integration tests drive the
//! same code the binary runs.
pub mod datapath;
pub mod policy;
pub mod prefix;
