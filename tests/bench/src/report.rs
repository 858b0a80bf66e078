//! The host side of the lag benchmark: rows out of the serial console log,
//! the raw CSV, Markdown tables (median, min, max, p90 per setting and
//! metric), the ratios between settings, and the checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checks::{Check, Limits};
use crate::lag::{CLOCK_STEADY_US, CSV_HEADER, FIRST_ATTEMPT_MS, Row, Setting};
use crate::stats::Summary;

pub const CSV_PREFIX: &str = "@@GRAFT bench-csv ";
pub const FACT_PREFIX: &str = "@@GRAFT bench-fact ";
pub const DONE_PREFIX: &str = "@@GRAFT bench-done ";

/// What the console log holds.
#[derive(Debug, Default)]
pub struct Console {
    pub rows: Vec<Row>,
    pub facts: BTreeMap<String, String>,
    pub done: bool,
    /// Lines with the CSV prefix that did not parse (e.g. cut by a kernel message).
    pub broken: Vec<String>,
}

pub fn parse_console(log: &str) -> Console {
    let mut c = Console::default();
    for line in log.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(csv) = line.strip_prefix(CSV_PREFIX) {
            match Row::from_csv(csv) {
                // The shares follow from the raw times: derive them again, so
                // that an older console reads by today's rules.
                Ok(mut r) => {
                    r.set_shares();
                    c.rows.push(r);
                }
                Err(e) => c.broken.push(format!("{e}: {line}")),
            }
        } else if let Some(fact) = line.strip_prefix(FACT_PREFIX) {
            if let Some((k, v)) = fact.split_once(' ') {
                c.facts.insert(k.to_string(), v.to_string());
            }
        } else if line.starts_with(DONE_PREFIX) {
            c.done = true;
        }
    }
    c
}

pub fn to_csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.to_csv());
        s.push('\n');
    }
    s
}

type Metric = (&'static str, fn(&Row) -> Option<f64>, usize);

const METRICS: [Metric; 11] = [
    ("kernel transition (ms)", |r| r.kernel_ms, 1),
    ("detection lag (ms)", |r| r.lag_ms, 2),
    ("exit after the kernel's end (ms)", |r| r.exit_lag_ms, 2),
    ("wall time (ms)", |r| r.wall_ms, 1),
    ("wall / kernel transition", |r| r.wall_ratio, 4),
    ("CPU while waiting (% of the wait)", |r| r.cpu_wait_pct, 3),
    (
        "CPU of the whole process (% of wall)",
        |r| r.cpu_total_pct,
        3,
    ),
    ("spawn → kernel start (ms)", |r| r.kernel_start_ms, 1),
    ("spawn → finit_module (ms)", |r| r.kernel_call_ms, 1),
    (
        "kernel's whole work, finit_module → end (ms)",
        |r| r.kernel_work_ms,
        1,
    ),
    ("wall / kernel's whole work", |r| r.work_ratio, 4),
];

fn measured_rows<'a>(rows: &'a [Row], setting: &str, op: &str) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| r.measured() && r.setting == setting && r.op == op)
        .collect()
}

fn summary(rows: &[&Row], f: fn(&Row) -> Option<f64>) -> Option<Summary> {
    let v: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
    Summary::of(&v)
}

fn median(rows: &[Row], setting: &str, op: &str, f: fn(&Row) -> Option<f64>) -> Option<f64> {
    summary(&measured_rows(rows, setting, op), f).map(|s| s.median)
}

