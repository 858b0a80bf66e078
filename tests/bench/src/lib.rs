//! Graft's benchmarks (issue 8): how soon the agent knows a livepatch
//! transition ended, at what CPU cost, next to polling baselines, on a real
//! kernel; and the agent's idle footprint and blocking-task scan speed.
//! `scripts/bench.sh` runs them all; see BENCHMARKS.md for the figures.

pub mod baseline;
pub mod checks;
pub mod clock;
pub mod fakeapi;
pub mod idle;
pub mod kmsg;
pub mod lag;
pub mod report;
pub mod scan;
pub mod stats;
pub mod syscall_trace;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use checks::{Check, Limits, SHORT, TARGETS};

#[derive(Debug, Parser)]
#[command(
    name = "graft-bench",
    about = "Graft's benchmarks; scripts/bench.sh runs them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// (guest) Interleaved apply/revert rounds of graft-agent and the polling baselines.
    Lag {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        module: PathBuf,
        #[arg(long, default_value = "graft_demo")]
        patch: String,
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// graft-agent trials per operation that must last past the kernel's first
        /// attempt (only those are judged); more rounds run until they do.
        #[arg(long, default_value_t = 2)]
        min_judged: usize,
        /// The most rounds, extra ones included.
        #[arg(long)]
        max_rounds: Option<u32>,
        #[arg(long, default_value = "300ms", value_parser = parse_duration)]
        settle: Duration,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        trial_timeout: Duration,
        #[arg(long, default_value = "/dev/kmsg")]
        kmsg: PathBuf,
        #[arg(long, default_value = "/sys")]
        sys: PathBuf,
        /// tracefs, for when each apply enters finit_module (mounted by the guest script).
        #[arg(long, default_value = "/sys/kernel/tracing")]
        tracing: PathBuf,
        /// Print graft-agent's stderr after each of its trials (set GRAFT_LOG to see its watcher).
        #[arg(long)]
        agent_log: bool,
    },
    /// (guest) A polling baseline: apply or revert, reading `transition` every INTERVAL.
    Poll {
        #[arg(long, value_parser = parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "/sys")]
        sys: PathBuf,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(subcommand)]
        op: PollOp,
    },
    /// (host) Reads the lag rows from a console log: CSV, tables, checks.
    Report {
        #[arg(long)]
        console: PathBuf,
        #[arg(long)]
        csv: PathBuf,
        /// Also write the Markdown section here.
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        short: bool,
    },
    /// (host) Idle footprint of `graft-agent run` over a simulated kernel and a fake API server.
    Idle {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        settle: Duration,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        window: Duration,
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        short: bool,
    },
    /// (host) Time to scan a generated /proc of N tasks for blocking ones.
    Scan {
        /// Where the tree goes: a tmpfs like /dev/shm (procfs lives in memory
        /// too) when writable, else WORK.
        #[arg(long)]
        work: PathBuf,
        #[arg(long)]
        tree_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        tasks: u32,
        #[arg(long, default_value_t = 15)]
        runs: usize,
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        short: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PollOp {
    Apply { module: PathBuf },
    Revert { patch: String },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

fn limits(short: bool) -> &'static Limits {
    if short { &SHORT } else { &TARGETS }
}

/// Prints the checks; returns the exit code (1 when any failed).
fn finish(checks: &[Check]) -> i32 {
    for c in checks {
        println!("{c}");
    }
    i32::from(checks.iter().any(|c| !c.passed))
}

fn write_optional(path: &Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, text)?;
    }
    Ok(())
}

