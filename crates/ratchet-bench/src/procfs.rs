//! CPU time and memory of other processes, from /proc (Linux only).
//!
//! CPU is user+system time of the whole process (all threads), in clock ticks converted to
//! microseconds. For the database, backends come and go; the time of those that exited is
//! charged to the postmaster's `cutime`/`cstime` once reaped, so summing every `postgres`
//! process plus those fields of the postmaster counts them too.

use std::fs;

/// Clock ticks per second for /proc/*/stat times. Linux has used 100 (USER_HZ) on every
/// architecture we run on; `getconf CLK_TCK` says so here.
const TICKS_PER_SECOND: u64 = 100;

/// Which processes to account for.
#[derive(Debug, Clone)]
pub enum Processes {
    Pids(Vec<u32>),
    /// Every process whose command name is `postgres`.
    AllPostgres,
}

impl Processes {
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec == "postgres" {
            return Ok(Self::AllPostgres);
        }
        spec.split(',')
            .map(|pid| pid.trim().parse::<u32>().map_err(|_| format!("not a PID: {pid}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Pids)
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Pids(pids) => pids.clone(),
            Self::AllPostgres => fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
                .collect(),
        }
    }

    /// Total CPU time so far, in microseconds, including reaped children.
    pub fn cpu_micros(&self) -> u64 {
        self.pids().into_iter().filter_map(cpu_ticks).sum::<u64>() * (1_000_000 / TICKS_PER_SECOND)
    }
}

/// utime + stime + cutime + cstime of one process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 (index 0 here), utime field 14 (index 11) .. cstime 17.
    fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum()
}

/// Resident set size now and at its peak, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(Processes::Pids(vec![me]).cpu_micros() > 0);
        let (rss, peak) = rss_kib(me).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(matches!(Processes::parse("1, 2").unwrap(), Processes::Pids(p) if p == [1, 2]));
        assert!(Processes::parse("x").is_err());
    }
}
