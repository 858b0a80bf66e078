//! `graft-agent` as a host command: for people, scripts and Ansible.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::error::{AgentError, exit_code};
use crate::journal::StateDir;
use crate::kernel::{self, Kernel, sim};
use crate::module_file::{self, ModuleInfo};
use crate::patching::{
    ApplyOptions, Observer, Outcome, Patcher, Progress, RevertOptions, StallPolicy,
};
use crate::render;

const EXIT_CODES: &str = "\
Exit codes:
  0  done, or nothing needed to change
  1  the kernel refused, the transition failed, or the patch was reverted by policy
  2  bad input: refused before any call that changes the kernel
  3  still stalled or transitioning when --timeout passed (the kernel carries on)
  4  another transition (or graft-agent operation) is in progress and did not end within --timeout
  5  the transition was forced: reboot the node";

/// Loads kernel livepatches, follows their transition until every task runs the
/// patched code, and names the tasks (and pods) that block it.
#[derive(Debug, Parser)]
#[command(name = "graft-agent", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The kernel to act on: `linux` (this host's) or `sim:DIR`, a simulated
    /// kernel kept in DIR (see `graft-agent sim --help`).
    #[arg(long, global = true, default_value = "linux", env = "GRAFT_KERNEL")]
    pub kernel: String,

    /// Where the agent keeps its lock and transition journal
    /// [default: /run/graft, or DIR/agent-state for a simulated kernel].
    #[arg(long, global = true, env = "GRAFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Print one JSON document on stdout (logs go to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a module file is and whether this kernel would accept it. Changes nothing.
    Inspect {
        module: PathBuf,
        /// Expected sha256 of the file.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Load a livepatch module and follow its transition to the end.
    Apply(ApplyArgs),
    /// Disable a patch, follow the transition back, and unload its module.
    Revert(RevertArgs),
    /// Show every livepatch on this kernel and the transition in progress.
    Status { patch: Option<String> },
    /// Name the tasks blocking the transition in progress: pid, function, pod.
    Blocking { patch: Option<String> },
    /// Script a simulated kernel (for tests, demos and simulated fleets).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Cluster mode (the DaemonSet): apply what this node's LivePatchNode asks
    /// and report its status; serves /metrics, /livez and /readyz.
    #[cfg(feature = "cluster")]
    Run(crate::cluster::RunArgs),
    /// Serve the kernel's livepatch metrics (/metrics) without Kubernetes.
    #[cfg(feature = "cluster")]
    Exporter(crate::exporter::ExporterArgs),
}

