//! Server-side figures from /proc: the CPU time the server processes
//! spent during the load, and their peak resident memory, sampled.
//!
//! Explicit PIDs count their own utime + stime. A tree (`--server-pid-tree`)
//! is found again at every look, and each member also counts the CPU of its
//! children that exited and were reaped (cutime + cstime): a Postfix smtpd
//! that ends during the run leaves its time with the master, so the sum over
//! the tree stays whole.

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
    /// Processes counted at the end.
    pub processes: usize,
}

pub struct Watch {
    pids: Vec<u32>,
    trees: Vec<u32>,
    cpu0: Option<u64>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
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
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (pids, trees, stop, peak) =
                (pids.clone(), trees.clone(), stop.clone(), peak.clone());
            thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let rss = members(&pids, &trees).iter().filter_map(|m| rss(m.0)).sum();
                        peak.fetch_max(rss, Ordering::Relaxed);
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
        let last: u64 = now.iter().filter_map(|m| rss(m.0)).sum();
        let peak = self.peak.load(Ordering::Relaxed).max(last);
        ServerFigures {
            cpu_s: match (self.cpu0, cpu1) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks_per_s()),
                _ => None,
            },
            peak_rss: (peak > 0).then_some(peak),
            processes: now.len(),
        }
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

/// VmRSS in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
