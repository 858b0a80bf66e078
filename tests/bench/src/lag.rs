//! The detection-lag benchmark, run inside the VM (`graft-bench lag`).
//!
//! Interleaved rounds: in each round every setting applies and then reverts
//! `graft_demo` once, the settings' order rotating from round to round, so
//! drift (the host's load, the guest's state) hits them all alike. Every
//! setting runs as a child process started and timed the same way:
//!
//! - `graft-agent`: the real binary, `graft-agent --json apply MODULE` /
//!   `graft-agent --json revert NAME`;
//! - `poll-1s` / `poll-1ms`: `graft-bench poll ...` (see [`crate::baseline`]).
//!
//! Per trial (times on CLOCK_MONOTONIC, relative to the spawn of the child):
//! - the kernel's start and end: printk stamps of "'<patch>': starting
//!   (un)patching transition" and "'<patch>': (un)patching complete",
//!   aligned by a marker written just before the trial;
//! - when the setting noticed the end: the baselines print it; for the agent
//!   it is its JSON's `transition.started` + `transition.duration_seconds`
//!   (the moment its sysfs read confirmed the end), mapped from
//!   CLOCK_REALTIME with an offset taken just before the trial;
//! - when the child exited (wall time of the operation);
//! - CPU while waiting: the child's schedstat run time, read when this
//!   process sees the start record and again when it sees the end record
//!   (both wake-ups come from the same `/dev/kmsg` mechanism), over the time
//!   between the two readings;
//! - the child's whole CPU time (rusage of the reaped child).
//!
//! Rows go to stdout as `@@GRAFT bench-csv` lines between trials (never
//! while a child runs: console output is slow under emulation).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde_json::Value;

use crate::baseline::BaselineReport;
use crate::clock::{mono_ns, real_ns, realtime_offset, schedstat_ns};
use crate::kmsg::{KmsgReader, TransitionLog, transition_log};
use crate::syscall_trace::SyscallTrace;

/// The settings compared, in the order of the first round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Agent,
    Poll1s,
    Poll1ms,
}

impl Setting {
    pub const ALL: [Setting; 3] = [Setting::Agent, Setting::Poll1s, Setting::Poll1ms];

    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => "graft-agent",
            Self::Poll1s => "poll-1s",
            Self::Poll1ms => "poll-1ms",
        }
    }

    fn interval(self) -> &'static str {
        match self {
            Self::Agent => "",
            Self::Poll1s => "1s",
            Self::Poll1ms => "1ms",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Revert,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Revert => "revert",
        }
    }
}

/// One trial, as a CSV row. Times in ms relative to the child's spawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub round: u32,
    pub seq: u32,
    pub setting: String,
    pub op: String,
    pub ok: bool,
    /// CLOCK_MONOTONIC at the spawn, in seconds (to plot drift).
    pub spawn_s: f64,
    pub kernel_start_ms: Option<f64>,
    pub kernel_end_ms: Option<f64>,
    /// The kernel's own transition time: end − start.
    pub kernel_ms: Option<f64>,
    pub noticed_ms: Option<f64>,
    /// The child's exit: the operation's wall time.
    pub wall_ms: Option<f64>,
    /// noticed − kernel end.
    pub lag_ms: Option<f64>,
    /// exit − kernel end.
    pub exit_lag_ms: Option<f64>,
    /// wall / kernel transition time.
    pub wall_ratio: Option<f64>,
    pub cpu_wait_ms: Option<f64>,
    pub cpu_window_ms: Option<f64>,
    /// CPU while the transition ran, as a share of that time (percent).
    pub cpu_wait_pct: Option<f64>,
    pub cpu_total_ms: Option<f64>,
    /// Whole-process CPU as a share of the wall time (percent).
    pub cpu_total_pct: Option<f64>,
    /// Baselines only: CPU of their polling loop / its duration, self-measured (percent).
    pub self_cpu_pct: Option<f64>,
    pub polls: Option<u64>,
    /// Uncertainty of the printk alignment before and after the trial, and
    /// the change of the offset over the trial, in µs.
    pub align_us: Option<f64>,
    pub align_after_us: Option<f64>,
    pub drift_us: Option<f64>,
    pub note: String,
    /// Apply only: when the setting entered `finit_module` (kernel tracing),
    /// the start of all the kernel's work for the operation.
    pub kernel_call_ms: Option<f64>,
    /// Apply only: the kernel's whole work, call → end record.
    pub kernel_work_ms: Option<f64>,
    /// wall / the kernel's whole work.
    pub work_ratio: Option<f64>,
}