pub fn run(cli: Cli) -> i32 {
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("graft-bench: error: {e:#}");
            2
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Lag {
            agent,
            module,
            patch,
            rounds,
            min_judged,
            max_rounds,
            settle,
            trial_timeout,
            kmsg,
            sys,
            tracing,
            agent_log,
        } => {
            let cfg = lag::LagConfig {
                agent,
                module,
                patch,
                rounds,
                min_judged,
                max_rounds: max_rounds.unwrap_or(rounds + 3).max(rounds),
                kmsg,
                sys,
                bench: std::env::current_exe()?,
                settle,
                trial_timeout,
                echo_agent_stderr: agent_log,
                tracing,
            };
            lag::check_inputs(&cfg)?;
            for (k, v) in lag::guest_facts() {
                println!("{}{k} {v}", report::FACT_PREFIX);
            }
            println!("{}rounds {rounds}", report::FACT_PREFIX);
            println!("@@GRAFT bench-csv-header {}", lag::CSV_HEADER);
            let mut bench = lag::LagBench::new(cfg)?;
            if let Some(why) = bench.trace_problem() {
                println!("{}kernel-calls not traced: {why}", report::FACT_PREFIX);
            }
            let rows = bench.run(|r| {
                println!(
                    "@@GRAFT bench-trial round {} {} {}: {} lag {} ms, wall {} ms, kernel {} ms{}",
                    r.round,
                    r.setting,
                    r.op,
                    if r.ok { "ok" } else { "FAILED" },
                    r.lag_ms.map_or("–".into(), |v| format!("{v:.2}")),
                    r.wall_ms.map_or("–".into(), |v| format!("{v:.1}")),
                    r.kernel_ms.map_or("–".into(), |v| format!("{v:.1}")),
                    if r.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.note)
                    }
                );
                println!("{}{}", report::CSV_PREFIX, r.to_csv());
            });
            // Overrides the configured count printed above, which stands
            // when the guest dies part-way.
            println!(
                "{}rounds {}",
                report::FACT_PREFIX,
                lag::LagBench::rounds_run(&rows)
            );
            let failed = rows.iter().filter(|r| !r.ok).count();
            println!(
                "{}trials={} failed={failed}",
                report::DONE_PREFIX,
                rows.len()
            );
            Ok(i32::from(failed > 0))
        }
        Cmd::Poll {
            interval,
            sys,
            timeout,
            op,
        } => {
            let poller = baseline::Poller::new(sys, interval, timeout);
            let report = match op {
                PollOp::Apply { module } => {
                    let name = module
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .map(|s| s.replace('-', "_"))
                        .ok_or_else(|| anyhow::anyhow!("{} has no file name", module.display()))?;
                    poller.apply(&module, &name)?
                }
                PollOp::Revert { patch } => poller.revert(&patch)?,
            };
            println!("{}", serde_json::to_string(&report)?);
            Ok(0)
        }
        Cmd::Report {
            console,
            csv,
            markdown,
            short,
        } => {
            let text = std::fs::read_to_string(&console)?;
            let c = report::parse_console(&text);
            std::fs::write(&csv, report::to_csv(&c.rows))?;
            let mut md = String::new();
            let _ = writeln!(
                md,
                "### Detection lag: graft_demo on {} ({} vCPUs), {} rounds\n",
                c.facts.get("release").map_or("?", String::as_str),
                c.facts.get("cpus").map_or("?", String::as_str),
                c.facts.get("rounds").map_or("?", String::as_str),
            );
            md.push_str(&report::tables(&c.rows));
            print!("{md}");
            println!("raw rows: {}", csv.display());
            write_optional(&markdown, &md)?;
            Ok(finish(&report::checks(&c, limits(short))))
        }
        Cmd::Idle {
            agent,
            work,
            settle,
            window,
            markdown,
            json,
            short,
        } => {
            let cfg = idle::IdleConfig {
                agent,
                work,
                settle,
                window,
            };
            let r = idle::run(&cfg, &mut |m| eprintln!("graft-bench idle: {m}"))?;
            let lim = limits(short);
            let mut md = String::new();
            let _ = writeln!(
                md,
                "### Idle graft-agent run (simulated kernel, fake API server)\n\n\
                 | figure | value |\n| --- | ---: |\n\
                 | resident memory (VmRSS) | {:.1} MiB |\n| peak resident memory (VmHWM) | {:.1} MiB |\n\
                 | of which anonymous / file | {:.1} / {:.1} MiB |\n| threads | {} |\n\
                 | voluntary context switches, all threads, in {:.0} s | {} ({:.1} a minute) |\n\
                 | involuntary context switches in the window | {} |\n\
                 | CPU in the window | {:.2} ms |\n\
                 | voluntary context switches in the {:.0} s settling time | {} (threads {} → {}) |\n\
                 | API requests by the agent in the window | {} |\n\
                 | status writes before going idle | {} |\n\
                 | Applied after start | {:.2} s |\n",
                r.vm_rss_kib as f64 / 1024.0,
                r.vm_hwm_kib as f64 / 1024.0,
                r.rss_anon_kib as f64 / 1024.0,
                r.rss_file_kib as f64 / 1024.0,
                r.threads,
                r.window_s,
                r.voluntary,
                r.voluntary_per_minute,
                r.nonvoluntary,
                r.cpu_ms,
                r.settle_s,
                r.settle_voluntary,
                r.settle_threads.0,
                r.settle_threads.1,
                r.api_requests_in_window.len(),
                r.status_writes,
                r.applied_after_s,
            );
            let busy: Vec<String> = r
                .per_thread
                .iter()
                .filter(|(_, t)| t.voluntary > 0)
                .map(|(tid, t)| format!("{} ({tid}): {}", t.comm, t.voluntary))
                .collect();
            let _ = writeln!(
                md,
                "Threads that woke in the window: {}.{}\n",
                if busy.is_empty() {
                    "none".to_string()
                } else {
                    busy.join(", ")
                },
                if r.threads_changed {
                    " Threads started or ended during the window; their counts are partial."
                } else {
                    ""
                }
            );
            print!("{md}");
            write_optional(&markdown, &md)?;
            write_optional(&json, &serde_json::to_string_pretty(&r)?)?;
            let checks = vec![
                Check::at_most(
                    "idle graft-agent run: resident memory",
                    Some(r.vm_rss_kib as f64 / 1024.0),
                    lim.rss_mib,
                    " MiB",
                ),
                Check::at_most(
                    "idle graft-agent run: wake-ups (voluntary context switches) a minute",
                    Some(r.voluntary_per_minute),
                    lim.wakeups_per_minute,
                    "",
                ),
            ];
            Ok(finish(&checks))
        }
        Cmd::Scan {
            work,
            tree_dir,
            tasks,
            runs,
            markdown,
            json,
            short,
        } => {
            let shm = PathBuf::from("/dev/shm");
            let parent = tree_dir.unwrap_or_else(|| {
                if scan::on_tmpfs(&shm)
                    && nix::unistd::access(&shm, nix::unistd::AccessFlags::W_OK).is_ok()
                {
                    shm
                } else {
                    work.clone()
                }
            });
            let r = scan::run(
                &parent.join(format!("graft-bench-proc-{}", std::process::id())),
                tasks,
                runs,
            )?;
            let mut md = String::new();
            let _ = writeln!(
                md,
                "### Blocking-task scan ({} tasks in {} processes, {} blockers, {} runs)\n\n\
                 | figure | value |\n| --- | ---: |\n\
                 | median | {:.2} ms |\n| min | {:.2} ms |\n| max | {:.2} ms |\n| p90 | {:.2} ms |\n\
                 | of which reading every patch_state (median) | {:.2} ms |\n\
                 | CPU time of a scan (median) | {:.2} ms |\n\
                 | first scan | {:.2} ms |\n| blockers described | {} |\n\
                 | tree on | {} |\n\
                 | reference: real /proc, open+read of each thread's comm | {:.2} µs a thread ({} threads): {:.1} ms for {} |\n",
                r.tasks,
                r.processes,
                r.blockers,
                r.runs,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                r.p90_ms,
                r.states_median_ms,
                r.cpu_median_ms,
                r.first_ms,
                r.described,
                r.tree_fs,
                r.real_proc_us_per_task,
                r.real_proc_threads,
                r.real_proc_scaled_ms,
                r.tasks
            );
            print!("{md}");
            write_optional(&markdown, &md)?;
            write_optional(&json, &serde_json::to_string_pretty(&r)?)?;
            let checks = vec![Check::at_most(
                &format!("scan of {} tasks for blockers: median", r.tasks),
                Some(r.median_ms),
                limits(short).scan_ms,
                " ms",
            )];
            Ok(finish(&checks))
        }
    }
}
