//! Keeps glommio's DMA file I/O off its IOPOLL ring.
//!
//! glommio 0.9 decides per device, once per thread, whether `DmaFile` reads and writes go to its
//! IOPOLL ring: the first `DmaFile` opened on a device probes it with a read on that ring, and a
//! probe that fails *for any reason* disables the poll ring for the device (glommio logs "got
//! unexpected error when probing iopoll support ... the poll ring will be disabled for this
//! device" and caches the answer). It never reads `queue/io_poll`, and this kernel (6.18) accepts
//! IOPOLL on virtio-blk without poll queues, so the probe succeeds and every WAL write would be
//! spun on: a core per busy shard, and writes 3x slower on the CPU that takes the disk's
//! interrupts (docs/PERFORMANCE.md, "WAL writes").
//!
//! [`use_main_ring`] makes the first probe on the data directory's device fail on purpose: it
//! opens a `DmaFile` write-only, so the probe's read gets EBADF. Every later `DmaFile` on that
//! device (WAL segments, snapshots) is then non-polled O_DIRECT I/O on glommio's main ring: the
//! kernel completes it by interrupt while the shard thread serves other work or sleeps.
//! Must run on each shard thread before that thread opens any other `DmaFile`.

use std::path::Path;

use glommio::io::OpenOptions;

const PROBE_FILE: &str = ".dma-probe";

/// Makes this thread's `DmaFile`s on `dir`'s device use glommio's main ring (see the module
/// docs). Best effort: a failure to create the probe file only leaves glommio's own choice.
pub async fn use_main_ring(dir: &Path) {
    let probe = dir.join(PROBE_FILE);
    match OpenOptions::new().write(true).create(true).dma_open(&probe).await {
        Ok(file) => {
            let _ = file.close().await;
        }
        Err(e) => tracing::warn!(path = %probe.display(), error = %e, "cannot probe the WAL device"),
    }
    let _ = std::fs::remove_file(&probe);
}