pub const CSV_HEADER: &str = "round,seq,setting,op,ok,spawn_s,kernel_start_ms,kernel_end_ms,kernel_ms,noticed_ms,wall_ms,lag_ms,exit_lag_ms,wall_ratio,cpu_wait_ms,cpu_window_ms,cpu_wait_pct,cpu_total_ms,cpu_total_pct,self_cpu_pct,polls,align_us,align_after_us,drift_us,note,kernel_call_ms,kernel_work_ms,work_ratio";

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_default()
}

fn parse_opt(s: &str) -> Result<Option<f64>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl Row {
    /// Whether the printk/monotonic offset held still over the trial. When it
    /// moved, nobody knows when: the kernel's start and end, and so the lag,
    /// the transition time and the window of the CPU share, may be off by
    /// the whole move.
    pub fn clock_steady(&self) -> bool {
        self.drift_us.is_none_or(|d| d.abs() <= CLOCK_STEADY_US)
    }

    /// A trial that ran and whose times can be trusted: the only kind the
    /// medians, ratios and checks use.
    pub fn measured(&self) -> bool {
        self.ok && self.clock_steady()
    }

    /// Whether the kernel's transition went past its first attempt (see
    /// [`FIRST_ATTEMPT_MS`]); `false` when no transition time was seen.
    pub fn past_first_attempt(&self) -> bool {
        self.kernel_ms.is_some_and(|k| k >= FIRST_ATTEMPT_MS)
    }

    /// The shares a setting is judged by, for transitions that went past the
    /// kernel's first attempt: wall time over the kernel's transition and over
    /// its whole work, and CPU over the wait. A transition finished inside
    /// the system call had no wait; over its few milliseconds the "share"
    /// would be the kernel's own work in the caller's context (up to 200 %).
    pub fn set_shares(&mut self) {
        (self.wall_ratio, self.work_ratio, self.cpu_wait_pct) = (None, None, None);
        if !self.past_first_attempt() {
            return;
        }
        if let Some(wall) = self.wall_ms {
            self.wall_ratio = self.kernel_ms.map(|k| wall / k);
            self.work_ratio = self.kernel_work_ms.map(|k| wall / k);
        }
        if let (Some(cpu), Some(window)) = (self.cpu_wait_ms, self.cpu_window_ms)
            && window > 0.0
        {
            self.cpu_wait_pct = Some(100.0 * cpu / window);
        }
    }

    pub fn to_csv(&self) -> String {
        let note: String = self
            .note
            .chars()
            .map(|c| if c == ',' || c.is_control() { ';' } else { c })
            .collect();
        format!(
            "{},{},{},{},{},{:.6},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.round,
            self.seq,
            self.setting,
            self.op,
            u8::from(self.ok),
            self.spawn_s,
            opt(self.kernel_start_ms),
            opt(self.kernel_end_ms),
            opt(self.kernel_ms),
            opt(self.noticed_ms),
            opt(self.wall_ms),
            opt(self.lag_ms),
            opt(self.exit_lag_ms),
            opt(self.wall_ratio),
            opt(self.cpu_wait_ms),
            opt(self.cpu_window_ms),
            opt(self.cpu_wait_pct),
            opt(self.cpu_total_ms),
            opt(self.cpu_total_pct),
            opt(self.self_cpu_pct),
            self.polls.map(|p| p.to_string()).unwrap_or_default(),
            opt(self.align_us),
            opt(self.align_after_us),
            opt(self.drift_us),
            note,
            opt(self.kernel_call_ms),
            opt(self.kernel_work_ms),
            opt(self.work_ratio),
        )
    }

    pub fn from_csv(line: &str) -> Result<Self, String> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 28 {
            return Err(format!("{} fields, expected 28", f.len()));
        }
        let int = |s: &str| s.parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
        Ok(Self {
            round: int(f[0])?,
            seq: int(f[1])?,
            setting: f[2].to_string(),
            op: f[3].to_string(),
            ok: f[4] == "1",
            spawn_s: f[5].parse().map_err(|e| format!("{:?}: {e}", f[5]))?,
            kernel_start_ms: parse_opt(f[6])?,
            kernel_end_ms: parse_opt(f[7])?,
            kernel_ms: parse_opt(f[8])?,
            noticed_ms: parse_opt(f[9])?,
            wall_ms: parse_opt(f[10])?,
            lag_ms: parse_opt(f[11])?,
            exit_lag_ms: parse_opt(f[12])?,
            wall_ratio: parse_opt(f[13])?,
            cpu_wait_ms: parse_opt(f[14])?,
            cpu_window_ms: parse_opt(f[15])?,
            cpu_wait_pct: parse_opt(f[16])?,
            cpu_total_ms: parse_opt(f[17])?,
            cpu_total_pct: parse_opt(f[18])?,
            self_cpu_pct: parse_opt(f[19])?,
            polls: if f[20].is_empty() {
                None
            } else {
                Some(f[20].parse().map_err(|e| format!("{:?}: {e}", f[20]))?)
            },
            align_us: parse_opt(f[21])?,
            align_after_us: parse_opt(f[22])?,
            drift_us: parse_opt(f[23])?,
            note: f[24].to_string(),
            kernel_call_ms: parse_opt(f[25])?,
            kernel_work_ms: parse_opt(f[26])?,
            work_ratio: parse_opt(f[27])?,
        })
    }
}

