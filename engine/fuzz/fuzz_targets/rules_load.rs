//! The rule loader (YAML parse, validation, compilation of the SQL expressions): any text is a
//! rule set or a list of diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match cordon_rules::load_sources(&[("fuzz.yaml".into(), text.to_owned())]) {
        Ok(set) => {
            // A rule set that loads also plans.
            let _ = cordon_engine::plan::Plan::new(&set);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
