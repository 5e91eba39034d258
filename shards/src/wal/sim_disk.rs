//! A simulation seam under the WAL: the disk as a test sees it. It knows where each log's durable
//! bytes end, as its writer last knew it, so that a test can put a stopped member's logs back the
//! way a power cut at that instant would have left them ([`SimDisk::cut_to_marks`]); a crash
//! freezes the member's logs first ([`SimDisk::crash_under`]: its later writes are swallowed);
//! and it can be slow, holding each WAL write back for a random while.
//!
//! A WAL write counts as durable once it completed (with `fsync`, the segment is O_DSYNC). The
//! writer records the mark right after a write completes and before anything learns of it, so
//! every record a client or a peer was told about is at or below the mark. A writer that let
//! anyone know of a record before its write completed (the bug this seam exists to catch: an
//! append acknowledged to the leader, a client answered) leaves that record above the mark, and
//! the cut loses it. A slow disk widens that window.
//!
//! Only tests pass one (`PoolConfig::sim_disk`); the server passes none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use super::{list_segments, segment_path, WalError};

/// What a power cut would leave of one log: everything up to offset `end` of segment `seq` is
/// durable; the writer may have sent bytes up to `written` of that segment (and any bytes of
/// later segments) that are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub dir: PathBuf,
    pub seq: u64,
    pub end: u64,
    pub written: u64,
    /// A write was under way (sent, not completed as durable): the cut loses or tears it.
    pub unsynced: bool,
}

#[derive(Debug, Default)]
pub struct SimDisk {
    /// Per WAL directory: where its durable bytes end, and per segment how far writes reached.
    logs: Mutex<HashMap<PathBuf, LogState>>,
    /// The longest a WAL write is held back, in microseconds (0: not at all).
    max_delay_us: AtomicU64,
    /// State of the generator drawing the delays.
    draws: AtomicU64,
}

#[derive(Debug, Default)]
struct LogState {
    seq: u64,
    end: u64,
    written: HashMap<u64, u64>,
    /// Bumped by a crash: a writer opened in an earlier epoch writes nothing more.
    epoch: u64,
    /// Writes sent and not completed.
    in_flight: u32,
    /// A write was sent since the last one that completed as durable.
    unsynced: bool,
}

impl SimDisk {
    /// Holds every later WAL write back for a random time up to `max` (zero: none).
    pub fn set_max_delay(&self, max: Duration) {
        self.max_delay_us.store(max.as_micros() as u64, Relaxed);
    }

    /// How long to hold the next WAL write back, if at all.
    pub(crate) fn delay(&self) -> Option<Duration> {
        let max = self.max_delay_us.load(Relaxed);
        if max == 0 {
            return None;
        }
        let mut state = self.draws.fetch_add(GOLDEN_GAMMA, Relaxed);
        Some(Duration::from_micros(splitmix(&mut state) % (max + 1)))
    }

    /// The epoch a writer opening `dir`'s log belongs to (see [`Self::crash_under`]).
    pub(crate) fn epoch(&self, dir: &Path) -> u64 {
        self.lock().entry(dir.to_path_buf()).or_default().epoch
    }

    /// A writer of `epoch` is about to send a write to segment `seq` of `dir`'s log, reaching
    /// offset `upto`. `false` if its member crashed since: the write must not reach the file.
    pub(crate) fn begin_write(&self, dir: &Path, epoch: u64, seq: u64, upto: u64) -> bool {
        let mut logs = self.lock();
        let log = logs.entry(dir.to_path_buf()).or_default();
        if log.epoch != epoch {
            return false;
        }
        log.in_flight += 1;
        log.unsynced = true;
        let reached = log.written.entry(seq).or_default();
        *reached = (*reached).max(upto);
        true
    }