/// What the benchmark drives.
#[derive(Debug, Clone)]
pub struct LagConfig {
    pub agent: PathBuf,
    pub module: PathBuf,
    /// The patch's name (the module's name).
    pub patch: String,
    pub rounds: u32,
    pub kmsg: PathBuf,
    pub sys: PathBuf,
    /// This binary, for the baselines.
    pub bench: PathBuf,
    /// Pause between trials.
    pub settle: Duration,
    pub trial_timeout: Duration,
    /// Print graft-agent's stderr after each of its trials (diagnosis: run
    /// with GRAFT_LOG=graft_agent=trace to see every wake-up of its watcher).
    pub echo_agent_stderr: bool,
    /// tracefs, for the moment each apply enters `finit_module`.
    pub tracing: PathBuf,
    /// Trials of graft-agent per operation that must go past the kernel's
    /// first attempt (see [`FIRST_ATTEMPT_MS`]): only those are judged. When
    /// the configured rounds leave fewer, more rounds run, up to `max_rounds`.
    pub min_judged: usize,
    pub max_rounds: u32,
}

/// Whether every operation of graft-agent has `min` measured trials past the
/// kernel's first attempt.
pub fn enough_judged(rows: &[Row], min: usize) -> bool {
    [Op::Apply, Op::Revert].iter().all(|op| {
        rows.iter()
            .filter(|r| r.measured() && r.setting == Setting::Agent.name() && r.op == op.name())
            .filter(|r| r.past_first_attempt())
            .count()
            >= min
    })
}

/// A transition shorter than this ended at the kernel's first attempt,
/// inside `finit_module` or the write to `enabled`, before the one-second
/// retries. Its wall-time ratio says how long exec and module loading take,
/// not how a setting follows a transition, so it is left out of the ratios
/// (the rows keep the times).
pub const FIRST_ATTEMPT_MS: f64 = 100.0;

/// How far the printk clock may move against CLOCK_MONOTONIC over a trial
/// (µs) for the kernel's records to be placed on the trial's clock. The
/// alignment itself is good to ~30 µs; under qemu's TCG the offset now and
/// then jumps by tens of milliseconds.
pub const CLOCK_STEADY_US: f64 = 100.0;

/// When the child exited (CLOCK_MONOTONIC ns) and what it printed.
struct Exited {
    at_ns: i64,
    stdout: String,
    stderr: String,
}

