//! Fuzz target: `barnabas::fuzzing::amqp_guard` on whatever libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    barnabas::fuzzing::amqp_guard(data);
});
