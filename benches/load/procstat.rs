//! Server-side figures from /proc: the CPU time the server processes
//! spent during the load, and their peak resident memory, sampled.
//!
//! Explicit PIDs count their own utime + stime. A tree (`--server-pid-tree`)
//! is found again at every look, and each member also counts the CPU of its
//! children that exited and were reaped (cutime + cstime): a Postfix smtpd
//! that ends during the run leaves its time with the master, so the sum over
//! the tree stays whole.
//!
//! Memory is sampled twice over: VmRSS summed (what was asked for, and
//! right for one process), and PSS summed (smaps_rollup: shared pages split
//! between their users), which is the honest sum for a tree of processes
//! sharing libraries and memory, like Postfix's.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What the server processes did over the load.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerFigures {
    /// User + system CPU seconds between `start` and `finish`.
    pub cpu_s: Option<f64>,
    /// The highest sum of VmRSS seen, bytes (sampled every 100 ms).
    pub peak_rss: Option<u64>,
    /// The highest sum of PSS seen, bytes (same samples).
    pub peak_pss: Option<u64>,
    /// Processes counted at the end.
    pub processes: usize,
}

pub struct Watch {
    pids: Vec<u32>,
    trees: Vec<u32>,
    cpu0: Option<u64>,
    stop: Arc<AtomicBool>,
    peak: Arc<Peaks>,
    sampler: Option<JoinHandle<()>>,
}

impl Watch {
    /// None when there is nothing to watch.
    pub fn start(pids: &[u32], trees: &[u32]) -> Option<Watch> {
        if pids.is_empty() && trees.is_empty() {
            return None;
        }
        let (pids, trees) = (pids.to_vec(), trees.to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Peaks::default());
        let sampler = {
            let (pids, trees, stop, peak) =
                (pids.clone(), trees.clone(), stop.clone(), peak.clone());
            thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.sample(&members(&pids, &trees));
                        thread::sleep(SAMPLE_EVERY);
                    }
                })
                .ok()
        };
        let cpu0 = cpu_ticks(&members(&pids, &trees));
        Some(Watch {
            pids,
            trees,
            cpu0,
            stop,
            peak,
            sampler,
        })
    }

    pub fn finish(mut self) -> ServerFigures {
        let now = members(&self.pids, &self.trees);
        let cpu1 = cpu_ticks(&now);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        // One last sample: a run shorter than 100 ms still has a figure.
        self.peak.sample(&now);
        let peak = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&b| b > 0);
        ServerFigures {
            cpu_s: match (self.cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks_per_s()),
                _ => None,
            },
            peak_rss: peak(&self.peak.rss),
            peak_pss: peak(&self.peak.pss),
            processes: now.len(),
        }
    }
}

#[derive(Default)]
struct Peaks {
    rss: AtomicU64,
    pss: AtomicU64,
}

impl Peaks {
    fn sample(&self, members: &[(u32, bool)]) {
        let (mut rss, mut pss) = (0, 0);
        for &(pid, _) in members {
            rss += kb(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0);
            pss += kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0);
        }
        self.rss.fetch_max(rss, Ordering::Relaxed);
        self.pss.fetch_max(pss, Ordering::Relaxed);
    }
}

/// (pid, counts reaped children): the explicit PIDs, then the trees.
fn members(pids: &[u32], trees: &[u32]) -> Vec<(u32, bool)> {
    let mut tree: BTreeSet<u32> = trees.iter().copied().collect();
    if !trees.is_empty() {
        // (pid, ppid) of every process; add children until nothing changes.
        let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
            .collect();
        loop {
            let before = tree.len();
            for &(pid, ppid) in &all {
                if tree.contains(&ppid) {
                    tree.insert(pid);
                }
            }
            if tree.len() == before {
                break;
            }
        }
    }
    let mut out: Vec<(u32, bool)> = tree.iter().map(|&p| (p, true)).collect();
    out.extend(
        pids.iter()
            .filter(|p| !tree.contains(p))
            .map(|&p| (p, false)),
    );
    out.sort_unstable();
    out.dedup();
    out
}

/// The fields of /proc/PID/stat after the command name: [0] is the state,
/// [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split(' ').map(str::to_string).collect())
}

/// The CPU clock ticks of all members; None if an explicit PID is gone.
fn cpu_ticks(members: &[(u32, bool)]) -> Option<u64> {
    let mut sum = 0;
    for &(pid, with_children) in members {
        let f = match stat_fields(pid) {
            Some(f) => f,
            // A tree member may end between the listing and the read.
            None if with_children => continue,
            None => return None,
        };
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        sum += n(11) + n(12);
        if with_children {
            sum += n(13) + n(14);
        }
    }
    Some(sum)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The `key:` line of a /proc file that counts in kB, in bytes.
fn kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