    /// The write [`Self::begin_write`] allowed completed; with `durable`, everything of the
    /// log up to that offset of segment `seq` is durable (unless its member crashed meanwhile:
    /// the crash's marks were taken without it).
    pub(crate) fn end_write(&self, dir: &Path, epoch: u64, seq: u64, durable: Option<u64>) {
        let mut logs = self.lock();
        let log = logs.entry(dir.to_path_buf()).or_default();
        log.in_flight = log.in_flight.saturating_sub(1);
        if let (Some(end), true) = (durable, log.epoch == epoch) {
            log.seq = seq;
            log.end = end;
            log.written.retain(|s, _| *s >= seq);
            log.unsynced = false;
        }
    }

    /// Where a writer opening `dir`'s log starts: everything up to offset `end` of segment
    /// `seq` is durable.
    pub(crate) fn opened(&self, dir: &Path, seq: u64, end: u64) {
        let mut logs = self.lock();
        let log = logs.entry(dir.to_path_buf()).or_default();
        log.seq = seq;
        log.end = end;
        log.written.retain(|s, _| *s >= seq);
        log.unsynced = false;
    }

    /// Crashes the members whose data directories are `roots`, at one instant: their writers
    /// send nothing more (their later writes are swallowed), the writes already sent complete,
    /// and then the marks of their logs are taken, per member — what the power cut leaves (see
    /// [`Self::cut_to_marks`]). All are frozen before any is waited for, so no member's write
    /// completes durably while another's crash is under way.
    pub fn crash_under(&self, roots: &[&Path]) -> Vec<Vec<Mark>> {
        let under = |dir: &Path| roots.iter().any(|root| dir.starts_with(root));
        for (dir, log) in self.lock().iter_mut() {
            if under(dir) {
                log.epoch += 1;
            }
        }
        let sent = |logs: &HashMap<PathBuf, LogState>| logs.iter().any(|(d, l)| under(d) && l.in_flight > 0);
        for _ in 0..5000 {
            if !sent(&self.lock()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        roots.iter().map(|root| self.marks_under(root)).collect()
    }

    /// The mark of every log under `root` (a member's data directory), taken at once: what a
    /// power cut now would leave.
    pub fn marks_under(&self, root: &Path) -> Vec<Mark> {
        let logs = self.lock();
        let under = logs.iter().filter(|(dir, _)| dir.starts_with(root));
        under
            .map(|(dir, log)| Mark {
                dir: dir.clone(),
                seq: log.seq,
                end: log.end,
                written: log.written.get(&log.seq).copied().unwrap_or(0),
                unsynced: log.unsynced,
            })
            .collect()
    }

    /// Puts the logs of a stopped member back as `marks` (from [`Self::marks_under`]) says they
    /// were: segments begun later are removed, and the bytes past the durable end that writes
    /// reached are zeroed (recovery reads zeros as the end of the log, as after a write that
    /// never reached the disk).
    ///
    /// With `tear`, the write in progress is torn instead: each of its 512-byte sectors reached
    /// the disk or not, drawn from the seed, so whole frames of it can follow a torn one.
    pub fn cut_to_marks(marks: &[Mark], tear: Option<u64>) -> Result<(), WalError> {
        use std::os::unix::fs::FileExt;
        const SECTOR: u64 = wire::codec::frame::SECTOR as u64;
        let mut draws = tear.unwrap_or(0);
        for m in marks {
            let io = |source| WalError::Io { path: m.dir.clone(), source };
            for (s, path) in list_segments(&m.dir)? {
                if s > m.seq {
                    std::fs::remove_file(&path).map_err(io)?;
                }
            }
            if m.written <= m.end {
                continue;
            }
            let file = std::fs::OpenOptions::new().write(true).open(segment_path(&m.dir, m.seq)).map_err(io)?;
            // Sector by sector from the durable end (bytes before it are durable either way).
            let mut at = m.end;
            while at < m.written {
                let stop = ((at / SECTOR + 1) * SECTOR).min(m.written);
                if tear.is_none() || splitmix(&mut draws).is_multiple_of(2) {
                    file.write_all_at(&vec![0u8; (stop - at) as usize], at).map_err(io)?;
                }
                at = stop;
            }
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LogState>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The next draw of splitmix64 from `state`: cheap, and good enough to spread delays and tears.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_maximum_and_vary() {
        let disk = SimDisk::default();
        assert_eq!(disk.delay(), None);
        disk.set_max_delay(Duration::from_micros(500));
        let drawn: Vec<Duration> = (0..100).map(|_| disk.delay().expect("a delay")).collect();
        assert!(drawn.iter().all(|d| *d <= Duration::from_micros(500)));
        assert!(drawn.iter().any(|d| *d != drawn[0]), "every delay was {:?}", drawn[0]);
    }

    /// A data directory whose `wal/` holds segment 1 of `len` bytes of 7s; returns it and `wal/`.
    fn wal_with_segment(len: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(&wal).expect("wal dir");
        std::fs::write(segment_path(&wal, 1), vec![7u8; len]).expect("segment 1");
        (dir, wal)
    }

    #[test]
    fn a_cut_drops_what_follows_the_marks() {
        let (dir, wal) = wal_with_segment(8192);
        std::fs::write(segment_path(&wal, 2), [7u8; 4096]).expect("segment 2");
        let disk = SimDisk::default();
        let epoch = disk.epoch(&wal);
        assert!(disk.begin_write(&wal, epoch, 1, 4096));
        disk.end_write(&wal, epoch, 1, Some(100));
        assert!(disk.begin_write(&wal, epoch, 1, 8192));
        let marks = disk.marks_under(dir.path());
        assert_eq!(marks, vec![Mark { dir: wal.clone(), seq: 1, end: 100, written: 8192, unsynced: true }]);
        SimDisk::cut_to_marks(&marks, None).expect("cut");
        let kept = std::fs::read(segment_path(&wal, 1)).expect("segment 1");
        assert!(kept[..100].iter().all(|b| *b == 7));
        assert!(kept[100..].iter().all(|b| *b == 0));
        assert!(!segment_path(&wal, 2).exists());
        assert!(disk.marks_under(&dir.path().join("elsewhere")).is_empty());
    }

    #[test]
    fn a_torn_cut_keeps_or_zeroes_whole_sectors_past_the_mark() {
        let (_dir, wal) = wal_with_segment(16384);
        let mark = Mark { dir: wal.clone(), seq: 1, end: 100, written: 16384, unsynced: true };
        SimDisk::cut_to_marks(&[mark], Some(42)).expect("cut");
        let kept = std::fs::read(segment_path(&wal, 1)).expect("segment 1");
        assert!(kept[..100].iter().all(|b| *b == 7), "durable bytes changed");
        let sectors: Vec<bool> = (0..kept.len() / 512)
            .map(|i| &kept[(i * 512).max(100)..(i + 1) * 512])
            .map(|s| {
                assert!(s.iter().all(|b| *b == s[0]), "a sector reached the disk in part");
                s[0] == 7
            })
            .collect();
        assert!(sectors.contains(&true) && sectors.contains(&false), "{sectors:?}");
    }

    #[test]
    fn a_crashed_writer_writes_nothing_more_and_its_late_completions_do_not_count() {
        let disk = SimDisk::default();
        let wal = PathBuf::from("/m0/shard-0/wal");
        let epoch = disk.epoch(&wal);
        disk.opened(&wal, 1, 0);
        assert!(disk.begin_write(&wal, epoch, 1, 4096));
        disk.end_write(&wal, epoch, 1, Some(10));
        assert!(disk.begin_write(&wal, epoch, 1, 4096));
        // The crash waits for the write in flight: complete it from another thread.
        let marks = std::thread::scope(|s| {
            let crashing = s.spawn(|| disk.crash_under(&[Path::new("/m0")]).remove(0));
            std::thread::sleep(Duration::from_millis(20));
            disk.end_write(&wal, epoch, 1, Some(20));
            crashing.join().expect("crash")
        });
        assert_eq!(marks, vec![Mark { dir: wal.clone(), seq: 1, end: 10, written: 4096, unsynced: true }]);
        assert!(!disk.begin_write(&wal, epoch, 1, 8192), "a crashed writer wrote again");
        assert!(disk.begin_write(&wal, disk.epoch(&wal), 1, 8192), "the next incarnation cannot write");
    }
}
