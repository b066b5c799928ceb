//! The body of one CONNACK: the first byte is a selector (see `common::check_packet_body`),
//! the rest is framed with a correct fixed header and decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check_target("packet_connack", data));