/// Markdown tables of the rows.
pub fn tables(rows: &[Row]) -> String {
    let mut out = String::new();
    for op in ["apply", "revert"] {
        let _ = writeln!(out, "#### {op}\n");
        let _ = writeln!(out, "| metric | setting | median | min | max | p90 | n |");
        let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
        for (name, f, digits) in METRICS {
            // Columns only one operation has (the finit_module call) stay out of the other's table.
            if rows.iter().all(|r| r.op != op || f(r).is_none()) {
                continue;
            }
            for setting in Setting::ALL {
                let rs = measured_rows(rows, setting.name(), op);
                match summary(&rs, f) {
                    Some(s) => {
                        let _ = writeln!(
                            out,
                            "| {name} | {} | {:.d$} | {:.d$} | {:.d$} | {:.d$} | {} |",
                            setting.name(),
                            s.median,
                            s.min,
                            s.max,
                            s.p90,
                            s.n,
                            d = digits
                        );
                    }
                    None => {
                        let _ =
                            writeln!(out, "| {name} | {} | – | – | – | – | 0 |", setting.name());
                    }
                }
            }
        }
        let moved = rows
            .iter()
            .filter(|r| r.ok && r.op == op && !r.clock_steady())
            .count();
        if moved > 0 {
            let _ = writeln!(
                out,
                "\nLeft out of this table: {moved} trial(s) during which the printk clock moved \
                 more than {CLOCK_STEADY_US} µs against CLOCK_MONOTONIC (`drift_us` in the raw \
                 rows); their kernel times cannot be placed on the trial's clock."
            );
        }
        let all: Vec<&Row> = rows.iter().filter(|r| r.measured() && r.op == op).collect();
        let quick = all
            .iter()
            .filter(|r| r.kernel_ms.is_some() && !r.past_first_attempt())
            .count();
        let _ = writeln!(
            out,
            "\nThe kernel finished {quick} of these {} transitions at its first attempt \
             (under {FIRST_ATTEMPT_MS} ms, before its one-second retries). They are in the \
             times but not in the wall-time ratios or CPU shares: those would measure exec, \
             module loading and the kernel's own work over a few milliseconds.\n",
            all.len()
        );
    }
    let _ = writeln!(out, "#### ratios between the settings (of the medians)\n");
    let _ = writeln!(out, "| op | ratio | value |");
    let _ = writeln!(out, "| --- | --- | ---: |");
    let agent = Setting::Agent.name();
    for op in ["apply", "revert"] {
        for (label, f) in [
            (
                "detection lag",
                (|r: &Row| r.lag_ms) as fn(&Row) -> Option<f64>,
            ),
            ("CPU while waiting", |r: &Row| r.cpu_wait_pct),
            ("wall time", |r: &Row| r.wall_ms),
        ] {
            for other in [Setting::Poll1s, Setting::Poll1ms] {
                let a = median(rows, agent, op, f);
                let b = median(rows, other.name(), op, f);
                let v = match (a, b) {
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}×", b / a),
                    _ => "–".into(),
                };
                let _ = writeln!(out, "| {op} | {label}: {} / {agent} | {v} |", other.name());
            }
        }
    }
    out
}

