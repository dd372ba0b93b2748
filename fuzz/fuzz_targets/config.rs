//! The config parser: any text gives a checked config or problems that each carry a line and
//! column inside the text and a message; it never panics.
#![no_main]

use std::path::Path;

use edgehook::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 text; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative secret files and the state directory resolve
    // to nothing, so the result depends on the text alone.
    let path = Path::new("/nonexistent/edgehook-fuzz/edgehook.toml");
    match Config::parse(path, text) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty(), "an invalid config names a problem");
            let lines = text.split('\n').count();
            for p in &problems {
                assert!(p.line >= 1 && p.line <= lines, "line {} of {lines}", p.line);
                assert!(p.col >= 1, "column {}", p.col);
                assert!(!p.message.is_empty(), "a problem says what is wrong");
                let _ = p.to_string();
            }
        }
        Err(ConfigError::Read { .. }) => {}
    }
});
