//! Arbitrary bytes from a server: `Decoder::client` for the protocol the first byte picks,
//! packet after packet; every decoded packet must re-encode and decode back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::check_client_stream(data));