/// A reading of the child's CPU time: (when, run time ns).
type Sample = (i64, u64);

fn sample(pid: u32) -> Option<Sample> {
    let t = mono_ns();
    schedstat_ns(&format!("/proc/{pid}/schedstat")).map(|cpu| (t, cpu))
}

fn children_cpu_ns() -> i64 {
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let us = |tv: nix::sys::time::TimeVal| tv.tv_sec() * 1_000_000 + tv.tv_usec();
            (us(u.user_time()) + us(u.system_time())) * 1000
        }
        Err(_) => 0,
    }
}

pub struct LagBench {
    cfg: LagConfig,
    kmsg: KmsgReader,
    seq: u32,
    trace: Result<SyscallTrace, String>,
}

impl LagBench {
    pub fn new(cfg: LagConfig) -> anyhow::Result<Self> {
        let kmsg = KmsgReader::open(&cfg.kmsg)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", cfg.kmsg.display()))?;
        let trace = SyscallTrace::open(&cfg.tracing);
        Ok(Self {
            cfg,
            kmsg,
            seq: 0,
            trace,
        })
    }

    /// Why the kernel-call column is empty, if it is.
    pub fn trace_problem(&self) -> Option<&str> {
        self.trace.as_ref().err().map(String::as_str)
    }

    /// Runs each setting's binary once before the first trial, so that no
    /// setting's first trial pays for faulting a binary in that the others
    /// find in the page cache.
    fn warm_up(&self) {
        let runs = [
            Command::new(&self.cfg.agent)
                .arg("--json")
                .arg("inspect")
                .arg(&self.cfg.module)
                .output(),
            Command::new(&self.cfg.bench).arg("--help").output(),
        ];
        for run in runs {
            if let Err(e) = run {
                eprintln!("graft-bench: warm-up run failed: {e}");
            }
        }
    }

    fn patch_dir(&self) -> PathBuf {
        self.cfg.sys.join("kernel/livepatch").join(&self.cfg.patch)
    }

    fn module_loaded(&self) -> bool {
        self.cfg.sys.join("module").join(&self.cfg.patch).exists()
    }

    /// Runs every round; `emit` gets each row as soon as its trial is over.
    pub fn run(&mut self, mut emit: impl FnMut(&Row)) -> Vec<Row> {
        let mut rows = Vec::new();
        self.warm_up();
        let mut round = 0;
        while round < self.cfg.rounds
            || (round < self.cfg.max_rounds && !enough_judged(&rows, self.cfg.min_judged))
        {
            round += 1;
            let start = (round as usize - 1) % Setting::ALL.len();
            for i in 0..Setting::ALL.len() {
                let setting = Setting::ALL[(start + i) % Setting::ALL.len()];
                for op in [Op::Apply, Op::Revert] {
                    let mut row = self.trial(round, setting, op);
                    let failed = !row.ok;
                    if failed {
                        // Leave a clean kernel for the next trial, whatever happened.
                        row.note = format!("{}; {}", row.note, self.cleanup());
                    }
                    emit(&row);
                    rows.push(row);
                    std::thread::sleep(self.cfg.settle);
                    if failed && op == Op::Apply {
                        // Its revert is not measured.
                        let note = "the kernel was cleaned up after the failed apply";
                        self.seq += 1;
                        let row = Row {
                            round,
                            seq: self.seq,
                            setting: setting.name().into(),
                            op: Op::Revert.name().into(),
                            note: format!("not run: the apply failed; {note}"),
                            ..Row::default()
                        };
                        emit(&row);
                        rows.push(row);
                        break;
                    }
                }
            }
        }
        rows
    }

    /// Rounds run so far (the configured ones and any extra, see [`LagConfig::min_judged`]).
    pub fn rounds_run(rows: &[Row]) -> u32 {
        rows.iter().map(|r| r.round).max().unwrap_or(0)
    }

