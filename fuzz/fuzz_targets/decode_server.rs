//! Arbitrary bytes from a client: `Decoder::server`, packet after packet until the input
//! runs out or an error; every decoded packet must re-encode and decode back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check_server_stream(data));
