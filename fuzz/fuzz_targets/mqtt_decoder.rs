//! Fuzz target: `barnabas::fuzzing::mqtt_decoder` on whatever libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barnabas::fuzzing::mqtt_decoder(data);
});
