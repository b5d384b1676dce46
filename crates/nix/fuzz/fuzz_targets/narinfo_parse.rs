//! Fuzz target: the narinfo parser never panics, and rendering what it
//! accepts is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::narinfo_parse(data);
});
