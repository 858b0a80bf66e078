//! Human output: short, aligned, and honest about simulations.

use std::fmt::Write;

use crate::cli::InspectReport;
use crate::kernel::KernelKind;
use crate::patching::{BlockingReport, NodeStatus, Outcome};
use crate::tasks::BlockingTask;

pub fn simulation_banner(kind: &KernelKind) -> String {
    match kind {
        KernelKind::Simulated { dir } => format!(
            "SIMULATION: simulated kernel in {} — no real kernel is touched",
            dir.display()
        ),
        KernelKind::Linux => String::new(),
    }
}

fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name:<12} {value}");
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn inspect(r: &InspectReport) -> String {
    let mut out = String::new();
    let m = &r.module;
    field(&mut out, "module", m.path.display());
    field(&mut out, "name", &m.name);
    field(&mut out, "livepatch", yes_no(m.livepatch));
    field(&mut out, "signed", yes_no(m.signed));
    field(&mut out, "built for", &m.kernel_release);
    field(&mut out, "running", &r.running_kernel);
    field(&mut out, "vermagic", &m.vermagic);
    field(&mut out, "license", m.license.as_deref().unwrap_or("-"));
    field(
        &mut out,
        "srcversion",
        m.srcversion.as_deref().unwrap_or("-"),
    );
    field(
        &mut out,
        "depends",
        if m.depends.is_empty() {
            "-".to_string()
        } else {
            m.depends.join(",")
        },
    );
    field(&mut out, "size", format!("{} bytes", m.size_bytes));
    if let Some(digest) = &m.sha256 {
        field(&mut out, "sha256", digest);
    }
    match &r.refusal {
        None => field(&mut out, "verdict", "loadable on this kernel"),
        Some(why) => field(&mut out, "verdict", format!("refused: {why}")),
    }
    out
}

pub fn outcome(o: &Outcome) -> String {
    let mut out = String::new();
    field(&mut out, "patch", &o.patch);
    field(&mut out, "state", o.state);
    field(&mut out, "changed", yes_no(o.changed));
    if let Some(t) = &o.transition {
        let timing = match t.duration_seconds {
            Some(d) => format!("{} in {d:.2}s", t.target.as_str()),
            None => format!(
                "towards {}, {:.1}s so far",
                t.target.as_str(),
                t.elapsed_seconds
            ),
        };
        let tasks = match (t.tasks_switched, t.tasks_total) {
            (Some(switched), Some(total)) => format!(", {switched}/{total} tasks switched"),
            _ => String::new(),
        };
        let resumed = if t.resumed { " (resumed)" } else { "" };
        field(&mut out, "transition", format!("{timing}{tasks}{resumed}"));
    }
    if !o.unloaded.is_empty() {
        field(&mut out, "unloaded", o.unloaded.join(", "));
    }
    if o.forced {
        field(&mut out, "FORCED", "yes: reboot this node");
    }
    field(&mut out, "message", &o.message);
    for note in &o.notes {
        field(&mut out, "note", note);
    }
    if !o.blocking.is_empty() {
        out.push('\n');
        out.push_str(&blocking_table(&o.blocking));
    }
    out
}

pub fn status(s: &NodeStatus, only: Option<&str>) -> String {
    let mut out = String::new();
    field(&mut out, "kernel", &s.kernel.release);
    field(
        &mut out,
        "livepatch",
        if s.kernel.livepatch_supported {
            "supported".to_string()
        } else {
            s.kernel.message.clone().unwrap_or_default()
        },
    );
    if s.patches.is_empty() {
        match only {
            Some(p) => field(
                &mut out,
                "patches",
                format!("no livepatch named {p} is loaded"),
            ),
            None => field(&mut out, "patches", "none"),
        }
    } else {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:<8} {:<11} {:<8} FUNCTIONS",
            "PATCH", "STATE", "ENABLED", "TRANSITION", "REPLACE"
        );
        for p in &s.patches {
            let replace = match p.replace {
                Some(r) => yes_no(r).to_string(),
                None => "n/a".into(),
            };
            let functions: Vec<String> = p
                .objects
                .iter()
                .flat_map(|o| {
                    o.functions
                        .iter()
                        .map(move |f| format!("{}:{}", o.name, f.name))
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<24} {:<14} {:<8} {:<11} {:<8} {}",
                p.name,
                p.state.as_str(),
                yes_no(p.enabled),
                yes_no(p.transition),
                replace,
                functions.join(",")
            );
        }
        if s.patches.iter().any(|p| p.replace.is_none()) {
            let _ = writeln!(
                out,
                "(REPLACE n/a: this kernel does not expose the `replace` attribute; it appears in 6.11)"
            );
        }
    }
    if !s.inert_modules.is_empty() {
        field(
            &mut out,
            "inert",
            format!(
                "{} (loaded livepatch modules with no active patch; apply or revert unloads them)",
                s.inert_modules.join(", ")
            ),
        );
    }
    if let Some(t) = &s.transition {
        out.push('\n');
        let elapsed = t
            .elapsed_seconds
            .map(|e| format!(", {e:.1}s"))
            .unwrap_or_default();
        field(
            &mut out,
            "transition",
            format!(
                "{} towards {}: {}/{} tasks switched{elapsed} ({})",
                t.patch,
                t.target.as_str(),
                t.tasks_switched,
                t.tasks_total,
                t.state
            ),
        );
        if !t.blocking.is_empty() {
            out.push_str(&blocking_table(&t.blocking));
        }
    }
    out
}

pub fn blocking(r: &BlockingReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.message);
    if !r.blocking.is_empty() {
        out.push_str(&blocking_table(&r.blocking));
    }
    out
}

fn blocking_table(tasks: &[BlockingTask]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<8} {:<16} {:<7} {:<28} POD / CONTAINER",
        "PID", "TID", "COMM", "KTHREAD", "FUNCTION"
    );
    for t in tasks {
        let function = match (&t.function, t.in_patched_function) {
            (Some(f), true) => format!("{f} (patched)"),
            (Some(f), false) => f.clone(),
            (None, _) => "-".into(),
        };
        let pod = t
            .pod
            .as_ref()
            .map(|p| {
                let container = p
                    .container_id
                    .as_ref()
                    .map(|c| format!(" / {}", &c[..12.min(c.len())]))
                    .unwrap_or_default();
                format!("{}{container}", p.pod_uid)
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<8} {:<8} {:<16} {:<7} {:<28} {}",
            t.pid,
            t.tid,
            t.comm,
            yes_no(t.kthread),
            function,
            pod
        );
    }
    out
}