    /// Puts the kernel back to "patch not loaded", whatever happened.
    fn cleanup(&mut self) -> String {
        let dir = self.patch_dir();
        if dir.exists() {
            let _ = std::fs::write(dir.join("enabled"), "0");
            for _ in 0..3000 {
                if !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Ok(name) = std::ffi::CString::new(self.cfg.patch.clone()) {
            for _ in 0..500 {
                match nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if self.module_loaded() || dir.exists() {
            "cleanup failed: the patch is still loaded".into()
        } else {
            "cleaned up".into()
        }
    }

    fn precondition(&self, op: Op) -> Result<(), String> {
        let dir = self.patch_dir();
        match op {
            Op::Apply if dir.exists() || self.module_loaded() => {
                Err(format!("{} is already loaded", self.cfg.patch))
            }
            Op::Revert => {
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default()
                };
                if read("enabled") == "1" && read("transition") == "0" {
                    Ok(())
                } else {
                    Err(format!("{} is not applied", self.cfg.patch))
                }
            }
            Op::Apply => Ok(()),
        }
    }

    fn command(&self, setting: Setting, op: Op) -> Command {
        let mut cmd = match setting {
            Setting::Agent => {
                let mut c = Command::new(&self.cfg.agent);
                c.arg("--json");
                match op {
                    Op::Apply => c.arg("apply").arg(&self.cfg.module),
                    Op::Revert => c.arg("revert").arg(&self.cfg.patch),
                };
                c
            }
            Setting::Poll1s | Setting::Poll1ms => {
                let mut c = Command::new(&self.cfg.bench);
                c.args(["poll", "--interval", setting.interval(), "--sys"])
                    .arg(&self.cfg.sys);
                match op {
                    Op::Apply => c.arg("apply").arg(&self.cfg.module),
                    Op::Revert => c.arg("revert").arg(&self.cfg.patch),
                };
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn trial(&mut self, round: u32, setting: Setting, op: Op) -> Row {
        self.seq += 1;
        let mut row = Row {
            round,
            seq: self.seq,
            setting: setting.name().into(),
            op: op.name().into(),
            ..Row::default()
        };
        if let Err(e) = self.precondition(op) {
            row.note = e;
            return row;
        }
        if let Err(e) = self.measure(setting, op, &mut row) {
            row.ok = false;
            row.note = if row.note.is_empty() {
                e.to_string()
            } else {
                format!("{}; {e}", row.note)
            };
        }
        row
    }

    fn measure(&mut self, setting: Setting, op: Op, row: &mut Row) -> anyhow::Result<()> {
        let seq = self.seq;
        let (align, _) = self.kmsg.align(&format!("{seq}.before"), 3)?;
        let (rt_offset, _) = realtime_offset();
        self.kmsg.drain()?;
        if let Ok(trace) = &self.trace {
            trace.clear();
        }
        let patching = op == Op::Apply;
        let mut cmd = self.command(setting, op);
        let cpu_children_before = children_cpu_ns();
        let spawn = mono_ns();
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", setting.name()))?;
        row.spawn_s = spawn as f64 / 1e9;
        let pid = child.id();
        let (done_rx, done_tx) = UnixStream::pair()?;
        let waiter = spawn_waiter(&mut child, done_tx);

        let mut start: Option<(u64, Option<Sample>)> = None;
        let mut end: Option<(u64, Option<Sample>)> = None;
        let give_up = spawn + self.cfg.trial_timeout.as_nanos() as i64;
        let mut timed_out = false;
        loop {
            let mut fds = [
                PollFd::new(self.kmsg.fd(), PollFlags::POLLIN),
                PollFd::new(done_rx.as_fd(), PollFlags::POLLIN),
            ];
            let left_ms = ((give_up - mono_ns()) / 1_000_000).clamp(0, i32::MAX as i64) as i32;
            let n = poll(
                &mut fds,
                PollTimeout::try_from(left_ms).unwrap_or(PollTimeout::MAX),
            )
            .unwrap_or(0);
            let kmsg_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let exited = fds[1].revents().is_some_and(|r| !r.is_empty());
            if kmsg_ready || exited {
                self.note_records(patching, pid, &mut start, &mut end)?;
            }
            if exited {
                break;
            }
            if n == 0 && mono_ns() >= give_up {
                timed_out = true;
                let _ = nix::sys::signal::kill(
                    Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                // The waiter notices the exit and signals; loop once more.
                let _ = child.wait();
                break;
            }
        }
        let exited = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("the waiter thread panicked"))?;
        let status = child.wait()?;
        let cpu_total_ns = children_cpu_ns() - cpu_children_before;
        let (after, _) = self.kmsg.align(&format!("{seq}.after"), 3)?;
        if self.cfg.echo_agent_stderr && setting == Setting::Agent {
            let (rt, _) = realtime_offset();
            println!(
                "@@GRAFT bench-agent-log {seq} spawn_mono_ns={spawn} realtime_minus_mono_ns={rt} printk_to_mono_ns={}",
                align.offset_ns
            );
            for line in exited.stderr.lines() {
                println!("@@GRAFT bench-agent-log {seq} {line}");
            }
        }

        let rel = |t: i64| (t - spawn) as f64 / 1e6;
        row.wall_ms = Some(rel(exited.at_ns));
        row.cpu_total_ms = Some(cpu_total_ns as f64 / 1e6);
        row.cpu_total_pct = Some(100.0 * cpu_total_ns as f64 / (exited.at_ns - spawn) as f64);
        row.align_us = Some(align.uncertainty_ns as f64 / 1e3);
        row.align_after_us = Some(after.uncertainty_ns as f64 / 1e3);
        row.drift_us = Some((after.offset_ns - align.offset_ns) as f64 / 1e3);
        if let Some((ts, _)) = start {
            row.kernel_start_ms = Some(rel(align.to_mono_ns(ts)));
        }
        if let Some((ts, _)) = end {
            row.kernel_end_ms = Some(rel(align.to_mono_ns(ts)));
        }
        if let (Some(s), Some(e)) = (row.kernel_start_ms, row.kernel_end_ms) {
            row.kernel_ms = Some(e - s);
        }
        if let Ok(trace) = &self.trace
            && patching
        {
            row.kernel_call_ms = trace.take_module_call(pid).map(rel);
        }
        if let (Some(c), Some(e)) = (row.kernel_call_ms, row.kernel_end_ms) {
            row.kernel_work_ms = Some(e - c);
        }
        if let (Some((_, Some((t0, c0)))), Some((_, Some((t1, c1))))) = (start, end)
            && t1 > t0
        {
            row.cpu_wait_ms = Some(c1.saturating_sub(c0) as f64 / 1e6);
            row.cpu_window_ms = Some((t1 - t0) as f64 / 1e6);
        }

        if timed_out {
            anyhow::bail!(
                "{} did not finish within {:?}",
                setting.name(),
                self.cfg.trial_timeout
            );
        }
        if !status.success() {
            anyhow::bail!(
                "{} {} exited with {status}: {} {}",
                setting.name(),
                op.name(),
                exited.stdout.trim(),
                exited.stderr.trim()
            );
        }
        let noticed = match setting {
            Setting::Agent => agent_notice_mono(&exited.stdout, op, rt_offset)?,
            _ => {
                let report: BaselineReport = serde_json::from_str(exited.stdout.trim())
                    .map_err(|e| anyhow::anyhow!("baseline output {:?}: {e}", exited.stdout))?;
                row.polls = Some(report.polls);
                if report.poll_wall_ns > 0 {
                    row.self_cpu_pct =
                        Some(100.0 * report.poll_cpu_ns as f64 / report.poll_wall_ns as f64);
                }
                if start.is_none() {
                    // No start record: the call is the best start we have.
                    row.kernel_start_ms = Some(rel(report.call_ns));
                    row.note = "no start record: the call time stands in".into();
                }
                report.notice_ns
            }
        };
        row.noticed_ms = Some(rel(noticed));
        let Some(end_ms) = row.kernel_end_ms else {
            anyhow::bail!(
                "the kernel logged no '{}': {} complete record",
                self.cfg.patch,
                if patching { "patching" } else { "unpatching" }
            );
        };
        row.lag_ms = Some(rel(noticed) - end_ms);
        row.exit_lag_ms = Some(rel(exited.at_ns) - end_ms);
        // The ratios and CPU shares follow from these times: `graft-bench report` derives them.
        if self.kmsg.lost > 0 {
            row.note = format!("{} kernel log records lost so far", self.kmsg.lost);
        }
        row.ok = true;
        Ok(())
    }

    /// Reads new kernel records; on this trial's start or end record, reads the child's CPU time.
    fn note_records(
        &mut self,
        patching: bool,
        pid: u32,
        start: &mut Option<(u64, Option<Sample>)>,
        end: &mut Option<(u64, Option<Sample>)>,
    ) -> anyhow::Result<()> {
        for r in self.kmsg.drain()? {
            match transition_log(&r.message) {
                Some(TransitionLog::Start { patch, patching: p })
                    if patch == self.cfg.patch && p == patching && start.is_none() =>
                {
                    *start = Some((r.timestamp_us, sample(pid)));
                }
                Some(TransitionLog::End { patch, patching: p })
                    if patch == self.cfg.patch && p == patching && end.is_none() =>
                {
                    *end = Some((r.timestamp_us, sample(pid)));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads the child's output and waits for it to exit without reaping it
/// (so its /proc entry stays readable), then says so on `done`.
fn spawn_waiter(child: &mut Child, done: UnixStream) -> std::thread::JoinHandle<Exited> {
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        );
        let at_ns = mono_ns();
        let stderr = err.join().unwrap_or_default();
        let _ = (&done).write_all(b"x");
        Exited {
            at_ns,
            stdout: out,
            stderr,
        }
    })
}

/// When graft-agent confirmed the end, on CLOCK_MONOTONIC: its JSON's
/// `transition.started` (RFC 3339, ms) + `transition.duration_seconds`.
/// The agent measures the duration from the start it journaled, so the sum
/// is the wall-clock time of its confirming sysfs read.
pub fn agent_notice_mono(stdout: &str, op: Op, realtime_minus_mono: i64) -> anyhow::Result<i64> {
    let v: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("graft-agent output is not JSON ({e}): {stdout:?}"))?;
    let want = match op {
        Op::Apply => "Applied",
        Op::Revert => "Reverted",
    };
    if v["state"] != want {
        anyhow::bail!(
            "graft-agent says state {} (wanted {want}): {}",
            v["state"],
            v["message"]
        );
    }
    let started = v["transition"]["started"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("graft-agent output has no transition.started"))?;
    let duration = v["transition"]["duration_seconds"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("graft-agent output has no transition.duration_seconds"))?;
    let started = humantime::parse_rfc3339(started)
        .map_err(|e| anyhow::anyhow!("transition.started {started:?}: {e}"))?;
    let started_ns = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .as_nanos() as i64;
    Ok(started_ns + (duration * 1e9).round() as i64 - realtime_minus_mono)
}

/// Facts about the guest, printed once.
pub fn guest_facts() -> Vec<(String, String)> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    vec![
        ("release".into(), read("/proc/sys/kernel/osrelease")),
        ("cpus".into(), cpus.to_string()),
        (
            "schedstat".into(),
            if schedstat_ns("/proc/thread-self/schedstat").is_some_and(|n| n > 0) {
                "yes".into()
            } else {
                "no".into()
            },
        ),
        ("realtime_ns".into(), real_ns().to_string()),
        (
            "clocksource".into(),
            read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        ),
    ]
}

/// The inputs exist and the kernel has livepatch (early, clear errors).
pub fn check_inputs(cfg: &LagConfig) -> anyhow::Result<()> {
    for (what, p) in [
        ("graft-agent", &cfg.agent),
        ("module", &cfg.module),
        ("graft-bench", &cfg.bench),
    ] {
        if !Path::new(p).exists() {
            anyhow::bail!("{what} {} does not exist", p.display());
        }
    }
    if !cfg.sys.join("kernel/livepatch").is_dir() {
        anyhow::bail!("this kernel has no /sys/kernel/livepatch");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_rounds_run_until_the_agent_has_enough_judged_trials() {
        let trial = |op: &str, kernel_ms: f64| Row {
            ok: true,
            setting: "graft-agent".into(),
            op: op.into(),
            kernel_ms: Some(kernel_ms),
            ..Row::default()
        };
        let mut rows = vec![trial("apply", 3.0), trial("revert", 1500.0)];
        assert!(
            !enough_judged(&rows, 1),
            "the only apply ended at the first attempt"
        );
        rows.push(trial("apply", 1400.0));
        assert!(enough_judged(&rows, 1));
        assert!(!enough_judged(&rows, 2));
        rows.push(Row {
            ok: false,
            ..trial("apply", 1400.0)
        });
        rows.push(Row {
            setting: "poll-1s".into(),
            ..trial("apply", 1400.0)
        });
        rows.push(Row {
            drift_us: Some(-42_404.5),
            ..trial("revert", 1500.0)
        });
        assert!(
            !enough_judged(&rows, 2),
            "failed, clock-moved and other settings' trials do not count"
        );
        rows.push(Row {
            drift_us: Some(-2.0),
            ..trial("revert", 1500.0)
        });
        rows.push(trial("apply", 1400.0));
        assert!(enough_judged(&rows, 2));
        assert!(enough_judged(&[], 0));
    }

    #[test]
    fn shares_leave_out_transitions_done_at_the_first_attempt() {
        let mut slow = Row {
            wall_ms: Some(1100.0),
            kernel_ms: Some(1000.0),
            kernel_work_ms: Some(1080.0),
            cpu_wait_ms: Some(2.0),
            cpu_window_ms: Some(1000.0),
            ..Row::default()
        };
        slow.set_shares();
        assert_eq!(slow.wall_ratio, Some(1.1));
        assert!((slow.work_ratio.unwrap() - 1100.0 / 1080.0).abs() < 1e-12);
        assert_eq!(slow.cpu_wait_pct, Some(0.2));
        let mut quick = Row {
            wall_ms: Some(150.0),
            kernel_ms: Some(3.0),
            kernel_work_ms: Some(90.0),
            cpu_wait_ms: Some(2.1),
            cpu_window_ms: Some(3.0),
            ..Row::default()
        };
        quick.set_shares();
        assert_eq!(
            (quick.wall_ratio, quick.work_ratio, quick.cpu_wait_pct),
            (None, None, None)
        );
        assert_eq!(
            quick.cpu_wait_ms,
            Some(2.1),
            "the raw times stay in the row"
        );
    }

    #[test]
    fn rows_round_trip_through_csv() {
        let row = Row {
            round: 3,
            seq: 17,
            setting: "graft-agent".into(),
            op: "apply".into(),
            ok: true,
            spawn_s: 12.5,
            kernel_start_ms: Some(61.25),
            kernel_end_ms: Some(1411.0),
            kernel_ms: Some(1349.75),
            noticed_ms: Some(1414.5),
            wall_ms: Some(1430.0),
            lag_ms: Some(3.5),
            polls: Some(4),
            kernel_call_ms: Some(-28.5),
            work_ratio: Some(1.0625),
            note: "a, b\nc".into(),
            ..Row::default()
        };
        let line = row.to_csv();
        assert_eq!(line.split(',').count(), 28);
        assert_eq!(CSV_HEADER.split(',').count(), 28);
        let back = Row::from_csv(&line).unwrap();
        assert_eq!(back.note, "a; b;c");
        assert_eq!(
            Row {
                note: back.note.clone(),
                ..row
            },
            back
        );
        assert!(Row::from_csv("1,2,3").is_err());
    }

    #[test]
    fn agent_notice_is_start_plus_duration_on_the_monotonic_clock() {
        let out = r#"{"state":"Applied","message":"m","transition":{"started":"2026-01-01T00:00:00.250Z","duration_seconds":1.5}}"#;
        let epoch_2026 = 1_767_225_600i64 * 1_000_000_000;
        let offset = epoch_2026 - 1_000_000_000; // realtime − monotonic
        let mono = agent_notice_mono(out, Op::Apply, offset).unwrap();
        assert_eq!(mono, 1_000_000_000 + 250_000_000 + 1_500_000_000);
        assert!(agent_notice_mono(out, Op::Revert, offset).is_err());
        assert!(agent_notice_mono("not json", Op::Apply, offset).is_err());
    }
}
