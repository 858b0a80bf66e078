//! What the scenarios assert with: bounded waits, the printer columns
//! `kubectl get` shows (read from the generated CRDs), conditions, Events,
//! API errors and the operator's metrics.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use graft_crds::generate::CrdFile;
use k8s_openapi::{api::events::v1::Event, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{Api, Client, api::ListParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often waits poll (reads only; the suite writes on state changes).
pub const POLL: Duration = Duration::from_millis(300);

/// One look at the cluster during a wait.
#[derive(Debug)]
pub enum Look<T> {
    /// The wait is over.
    Done(T),
    /// Not yet: what it looks like now (shown if the wait times out).
    Waiting(String),
}

/// Polls `probe` every [`POLL`] until it is done, or fails after `limit`
/// with what it last saw. An error from `probe` counts as "not yet" (the API
/// server may be briefly unavailable) and is shown if the wait times out.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Look<T>>>,
{
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(limit.max(Duration::from_secs(1)), probe()).await {
            Ok(Ok(Look::Done(value))) => return Ok(value),
            Ok(Ok(Look::Waiting(state))) => state,
            Ok(Err(error)) => format!("error: {error:#}"),
            Err(_) => "the probe itself did not answer in time".to_owned(),
        };
        if started.elapsed() >= limit {
            bail!(
                "timed out after {:.0}s waiting for {what}; last seen: {last}",
                limit.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `probe` stays true for `period` (polling); fails at the first
/// look where it does not.
pub async fn stays<F, Fut>(what: &str, period: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let started = Instant::now();
    while started.elapsed() < period {
        if let Some(violation) = probe().await? {
            bail!(
                "{what} stopped holding after {:.1}s: {violation}",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// A value at a simple JSONPath such as `.status.applied`.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(object, |value, key| value.get(key))
}

/// The row `kubectl get -o wide` prints for `object`, column name to cell,
/// from the printer columns of the generated CRD of `kind` (dates left out;
/// a missing value prints as `<none>`, as kubectl does).
pub fn printer_row(
    crds: &[CrdFile],
    kind: &str,
    object: &Value,
) -> Result<BTreeMap<String, String>> {
    let crd = crds
        .iter()
        .find(|f| f.crd.spec.names.kind == kind)
        .ok_or_else(|| anyhow!("no generated CRD for kind {kind}"))?;
    let version = crd
        .crd
        .spec
        .versions
        .iter()
        .find(|v| v.served)
        .ok_or_else(|| anyhow!("the {kind} CRD serves no version"))?;
    let mut row = BTreeMap::new();
    for column in version.additional_printer_columns.iter().flatten() {
        if column.type_ == "date" {
            continue;
        }
        let cell = match json_path(object, &column.json_path) {
            None | Some(Value::Null) => "<none>".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        row.insert(column.name.clone(), cell);
    }
    Ok(row)
}

/// Fails unless every `(column, value)` of `expected` is in `row`.
pub fn expect_row(
    what: &str,
    row: &BTreeMap<String, String>,
    expected: &[(&str, &str)],
) -> Result<()> {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(column, value)| row.get(*column).map(String::as_str) != Some(*value))
        .map(|(column, value)| {
            format!(
                "{column}={} (want {value})",
                row.get(*column).map_or("<missing column>", String::as_str)
            )
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        bail!(
            "kubectl get {what} shows {}; full row {row:?}",
            wrong.join(", ")
        )
    }
}

/// Whether `row` has every `(column, value)` of `expected`.
pub fn row_matches(row: &BTreeMap<String, String>, expected: &[(&str, &str)]) -> bool {
    expected
        .iter()
        .all(|(column, value)| row.get(*column).map(String::as_str) == Some(*value))
}

/// Fails unless the condition `type_` has `status` and `reason`, and
/// describes `generation`.
pub fn expect_condition(
    what: &str,
    conditions: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    generation: Option<i64>,
) -> Result<()> {
    let condition = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .ok_or_else(|| {
            anyhow!(
                "{what} has no {type_} condition (has {:?})",
                summary(conditions)
            )
        })?;
    if condition.status != status || condition.reason != reason {
        bail!(
            "{what}: condition {type_} is {}/{} (want {status}/{reason}): {}",
            condition.status,
            condition.reason,
            condition.message
        );
    }
    if generation.is_some() && condition.observed_generation != generation {
        bail!(
            "{what}: condition {type_} describes generation {:?}, the object is at {:?}",
            condition.observed_generation,
            generation
        );
    }
    Ok(())
}

/// Conditions as `Type=Status/Reason` strings, for messages.
pub fn summary(conditions: &[Condition]) -> Vec<String> {
    conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect()
}

/// One Event the operator published, as `kubectl events` would show it.
#[derive(Clone, Debug)]
pub struct SeenEvent {
    pub regarding_kind: String,
    pub regarding_name: String,
    pub related_name: Option<String>,
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub reporting_instance: String,
    /// How often it happened (the Recorder folds repeats into a series).
    pub count: i32,
}

/// The Events graft-operator published about objects whose names start
/// with `prefix` (Events about cluster-scoped objects live in `default`).
pub async fn operator_events(client: &Client, prefix: &str) -> Result<Vec<SeenEvent>> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = api
        .list(&ListParams::default())
        .await
        .context("listing Events in namespace default")?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(graft_crds::OPERATOR_FIELD_MANAGER))
        .filter_map(|e| {
            let regarding = e.regarding.as_ref()?;
            let name = regarding.name.clone()?;
            if !name.starts_with(prefix) {
                return None;
            }
            Some(SeenEvent {
                regarding_kind: regarding.kind.clone().unwrap_or_default(),
                regarding_name: name,
                related_name: e.related.as_ref().and_then(|r| r.name.clone()),
                type_: e.type_.clone().unwrap_or_default(),
                reason: e.reason.clone().unwrap_or_default(),
                note: e.note.clone().unwrap_or_default(),
                reporting_instance: e.reporting_instance.clone().unwrap_or_default(),
                count: e.series.as_ref().map_or(1, |s| s.count.max(1)),
            })
        })
        .collect())
}

/// How often an Event with this kind, name, reason and related object happened.
pub fn occurrences(
    events: &[SeenEvent],
    kind: &str,
    name: &str,
    reason: &str,
    related: Option<&str>,
) -> i32 {
    events
        .iter()
        .filter(|e| e.regarding_kind == kind && e.regarding_name == name && e.reason == reason)
        .filter(|e| related.is_none() || e.related_name.as_deref() == related)
        .map(|e| e.count)
        .sum()
}

/// Events as short strings, for messages.
pub fn describe(events: &[SeenEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}/{} {}{} x{}",
                e.type_,
                e.regarding_kind,
                e.regarding_name,
                e.reason,
                e.related_name
                    .as_deref()
                    .map(|r| format!(" (related {r})"))
                    .unwrap_or_default(),
                e.count
            )
        })
        .collect()
}

/// The status of a refused API request: code and message.
pub fn api_refusal<T: std::fmt::Debug>(result: &kube::Result<T>) -> Option<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Some((status.code, status.message.clone())),
        _ => None,
    }
}

/// `GET path` over plain HTTP/1.1; returns the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// The value of an unlabelled metric in Prometheus text, e.g. `graft_operator_leader`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_rows_follow_the_generated_columns() {
        let crds = graft_crds::generate::crd_files();
        let lp = json!({
            "spec": {"desiredState": "Enabled"},
            "status": {"applied": 5, "targeted": 5, "stalled": 0, "failed": 0,
                        "transitioning": 0, "pending": 0, "notApplicable": 1},
        });
        let row = printer_row(&crds, "LivePatch", &lp).unwrap();
        expect_row(
            "lp x",
            &row,
            &[
                ("Applied", "5"),
                ("Targeted", "5"),
                ("Desired", "Enabled"),
                ("NotApplicable", "1"),
            ],
        )
        .unwrap();
        assert!(!row.contains_key("Age"), "dates are left out: {row:?}");
        let err = expect_row("lp x", &row, &[("Applied", "4")]).unwrap_err();
        assert!(err.to_string().contains("Applied=5 (want 4)"), "{err}");

        let lpn = json!({"status": {"kernelRelease": "6.1.0", "simulated": true}});
        let row = printer_row(&crds, "LivePatchNode", &lpn).unwrap();
        assert_eq!(row["Kernel"], "6.1.0");
        assert_eq!(row["Simulated"], "true");
        assert_eq!(row["Agent"], "<none>");
    }

    #[test]
    fn metric_values_are_found_by_exact_name() {
        let text =
            "# HELP graft_operator_leader x\ngraft_operator_leader 1\ngraft_operator_leader_x 7\n";
        assert_eq!(metric_value(text, "graft_operator_leader"), Some(1.0));
        assert_eq!(metric_value(text, "graft_missing"), None);
    }
}