/// The checks on the lag rows.
pub fn checks(c: &Console, limits: &Limits) -> Vec<Check> {
    let rows = &c.rows;
    let mut checks = Vec::new();
    let rounds: u32 = c
        .facts
        .get("rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let expected = rounds as usize * Setting::ALL.len() * 2;
    let good = rows.iter().filter(|r| r.ok).count();
    let failures: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok)
        .take(3)
        .map(|r| format!("round {} {} {}: {}", r.round, r.setting, r.op, r.note))
        .collect();
    checks.push(Check::new(
        format!(
            "lag: every trial of at least {} rounds ran",
            limits.min_rounds
        ),
        c.done && c.broken.is_empty() && rounds >= limits.min_rounds && good == expected,
        format!(
            "{good} of {expected} trials in {rounds} rounds{}{}{}",
            if c.done {
                ""
            } else {
                "; the guest never finished"
            },
            if c.broken.is_empty() {
                String::new()
            } else {
                format!("; {} unreadable rows", c.broken.len())
            },
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {}", failures.join(" | "))
            }
        ),
    ));
    let earliest = rows
        .iter()
        .filter(|r| r.measured())
        .filter_map(|r| r.lag_ms)
        .min_by(f64::total_cmp);
    let drift = rows
        .iter()
        .filter_map(|r| r.drift_us)
        .map(f64::abs)
        .max_by(f64::total_cmp);
    let ran: Vec<&Row> = rows.iter().filter(|r| r.ok).collect();
    let moved = ran.iter().filter(|r| !r.clock_steady()).count();
    // A clock that moves now and then costs a trial; one that moves in many
    // says the guest's timekeeping cannot carry the measurement at all.
    let mostly_steady = 4 * moved <= ran.len();
    checks.push(Check::new(
        "lag: clocks aligned (no setting noticed an end before the kernel logged it, −0.5 ms \
         tolerance; the printk clock held still in at least 3 of 4 trials)",
        earliest.is_some_and(|e| e >= -0.5) && mostly_steady,
        format!(
            "earliest notice {} ms after the end; the printk/monotonic offset moved more than \
             {CLOCK_STEADY_US} µs during {moved} of {} trials (largest {} µs), left out of \
             the medians",
            earliest.map_or("–".into(), |e| format!("{e:.3}")),
            ran.len(),
            drift.map_or("–".into(), |d| format!("{d:.0}"))
        ),
    ));
    let slow: Vec<f64> = rows
        .iter()
        .filter(|r| r.ok && r.setting == Setting::Poll1s.name())
        .filter_map(|r| r.lag_ms)
        .collect();
    let slow_median = Summary::of(&slow).map(|s| s.median);
    checks.push(Check::new(
        "lag: the 1 s baseline is seen late (median between 1 ms and 1 s)",
        slow_median.is_some_and(|m| (1.0..=1000.0).contains(&m)),
        slow_median.map_or("no data".into(), |m| format!("median {m:.1} ms")),
    ));
    let agent = Setting::Agent.name();
    for op in ["apply", "revert"] {
        checks.push(Check::at_most(
            &format!("graft-agent {op}: median detection lag"),
            median(rows, agent, op, |r| r.lag_ms),
            limits.lag_ms,
            " ms",
        ));
        checks.push(Check::at_most(
            &format!("graft-agent {op}: median CPU while waiting"),
            median(rows, agent, op, |r| r.cpu_wait_pct),
            limits.cpu_wait_pct,
            " %",
        ));
    }
    checks.push(Check::at_most(
        "graft-agent apply: median wall time / kernel transition",
        median(rows, agent, "apply", |r| r.wall_ratio),
        limits.wall_ratio,
        "",
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::TARGETS;

    fn row(setting: &str, op: &str, lag: f64) -> Row {
        Row {
            round: 1,
            seq: 1,
            setting: setting.into(),
            op: op.into(),
            ok: true,
            kernel_ms: Some(1000.0),
            lag_ms: Some(lag),
            wall_ms: Some(1005.0),
            cpu_wait_ms: Some(2.0),
            cpu_window_ms: Some(1000.0),
            ..Row::default()
        }
    }

    fn console_with(rows: &[Row], rounds: u32) -> String {
        let mut log =
            format!("noise\n{FACT_PREFIX}rounds {rounds}\n{FACT_PREFIX}release 6.1.0-56-amd64\n");
        for r in rows {
            log.push_str(&format!("{CSV_PREFIX}{}\r\n", r.to_csv()));
        }
        log.push_str(&format!("{DONE_PREFIX}trials={}\n", rows.len()));
        log
    }

    fn full_round() -> Vec<Row> {
        let mut rows = Vec::new();
        for (s, lag) in [("graft-agent", 3.0), ("poll-1s", 480.0), ("poll-1ms", 0.6)] {
            for op in ["apply", "revert"] {
                rows.push(row(s, op, lag));
            }
        }
        rows
    }

    #[test]
    fn a_good_console_passes_every_check() {
        let rows: Vec<Row> = (0..10).flat_map(|_| full_round()).collect();
        let c = parse_console(&console_with(&rows, 10));
        assert_eq!(c.rows.len(), 60);
        assert_eq!(c.facts["release"], "6.1.0-56-amd64");
        let checks = checks(&c, &TARGETS);
        assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
        let t = tables(&c.rows);
        assert!(
            t.contains("| detection lag (ms) | graft-agent | 3.00 | 3.00 | 3.00 | 3.00 | 10 |"),
            "{t}"
        );
        assert!(
            t.contains("| apply | detection lag: poll-1s / graft-agent | 160.00× |"),
            "{t}"
        );
    }

    #[test]
    fn shares_are_derived_again_from_the_raw_times() {
        let quick = Row {
            kernel_ms: Some(2.2),
            cpu_window_ms: Some(2.2),
            cpu_wait_ms: Some(1.5),
            cpu_wait_pct: Some(68.8),
            wall_ratio: Some(40.3),
            ..row("graft-agent", "apply", 3.0)
        };
        let c = parse_console(&console_with(&[quick], 1));
        assert_eq!(c.rows[0].cpu_wait_pct, None);
        assert_eq!(c.rows[0].wall_ratio, None);
        let c = parse_console(&console_with(&full_round(), 1));
        assert_eq!(c.rows[0].cpu_wait_pct, Some(0.2));
        assert_eq!(c.rows[0].wall_ratio, Some(1.005));
    }

    #[test]
    fn a_column_only_apply_has_stays_out_of_the_revert_table() {
        let rows: Vec<Row> = full_round()
            .into_iter()
            .map(|r| Row {
                kernel_call_ms: (r.op == "apply").then_some(20.0),
                ..r
            })
            .collect();
        let t = tables(&rows);
        let (apply, revert) = t.split_once("#### revert").unwrap();
        assert!(
            apply.contains("| spawn → finit_module (ms) | graft-agent | 20.0 |"),
            "{t}"
        );
        assert!(!revert.contains("finit_module"), "{t}");
        assert!(
            revert.contains("| detection lag (ms) | graft-agent |"),
            "{t}"
        );
    }

    #[test]
    fn missing_trials_a_cut_row_or_an_early_notice_fail() {
        let mut rows: Vec<Row> = (0..10).flat_map(|_| full_round()).collect();
        rows[0].lag_ms = Some(-2.0);
        rows[1].ok = false;
        let mut log = console_with(&rows, 10);
        log.push_str(&format!(
            "{CSV_PREFIX}1,2,graft-agent,ap[  12.3] random: crng\n"
        ));
        let c = parse_console(&log);
        assert_eq!(c.broken.len(), 1);
        let checks = checks(&c, &TARGETS);
        assert!(!checks[0].passed);
        assert!(!checks[1].passed);
        let c = parse_console(&console_with(&full_round(), 1));
        assert!(!checks_pass(&c), "one round is too few");
    }

    #[test]
    fn a_trial_whose_clock_moved_is_left_out_not_failed() {
        let mut rows: Vec<Row> = (0..10).flat_map(|_| full_round()).collect();
        // The CI run of 109889f: the offset moved 42 ms during one trial, which
        // then seemed to notice the end 40 ms before the kernel logged it.
        rows[5].lag_ms = Some(-40.1);
        rows[5].drift_us = Some(-42_404.5);
        rows[0].lag_ms = Some(900.0);
        rows[0].drift_us = Some(5_000.0);
        let c = parse_console(&console_with(&rows, 10));
        assert!(checks_pass(&c), "{:#?}", checks(&c, &TARGETS));
        let t = tables(&c.rows);
        assert!(
            t.contains("| detection lag (ms) | graft-agent | 3.00 | 3.00 | 3.00 | 3.00 | 9 |"),
            "{t}"
        );
        assert!(t.contains("Left out of this table: 1 trial(s)"), "{t}");

        for r in rows.iter_mut().take(16) {
            r.drift_us = Some(500.0);
        }
        let c = parse_console(&console_with(&rows, 10));
        let checks = checks(&c, &TARGETS);
        assert!(
            !checks[1].passed,
            "a clock that moves in over a quarter of the trials fails: {checks:#?}"
        );
    }

    fn checks_pass(c: &Console) -> bool {
        checks(c, &TARGETS).iter().all(|c| c.passed)
    }
}
