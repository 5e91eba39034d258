//! A test-only fault hook: in debug builds, when `COREKV_FAULT_WAL_DELAY_FILE` names a file, every
//! WAL write first sleeps for the number of milliseconds that file holds (once: the file is removed
//! when read). Integration tests use it to simulate a stalled disk. Release builds compile it out.

use std::time::Duration;

/// The environment variable naming the delay file.
pub const DELAY_FILE_ENV: &str = "COREKV_FAULT_WAL_DELAY_FILE";

/// Sleeps for a delay requested through [`DELAY_FILE_ENV`], if any (debug builds only).
pub async fn delay() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(path) = std::env::var_os(DELAY_FILE_ENV) else { return };
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    let _ = std::fs::remove_file(&path);
    if let Ok(ms) = text.trim().parse::<u64>() {
        tracing::warn!(ms, "test fault: delaying a WAL write");
        glommio::timer::sleep(Duration::from_millis(ms)).await;
    }
}
