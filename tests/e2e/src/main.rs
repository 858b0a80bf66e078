//! `graft-e2e`: Graft's end-to-end suite against a real Kubernetes API server.
//!
//! Run it with `tests/e2e/run.sh`, which builds graft-operator, graft-agent
//! and this binary first. It touches a cluster only when `GRAFT_E2E=1` is
//! set, and then the one `KUBECONFIG` names (else `~/.kube/config`); without
//! it, it says it skipped and exits 0.
//!
//! The cluster needs nothing but its API server (kind, k3d, any test
//! cluster): the suite installs the CRDs from the generator, creates Node
//! objects for simulated nodes, and runs one graft-operator and one
//! `graft-agent run --kernel sim:DIR` per node on this machine. Everything
//! it creates carries the label `graft.dev/e2e=<run id>` and is deleted at
//! the end, also after a failure, a panic or Ctrl-C.
//!
//! Output: one line per scenario on stdout and `N passed, N failed`;
//! progress and failure details on stderr. Exit status 1 when anything
//! failed, 2 on bad usage.

mod chart;
mod checks;
mod env;
mod procs;
mod sampler;
mod scenarios;

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use env::Env;
use scenarios::Scenario;

const USAGE: &str = "\
usage: graft-e2e [SCENARIO...]     run these scenarios (numbers 1-9; default: all)
       graft-e2e --list            list the scenarios
       graft-e2e cleanup [RUN_ID]  delete what a run left behind (all runs' objects without RUN_ID)

Runs only with GRAFT_E2E=1, against the cluster KUBECONFIG names. See tests/e2e/run.sh.

Environment:
  GRAFT_E2E=1              required to touch any cluster
  KUBECONFIG               the cluster (else ~/.kube/config)
  GRAFT_E2E_RUN_ID         run ID (label value and name prefix; default: random)
  GRAFT_E2E_WORKDIR        simulated kernels, modules, logs (default: $TMPDIR/graft-e2e-<run id>)
  GRAFT_E2E_AGENT_BIN      graft-agent (default: next to this binary)
  GRAFT_E2E_OPERATOR_BIN   graft-operator (default: next to this binary)
  GRAFT_E2E_HELM_PYTHON    a Python with helm-python-sdk, to render the chart (scenario 9)";

/// Longest the scenarios may take together (each has its own limit too; a
/// passing run takes a few minutes).
const SUITE_BUDGET: Duration = Duration::from_secs(20 * 60);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    List,
    Cleanup(Option<String>),
    Run(Vec<u8>),
}

fn parse(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("--list") => Ok(Command::List),
        Some("cleanup") => match &args[1..] {
            [] => Ok(Command::Cleanup(None)),
            [id] if env::valid_run_id(id) => Ok(Command::Cleanup(Some(id.clone()))),
            [id] => Err(format!(
                "{id:?} is not a run ID (1 to 10 lowercase letters or digits)"
            )),
            _ => Err("cleanup takes at most one run ID".into()),
        },
        _ => {
            let mut numbers = Vec::new();
            for arg in args {
                match arg.parse::<u8>() {
                    Ok(n @ 1..=9) if !numbers.contains(&n) => numbers.push(n),
                    Ok(1..=9) => {}
                    _ => return Err(format!("{arg:?} is not a scenario number (1-9)")),
                }
            }
            numbers.sort_unstable();
            Ok(Command::Run(numbers))
        }
    }
}

