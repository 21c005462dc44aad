//! The server's TOML config: parse, cross-check every reference, resolve and read the flow
//! files. The config module is compiled here on its own (it needs only std, serde, toml and
//! thiserror), so this target does not build the whole server (axum, sqlx, reqwest, …).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../examples/src/server/config.rs"]
#[allow(dead_code)]
mod config;

const LEAD: &str = include_str!("../../examples/flows/lead.json");

/// A directory holding `config.toml`'s neighbours: `flows/lead.json`.
fn base_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("flowcore-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("flows")).expect("temp dir is writable");
        std::fs::write(dir.join("flows/lead.json"), LEAD).expect("temp dir is writable");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Flow paths are read from disk: keep the fuzzer inside the temp dir (an operator's
    // config may name any file, a fuzzer's must not name /dev/zero).
    if let Ok(file) = toml::from_str::<config::ConfigFile>(text) {
        let inside = |path: &std::path::Path| {
            !path.is_absolute() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        };
        if !file.flows.iter().all(|flow| inside(std::path::Path::new(&flow.path))) {
            return;
        }
    }
    let _ = config::Config::from_toml(&base_dir().join("config.toml"), text);
});
