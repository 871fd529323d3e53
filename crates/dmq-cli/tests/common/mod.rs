//! Running the `dmq` binary from the command-line tests, as a user would.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `dmq ARGS` with its cache in `cache` (never the user's).
pub fn dmq(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(args)
        .env("DMQ_CACHE_DIR", cache)
        .output()
        .expect("dmq runs")
}

/// Asserts success; returns stderr (progress and messages).
pub fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

/// Asserts failure; returns stderr (the error message).
pub fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "expected a failure, got success: {err}"
    );
    err
}

/// A JSON file written by a command.
pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
