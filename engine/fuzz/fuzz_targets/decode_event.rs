//! The event decoder: any bytes are either one row of the batch or a dead letter with a
//! reason, never a panic, and the batch stays consistent.
#![no_main]

use cordon_engine::decode::{EventBatchBuilder, TimeCheck, dead_letter_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = EventBatchBuilder::new(64 * 1024);
    let mut time = TimeCheck {
        watermark: 1_772_359_200_000,
        allowed_lateness_ms: 300_000,
        max_ts: 1_772_359_260_000,
        clamp_future: data.first().is_some_and(|b| b & 1 == 1),
    };
    // Twice: a second row after a refused or accepted first one.
    let first = b.push(data, &mut time).is_ok();
    if let Err(r) = b.push(data, &mut time) {
        assert!(!r.reason.as_str().is_empty());
    }
    let (payload, redacted) = dead_letter_payload(data);
    assert!(redacted || payload.as_ref() == data);
    let rows = b.len();
    let (batch, times) = b.finish();
    assert_eq!(batch.num_rows(), rows);
    assert_eq!(times.len(), rows);
    assert!(rows <= 2 && (first || rows == 0));
});
