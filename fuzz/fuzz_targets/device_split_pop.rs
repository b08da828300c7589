//! Device-side pop on arbitrary split-ring memory: never panics, never reads outside memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| virtio_sdk_fuzz::device_pop(virtio_core::RingFormat::Split, data));