fn skip_message() -> String {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| "<unset>".into());
    format!(
        "graft-e2e: SKIPPED: GRAFT_E2E is not 1. The end-to-end suite creates and deletes objects in a \
         Kubernetes cluster, so it runs only when asked: GRAFT_E2E=1 KUBECONFIG=<cluster> tests/e2e/run.sh \
         (KUBECONFIG is {kubeconfig})."
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("graft-e2e: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Command::List => {
            for s in scenarios::all() {
                println!("{} {}", s.number, s.title);
            }
            return ExitCode::SUCCESS;
        }
        Command::Cleanup(_) | Command::Run(_) => {}
    }
    if std::env::var("GRAFT_E2E").ok().as_deref() != Some("1") {
        println!("{}", skip_message());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("graft-e2e: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match command {
        Command::Cleanup(id) => runtime.block_on(cleanup_command(id)),
        Command::Run(numbers) => runtime.block_on(run(numbers)),
        Command::Help | Command::List => ExitCode::SUCCESS,
    };
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

/// The result of one scenario.
struct Outcome {
    number: u8,
    title: &'static str,
    seconds: f64,
    failure: Option<String>,
}

fn print_outcome(outcome: &Outcome) {
    match &outcome.failure {
        None => println!(
            "scenario {}: PASS  {} ({:.1}s)",
            outcome.number, outcome.title, outcome.seconds
        ),
        Some(reason) => println!(
            "scenario {}: FAIL  {} ({:.1}s): {}",
            outcome.number,
            outcome.title,
            outcome.seconds,
            reason.lines().next().unwrap_or_default()
        ),
    }
}

fn print_summary(outcomes: &[Outcome]) -> ExitCode {
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every selected scenario as failed for `reason` (nothing could run).
fn all_failed(selected: &[Scenario], reason: &str) -> ExitCode {
    eprintln!("graft-e2e: FAILED before any scenario ran: {reason}");
    let outcomes: Vec<Outcome> = selected
        .iter()
        .map(|s| Outcome {
            number: s.number,
            title: s.title,
            seconds: 0.0,
            failure: Some(format!(
                "not run: {}",
                reason.lines().next().unwrap_or_default()
            )),
        })
        .collect();
    outcomes.iter().for_each(print_outcome);
    print_summary(&outcomes)
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(numbers: Vec<u8>) -> ExitCode {
    let selected: Vec<Scenario> = scenarios::all()
        .into_iter()
        .filter(|s| numbers.is_empty() || numbers.contains(&s.number))
        .collect();
    let (client, url, version) = match env::connect().await {
        Ok(connected) => connected,
        Err(error) => return all_failed(&selected, &format!("no cluster: {error:#}")),
    };
    let run_id = match env::run_id_from_env() {
        Ok(id) => id,
        Err(error) => return all_failed(&selected, &format!("{error:#}")),
    };
    let env = match Env::new(client, url, version, run_id) {
        Ok(env) => Arc::new(env),
        Err(error) => return all_failed(&selected, &format!("{error:#}")),
    };
    eprintln!(
        "graft-e2e: run {} against {} (Kubernetes {}); label {}; namespace {}; work dir {}",
        env.run_id,
        env.cluster_url,
        env.server_version,
        env.selector(),
        env.namespace,
        env.workdir.display()
    );

    let mut stop = Box::pin(interrupted());
    let mut outcomes = Vec::new();
    let setup = tokio::select! {
        result = async {
            env.setup().await?;
            env.ensure_single_operator().await
        } => result.map_err(|e| format!("setting up: {e:#}")),
        () = &mut stop => Err("interrupted".to_owned()),
    };
    match setup {
        Err(reason) => {
            eprintln!("graft-e2e: {reason}");
            for s in &selected {
                outcomes.push(Outcome {
                    number: s.number,
                    title: s.title,
                    seconds: 0.0,
                    failure: Some(format!(
                        "not run: {}",
                        reason.lines().next().unwrap_or_default()
                    )),
                });
            }
        }
        Ok(()) => {
            let mut stopped = false;
            let suite_started = Instant::now();
            for scenario in &selected {
                let skip = if stopped {
                    Some("not run: interrupted".to_owned())
                } else if suite_started.elapsed() + scenario.limit > SUITE_BUDGET {
                    Some(format!(
                        "not run: the suite's {}-minute budget would be exceeded",
                        SUITE_BUDGET.as_secs() / 60
                    ))
                } else {
                    None
                };
                if let Some(reason) = skip {
                    let outcome = Outcome {
                        number: scenario.number,
                        title: scenario.title,
                        seconds: 0.0,
                        failure: Some(reason),
                    };
                    print_outcome(&outcome);
                    outcomes.push(outcome);
                    continue;
                }
                eprintln!(
                    "graft-e2e: scenario {}: {}",
                    scenario.number, scenario.title
                );
                let started = Instant::now();
                let failure = tokio::select! {
                    failure = run_one(&env, scenario) => failure,
                    () = &mut stop => {
                        stopped = true;
                        Some("interrupted".to_owned())
                    }
                };
                if let Some(reason) = &failure {
                    eprintln!("  scenario {} failed: {reason}", scenario.number);
                    eprintln!(
                        "  logs of the operator and agents: {}",
                        env.workdir.join("logs").display()
                    );
                }
                let outcome = Outcome {
                    number: scenario.number,
                    title: scenario.title,
                    seconds: started.elapsed().as_secs_f64(),
                    failure,
                };
                print_outcome(&outcome);
                outcomes.push(outcome);
            }
        }
    }

    eprintln!("graft-e2e: cleaning up (label {})", env.selector());
    let errors = match tokio::time::timeout(Duration::from_secs(180), env.cleanup()).await {
        Ok(errors) => errors,
        Err(_) => vec!["the cleanup did not finish within 180s".to_owned()],
    };
    if !errors.is_empty() {
        eprintln!(
            "graft-e2e: the cleanup left things behind (run `GRAFT_E2E=1 graft-e2e cleanup {}`):",
            env.run_id
        );
        for error in &errors {
            eprintln!("  {error}");
        }
        outcomes.push(Outcome {
            number: 0,
            title: "cleanup",
            seconds: 0.0,
            failure: Some(errors.join("; ")),
        });
        println!("cleanup: FAIL  {}", errors.join("; "));
    }
    print_summary(&outcomes)
}

/// Runs one scenario in its own task (a panic fails it, not the suite),
/// within its time limit; returns why it failed.
async fn run_one(env: &Arc<Env>, scenario: &Scenario) -> Option<String> {
    if let Err(error) = env.ensure_single_operator().await {
        return Some(format!("could not start the operator: {error:#}"));
    }
    let task = tokio::spawn((scenario.run)(env.clone()));
    // Aborted when this future is dropped too (Ctrl-C): the cleanup must not
    // race a scenario that still creates things.
    let abort = AbortOnDrop(task.abort_handle());
    match tokio::time::timeout(scenario.limit, task).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(error))) => Some(format!("{error:#}")),
        Ok(Err(join)) if join.is_panic() => {
            let panic = join.into_panic();
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Some(format!("panicked: {text}"))
        }
        Ok(Err(join)) => Some(format!("its task failed: {join}")),
        Err(_) => {
            abort.0.abort();
            Some(format!(
                "did not finish within {}s",
                scenario.limit.as_secs()
            ))
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn cleanup_command(run_id: Option<String>) -> ExitCode {
    let (client, url, _) = match env::connect().await {
        Ok(connected) => connected,
        Err(error) => {
            eprintln!("graft-e2e cleanup: FAILED: no cluster: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let (selector, prefix) = match &run_id {
        Some(id) => (format!("{}={id}", env::LABEL), format!("e2e-{id}-")),
        None => (env::LABEL.to_owned(), "e2e-".to_owned()),
    };
    eprintln!("graft-e2e cleanup: deleting objects labelled {selector} at {url}");
    let errors = env::cleanup_by_label(&client, &selector, &prefix, None).await;
    if errors.is_empty() {
        println!("cleanup of {selector}: done");
        ExitCode::SUCCESS
    } else {
        for error in &errors {
            eprintln!("  {error}");
        }
        println!("cleanup of {selector}: {} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scenario_numbers_select_scenarios() {
        assert_eq!(parse(&args(&[])), Ok(Command::Run(vec![])));
        assert_eq!(parse(&args(&["3", "1", "3"])), Ok(Command::Run(vec![1, 3])));
        assert!(parse(&args(&["10"])).is_err());
        assert!(parse(&args(&["x"])).is_err());
        assert_eq!(parse(&args(&["cleanup"])), Ok(Command::Cleanup(None)));
        assert_eq!(
            parse(&args(&["cleanup", "abc123"])),
            Ok(Command::Cleanup(Some("abc123".into())))
        );
        assert_eq!(parse(&args(&["--list"])), Ok(Command::List));
    }

    #[test]
    fn every_scenario_of_the_issue_is_listed_once() {
        let numbers: Vec<u8> = scenarios::all().iter().map(|s| s.number).collect();
        assert_eq!(numbers, (1..=9).collect::<Vec<_>>());
        let total: Duration = scenarios::all().iter().map(|s| s.limit).sum();
        assert!(total <= Duration::from_secs(25 * 60), "{total:?}");
    }
}
