//! Fuzz target: `barnabas::fuzzing::routes_yaml` on whatever libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barnabas::fuzzing::routes_yaml(data);
});