impl Command {
    /// Long-running commands log at info level by default; the others at warn.
    pub fn is_daemon(&self) -> bool {
        #[cfg(feature = "cluster")]
        if matches!(self, Self::Run(_) | Self::Exporter(_)) {
            return true;
        }
        false
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The livepatch module file (.ko).
    pub module: PathBuf,
    /// Refuse the file unless its sha256 is this (64 hex digits).
    #[arg(long)]
    pub sha256: Option<String>,
    /// How long a transition may run before it counts as stalled.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub stall_after: Duration,
    /// On kernels with a `signal` attribute (4.15 to 5.0), signal blocking tasks after this long.
    #[arg(long, value_parser = parse_duration)]
    pub signal_after: Option<Duration>,
    /// What to do when the transition stalls.
    #[arg(long, value_enum, default_value_t = OnStall::Wait)]
    pub on_stall: OnStall,
    /// Required with `--on-stall force`: forcing breaks the consistency model,
    /// the module can never be unloaded, and the node must be rebooted.
    #[arg(long)]
    pub allow_force: bool,
    /// Give up waiting after this long (the kernel carries on; exit code 3 or 4).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Report what would change without changing anything.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct RevertArgs {
    /// The patch name (as `graft-agent status` lists it).
    pub patch: String,
    /// How long the unpatching transition may run before it counts as stalled.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub stall_after: Duration,
    /// Give up waiting after this long (the kernel carries on; exit code 3).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Report what would change without changing anything.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OnStall {
    Wait,
    Revert,
    Force,
}

impl From<OnStall> for StallPolicy {
    fn from(p: OnStall) -> Self {
        match p {
            OnStall::Wait => StallPolicy::Wait,
            OnStall::Revert => StallPolicy::Revert,
            OnStall::Force => StallPolicy::Force,
        }
    }
}

/// The simulated kernel. Its state is the documented file DIR/kernel.json;
/// these commands script it.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create a simulated kernel in DIR (replacing any there).
    Init {
        dir: PathBuf,
        /// The kernel release it reports (`uname -r`).
        #[arg(long, default_value = "6.1.0-sim-amd64")]
        release: String,
        /// How many ordinary tasks it runs.
        #[arg(long, default_value_t = 40)]
        tasks: u32,
        /// Which kernel's sysfs attributes it exposes.
        #[arg(long, value_enum, default_value_t = SimProfile::V6_1)]
        like: SimProfile,
        /// A kernel without livepatch support.
        #[arg(long)]
        no_livepatch: bool,
        /// A kernel booted with module.sig_enforce=1: unsigned modules are refused.
        #[arg(long)]
        sig_enforce: bool,
        /// Period of the kernel's fake signals to blocking user tasks.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        signal_cycle: Duration,
    },
    /// Add a task; with --sleeps-in it blocks any patch that replaces that function.
    AddTask {
        dir: PathBuf,
        #[arg(long)]
        comm: String,
        /// A kernel thread (not freed by the kernel's fake signals).
        #[arg(long)]
        kthread: bool,
        /// The function it sleeps in.
        #[arg(long)]
        sleeps_in: Option<String>,
        /// The module that function belongs to (shown on its stack).
        #[arg(long, requires = "sleeps_in")]
        in_module: Option<String>,
        /// Put it in this pod (UID) ...
        #[arg(long, requires = "container_id")]
        pod_uid: Option<String>,
        /// ... and container (64 hex digits), as a systemd-driven containerd kubelet would.
        #[arg(long, requires = "pod_uid")]
        container_id: Option<String>,
        /// Or give its /proc/PID/cgroup text directly.
        #[arg(long, conflicts_with = "pod_uid")]
        cgroup: Option<String>,
    },
    /// Let the tasks named COMM leave the function they sleep in.
    ReleaseTask {
        dir: PathBuf,
        #[arg(long)]
        comm: String,
    },
    /// Make the next module load fail with an errno (name like EKEYREJECTED, or a number).
    FailNextLoad {
        dir: PathBuf,
        #[arg(long)]
        errno: String,
        /// Only a load of this module fails.
        #[arg(long)]
        module: Option<String>,
    },
    /// Simulate a reboot: new boot ID, no modules loaded.
    Reboot { dir: PathBuf },
    /// Print the simulated kernel log (like dmesg).
    Log { dir: PathBuf },
    /// Write a module file the simulated kernel understands (a real ELF with .modinfo).
    BuildModule {
        /// Module name.
        #[arg(long)]
        name: String,
        /// Kernel release it is built for (goes into vermagic).
        #[arg(long)]
        release: String,
        /// Functions it replaces, as OBJECT:FUNCTION (repeatable); OBJECT is vmlinux or a module.
        #[arg(long = "patches", value_name = "OBJECT:FUNCTION")]
        patches: Vec<String>,
        /// An atomic-replace (cumulative) patch.
        #[arg(long)]
        replace: bool,
        /// How long its transition takes when nothing blocks it.
        #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
        transition_time: Duration,
        /// Build a plain module, not a livepatch.
        #[arg(long)]
        not_livepatch: bool,
        /// Build identity (srcversion); derived from the contents when absent.
        #[arg(long)]
        srcversion: Option<String>,
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SimProfile {
    /// 4.15 to 5.0: a `signal` attribute, no fake signals, no `patched`.
    #[value(name = "4.19")]
    V4_19,
    /// Debian 12: `patched`, no `replace`.
    #[value(name = "6.1")]
    V6_1,
    /// `replace` appears.
    #[value(name = "6.12")]
    V6_12,
    /// `stack_order` appears.
    #[value(name = "6.14")]
    V6_14,
}

impl SimProfile {
    fn attributes(self) -> sim::SimAttributes {
        let v6_1 = sim::SimAttributes::default();
        match self {
            Self::V4_19 => sim::SimAttributes {
                patched: false,
                signal: true,
                ..v6_1
            },
            Self::V6_1 => v6_1,
            Self::V6_12 => sim::SimAttributes {
                replace: true,
                ..v6_1
            },
            Self::V6_14 => sim::SimAttributes {
                replace: true,
                stack_order: true,
                ..v6_1
            },
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s or 5m ({e})"))
}

/// Prints progress for a person (live on a terminal) and stays silent for scripts.
struct CliObserver {
    live: bool,
    quiet: bool,
    live_line_open: bool,
}

impl CliObserver {
    fn new(json: bool) -> Self {
        let live = !json && std::io::stderr().is_terminal();
        Self {
            live,
            quiet: json,
            live_line_open: false,
        }
    }

    fn end_live_line(&mut self) {
        if self.live_line_open {
            eprintln!();
            self.live_line_open = false;
        }
    }
}

impl Drop for CliObserver {
    fn drop(&mut self) {
        self.end_live_line();
    }
}

impl Observer for CliObserver {
    fn progress(&mut self, p: &Progress<'_>) -> ControlFlow<()> {
        if let Some(message) = p.message {
            self.end_live_line();
            if !self.quiet {
                eprintln!("{}: {message}", p.state);
            } else {
                tracing::info!(patch = p.patch, state = %p.state, "{message}");
            }
        }
        if self.live
            && let Some(c) = p.census
        {
            eprint!(
                "\r\x1b[Ktransition ({}): {}/{} tasks switched, {:.1}s",
                p.target.as_str(),
                c.switched,
                c.total,
                p.elapsed.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
            self.live_line_open = true;
        }
        ControlFlow::Continue(())
    }

    fn census_interval(&self) -> Option<Duration> {
        self.live.then_some(Duration::from_millis(250))
    }
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let json = cli.json;
    match execute(cli) {
        Ok(code) => code,
        Err(failure) => {
            if json {
                print_json(&failure);
            } else {
                eprintln!("error: {}", failure.error);
            }
            failure.exit_code
        }
    }
}

#[derive(Debug, Serialize)]
struct Failure {
    simulation: bool,
    error: String,
    category: &'static str,
    exit_code: i32,
}

impl Failure {
    fn new(simulation: bool, e: &AgentError) -> Self {
        Self {
            simulation,
            error: e.to_string(),
            category: e.category(),
            exit_code: e.exit_code(),
        }
    }

    fn usage(message: String) -> Self {
        Self {
            simulation: false,
            error: message,
            category: "InvalidArgument",
            exit_code: exit_code::BAD_INPUT,
        }
    }
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode output as JSON: {e}"),
    }
}

fn execute(cli: Cli) -> Result<i32, Failure> {
    let json = cli.json;
    let kernel_spec = cli.kernel.clone();
    let open_kernel = || -> Result<Box<dyn Kernel>, Failure> {
        kernel::open(&kernel_spec).map_err(Failure::usage)
    };
    match cli.command {
        Command::Sim(cmd) => sim_command(cmd, json),
        #[cfg(feature = "cluster")]
        Command::Run(args) => Ok(crate::cluster::run_command(
            &kernel_spec,
            cli.state_dir,
            args,
        )),
        #[cfg(feature = "cluster")]
        Command::Exporter(args) => Ok(crate::exporter::run_command(
            &kernel_spec,
            cli.state_dir,
            args,
        )),
        command => {
            let kernel = open_kernel()?;
            let kind = kernel.kind();
            let simulation = kind.is_simulated();
            let state = cli
                .state_dir
                .clone()
                .map(StateDir::new)
                .unwrap_or_else(|| StateDir::default_for(&kind));
            let patcher = Patcher::new(kernel.as_ref(), state);
            let fail = |e: AgentError| Failure::new(simulation, &e);
            if simulation && !json {
                eprintln!("{}", render::simulation_banner(&kind));
            }
            match command {
                Command::Inspect { module, sha256 } => {
                    let report = inspect(&patcher, &module, sha256.as_deref()).map_err(fail)?;
                    emit(json, &report, render::inspect);
                    Ok(if report.loadable {
                        exit_code::OK
                    } else {
                        exit_code::BAD_INPUT
                    })
                }
                Command::Apply(a) => {
                    let opts = ApplyOptions {
                        sha256: a.sha256,
                        stall_after: a.stall_after,
                        signal_after: a.signal_after,
                        on_stall: a.on_stall.into(),
                        allow_force: a.allow_force,
                        timeout: a.timeout,
                        check: a.check,
                    };
                    let mut observer = CliObserver::new(json);
                    let out = patcher
                        .apply(&a.module, &opts, &mut observer)
                        .map_err(fail)?;
                    drop(observer);
                    finish(json, &out)
                }
                Command::Revert(r) => {
                    let opts = RevertOptions {
                        stall_after: r.stall_after,
                        timeout: r.timeout,
                        check: r.check,
                    };
                    let mut observer = CliObserver::new(json);
                    let out = patcher
                        .revert(&r.patch, &opts, &mut observer)
                        .map_err(fail)?;
                    drop(observer);
                    finish(json, &out)
                }
                Command::Status { patch } => {
                    let status = patcher.status(patch.as_deref()).map_err(fail)?;
                    emit(json, &status, |s| render::status(s, patch.as_deref()));
                    Ok(exit_code::OK)
                }
                Command::Blocking { patch } => {
                    let report = patcher.blocking(patch.as_deref()).map_err(fail)?;
                    emit(json, &report, render::blocking);
                    Ok(exit_code::OK)
                }
                #[cfg(feature = "cluster")]
                Command::Run(_) | Command::Exporter(_) => unreachable!("handled above"),
                Command::Sim(_) => unreachable!("handled above"),
            }
        }
    }
}

fn emit<T: Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) {
    if json {
        print_json(value);
    } else {
        print!("{}", human(value));
    }
}

fn finish(json: bool, out: &Outcome) -> Result<i32, Failure> {
    emit(json, out, render::outcome);
    Ok(out.exit_code)
}

/// What `inspect` prints.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub simulation: bool,
    #[serde(flatten)]
    pub module: ModuleInfo,
    pub running_kernel: String,
    pub loadable: bool,
    /// Why the agent would refuse it, when it would.
    pub refusal: Option<String>,
    pub modinfo: std::collections::BTreeMap<String, Vec<String>>,
}

fn inspect(
    patcher: &Patcher<'_>,
    path: &Path,
    sha256: Option<&str>,
) -> crate::error::Result<InspectReport> {
    let info = module_file::inspect_file(path, module_file::Digest::Compute)?;
    let release = patcher
        .kernel()
        .release()
        .map_err(|e| AgentError::kernel("reading the kernel release", e))?;
    let refusal = module_file::check_loadable(&info, &release, sha256)
        .err()
        .map(|e| e.to_string())
        .or_else(|| {
            // The kernel would refuse it (EKEYREJECTED); say so before anyone tries.
            (patcher.kernel().signatures_enforced() && !info.signed).then(|| {
                "this kernel enforces module signatures (module.sig_enforce) and the module \
                 is unsigned: sign it with a key the kernel trusts"
                    .to_string()
            })
        });
    Ok(InspectReport {
        simulation: patcher.kernel().kind().is_simulated(),
        modinfo: info.modinfo.clone(),
        module: info,
        running_kernel: release,
        loadable: refusal.is_none(),
        refusal,
    })
}

fn parse_errno(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Ok(n);
    }
    use nix::errno::Errno::*;
    let known = [
        EPERM,
        ENOENT,
        ENOEXEC,
        EEXIST,
        EBUSY,
        EINVAL,
        EKEYREJECTED,
        ENOMEM,
        EFAULT,
        ENOKEY,
    ];
    known
        .iter()
        .find(|e| format!("{e:?}") == text)
        .map(|e| *e as i32)
        .ok_or_else(|| {
            format!(
                "unknown errno {text:?}; use a number or one of {}",
                known
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn sim_command(cmd: SimCommand, json: bool) -> Result<i32, Failure> {
    let io = |e: std::io::Error| Failure::new(true, &AgentError::Simulation(e.to_string()));
    let open = |dir: &Path| sim::SimKernel::open(dir).map_err(io);
    let said = |value: serde_json::Value, human: String| {
        if json {
            print_json(&value);
        } else {
            println!("{human}");
        }
    };
    match cmd {
        SimCommand::Init {
            dir,
            release,
            tasks,
            like,
            no_livepatch,
            sig_enforce,
            signal_cycle,
        } => {
            let init = sim::SimInit {
                release,
                tasks,
                livepatch: !no_livepatch,
                sig_enforce,
                attributes: like.attributes(),
                signal_cycle,
            };
            let kernel = sim::SimKernel::init(&dir, &init).map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "dir": dir, "release": init.release}),
                format!(
                    "simulated kernel {} created in {} ({} tasks)",
                    init.release,
                    kernel.dir().display(),
                    tasks
                ),
            );
        }
        SimCommand::AddTask {
            dir,
            comm,
            kthread,
            sleeps_in,
            in_module,
            pod_uid,
            container_id,
            cgroup,
        } => {
            let task = open(&dir)?
                .add_task(sim::NewTask {
                    comm,
                    kthread,
                    sleeps_in,
                    sleeps_in_module: in_module,
                    cgroup,
                    pod: pod_uid.zip(container_id),
                })
                .map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "pid": task.pid, "comm": task.comm}),
                format!("simulated task {} added with pid {}", task.comm, task.pid),
            );
        }
        SimCommand::ReleaseTask { dir, comm } => {
            let n = open(&dir)?.release_task(&comm).map_err(io)?;
            if n == 0 {
                return Err(Failure::usage(format!(
                    "no simulated task is named {comm:?}"
                )));
            }
            said(
                serde_json::json!({"simulation": true, "released": n}),
                format!("released {n} task(s) named {comm}"),
            );
        }
        SimCommand::FailNextLoad { dir, errno, module } => {
            let errno = parse_errno(&errno).map_err(Failure::usage)?;
            open(&dir)?.fail_next_load(module, errno).map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "errno": errno}),
                format!("the next load will fail with errno {errno}"),
            );
        }
        SimCommand::Reboot { dir } => {
            let boot_id = open(&dir)?.reboot().map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "boot_id": boot_id}),
                format!("simulated kernel rebooted (boot id {boot_id})"),
            );
        }
        SimCommand::Log { dir } => {
            let log = open(&dir)?.log().map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "log": log}),
                log.join("\n"),
            );
        }
        SimCommand::BuildModule {
            name,
            release,
            patches,
            replace,
            transition_time,
            not_livepatch,
            srcversion,
            output,
        } => {
            if !module_file::is_valid_module_name(&name) {
                return Err(Failure::usage(format!(
                    "{name:?} is not a valid module name"
                )));
            }
            let mut spec = sim::SimModuleSpec {
                replace,
                transition_ms: Some(transition_time.as_millis() as u64),
                ..Default::default()
            };
            for p in &patches {
                let (object, func) = p.split_once(':').ok_or_else(|| {
                    Failure::usage(format!("--patches takes OBJECT:FUNCTION, got {p:?}"))
                })?;
                spec.objects
                    .entry(object.to_string())
                    .or_default()
                    .push(func.to_string());
            }
            let spec_json = serde_json::to_vec(&spec).expect("spec serialises");
            let srcversion = srcversion.unwrap_or_else(|| {
                module_file::sha256_hex(&[name.as_bytes(), &spec_json].concat())[..24]
                    .to_uppercase()
            });
            let mut modinfo = format!(
                "license=GPL\0description=Graft simulated livepatch\0name={name}\0vermagic={release} SMP preempt mod_unload modversions \0srcversion={srcversion}\0depends=\0"
            );
            if !not_livepatch {
                modinfo.insert_str(0, "livepatch=Y\0");
            }
            let elf = module_file::write_module_elf(&[
                (".modinfo", modinfo.as_bytes()),
                (module_file::SIM_SECTION, &spec_json),
            ]);
            std::fs::write(&output, &elf).map_err(io)?;
            said(
                serde_json::json!({"simulation": true, "path": output, "sha256": module_file::sha256_hex(&elf)}),
                format!(
                    "wrote simulated module {name} to {} (sha256 {})",
                    output.display(),
                    module_file::sha256_hex(&elf)
                ),
            );
        }
    }
    Ok(exit_code::OK)
}

/// Logs go to stderr so that stdout carries only the result (JSON or table).
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "warn");
}

/// Like [`init_logging`], with another default level (`GRAFT_LOG` still wins).
pub fn init_logging_at(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
