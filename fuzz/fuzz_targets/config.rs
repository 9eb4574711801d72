//! A config file: any text loads or is refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "SECRET").then(|| "s3cret".to_string());
    let _ = hookbridge::config::load_str("fuzzed.yaml", text, &env);
});
