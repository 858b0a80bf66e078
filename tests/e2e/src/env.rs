//! The test environment: the cluster connection, the run's label and
//! namespace, the CRDs, simulated nodes (Node objects plus simulated
//! kernels), the graft-operator and graft-agent processes, and the cleanup
//! of everything the run created.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex as StdMutex,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use graft_crds::{LivePatch, LivePatchNode, generate::CrdFile};
use k8s_openapi::{
    api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        core::v1::{Namespace, Node, Pod},
        events::v1::Event,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::{
    checks::{Look, eventually},
    procs::{self, Proc},
};

/// The label every object the suite creates carries; its value is the run ID.
pub const LABEL: &str = "graft.dev/e2e";
/// The label that says which scenario a Node belongs to (`s1` … `s9`).
pub const SCENARIO_LABEL: &str = "graft.dev/e2e-scenario";
/// Field manager of the suite's own writes.
pub const FIELD_MANAGER: &str = "graft-e2e";
/// The kernel release of most simulated nodes.
pub const RELEASE: &str = "6.1.0-e2e-amd64";
/// Longest single API call of the suite.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A simulated node: a Node object and a simulated kernel in `dir`.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub name: String,
    pub dir: PathBuf,
    pub release: String,
}

/// How to make a simulated node.
#[derive(Clone, Debug)]
pub struct NodeOpts<'a> {
    pub suffix: &'a str,
    pub zone: Option<&'a str>,
    pub release: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    /// False: a kernel without livepatch support.
    pub livepatch: bool,
}

impl<'a> NodeOpts<'a> {
    /// A livepatch-capable node on [`RELEASE`] without a zone.
    pub fn new(suffix: &'a str) -> Self {
        Self {
            suffix,
            zone: None,
            release: RELEASE,
            labels: Vec::new(),
            livepatch: true,
        }
    }
}

/// A module file the simulated kernels understand.
#[derive(Clone, Debug)]
pub struct Module {
    /// Module (and sysfs patch) name.
    pub name: String,
    /// Absolute path (a `hostPath` source: the agents run on this machine).
    pub path: String,
    pub sha256: String,
    pub release: String,
}

/// Everything the scenarios share.
pub struct Env {
    pub client: Client,
    pub run_id: String,
    /// The run's throw-away namespace (Lease, agent ServiceAccount, Pods).
    pub namespace: String,
    pub workdir: PathBuf,
    pub agent_bin: PathBuf,
    pub operator_bin: PathBuf,
    pub repo_root: PathBuf,
    /// A Python with helm-python-sdk, for rendering the chart (scenario 9).
    pub helm_python: Option<PathBuf>,
    /// `gitVersion` of the API server.
    pub server_version: String,
    pub cluster_url: String,
    /// The CRDs as the generator makes them (installed, and read for printer columns).
    pub crds: Vec<CrdFile>,
    pid_file: PathBuf,
    lpns_before: StdMutex<Option<BTreeSet<String>>>,
    procs: Mutex<BTreeMap<String, Proc>>,
}

/// Runs one API call with a time limit.
pub async fn within<T>(what: &str, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: no answer within {}s", CALL_LIMIT.as_secs()),
    }
}

/// Whether `id` can be a run ID (a label value and a name part).
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 10
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A new run ID: 6 lowercase hex digits.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = Sha256::digest(format!("{nanos}-{}", std::process::id()));
    hex::encode(&digest[..3])
}

/// The run ID from `GRAFT_E2E_RUN_ID`, or a new one.
pub fn run_id_from_env() -> Result<String> {
    match std::env::var("GRAFT_E2E_RUN_ID") {
        Ok(id) if valid_run_id(&id) => Ok(id),
        Ok(id) => bail!("GRAFT_E2E_RUN_ID={id:?}: use 1 to 10 lowercase letters or digits"),
        Err(_) => Ok(new_run_id()),
    }
}

fn binary(var: &str, name: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("the suite's own path has no directory"))?
            .join(name),
    };
    if !path.is_file() {
        bail!(
            "{name} not found at {} (set {var}, or build it: cargo build -p {}; tests/e2e/run.sh does)",
            path.display(),
            if name == "graft-agent" {
                "graft-agent"
            } else {
                "graft-operator"
            }
        );
    }
    Ok(path)
}

/// Connects to the cluster KUBECONFIG names (or `~/.kube/config`), checking
/// that the API server answers. Returns the client, its URL and the server's version.
pub async fn connect() -> Result<(Client, String, String)> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow!(
            "no Kubernetes client configuration ({e}); set KUBECONFIG to the cluster to test \
             (KUBECONFIG={})",
            std::env::var("KUBECONFIG").unwrap_or_else(|_| "<unset>".into())
        )
    })?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("graft-e2e/", env!("CARGO_PKG_VERSION"))),
    ));
    config.connect_timeout = Some(Duration::from_secs(10));
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    let version =
        match tokio::time::timeout(Duration::from_secs(20), client.apiserver_version()).await {
            Ok(Ok(info)) => info.git_version,
            Ok(Err(e)) => bail!("the API server at {url} does not answer: {e}"),
            Err(_) => bail!("the API server at {url} does not answer within 20s"),
        };
    Ok((client, url, version))
}

impl Env {
    /// The environment of one run (nothing is created yet).
    pub fn new(
        client: Client,
        cluster_url: String,
        server_version: String,
        run_id: String,
    ) -> Result<Self> {
        let repo_root = match std::env::var_os("GRAFT_E2E_REPO_ROOT") {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        };
        let workdir = match std::env::var_os("GRAFT_E2E_WORKDIR") {
            Some(path) => PathBuf::from(path),
            None => std::env::temp_dir().join(format!("graft-e2e-{run_id}")),
        };
        for sub in ["nodes", "modules", "logs"] {
            std::fs::create_dir_all(workdir.join(sub))
                .with_context(|| format!("creating {}", workdir.join(sub).display()))?;
        }
        let workdir = workdir.canonicalize()?;
        let pid_file = workdir.join("children.pids");
        procs::new_pid_file(&pid_file)?;
        Ok(Self {
            client,
            namespace: format!("graft-e2e-{run_id}"),
            run_id,
            workdir,
            agent_bin: binary("GRAFT_E2E_AGENT_BIN", "graft-agent")?,
            operator_bin: binary("GRAFT_E2E_OPERATOR_BIN", "graft-operator")?,
            repo_root: repo_root.canonicalize().unwrap_or(repo_root),
            helm_python: std::env::var_os("GRAFT_E2E_HELM_PYTHON").map(PathBuf::from),
            server_version,
            cluster_url,
            crds: graft_crds::generate::crd_files(),
            pid_file,
            lpns_before: StdMutex::new(None),
            procs: Mutex::new(BTreeMap::new()),
        })
    }

    /// `graft.dev/e2e=<run id>`.
    pub fn selector(&self) -> String {
        format!("{LABEL}={}", self.run_id)
    }

    /// The labels of an object the suite creates.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(LABEL.to_owned(), self.run_id.clone())])
    }

    /// The prefix of every name of this run (`e2e-<run id>-`).
    pub fn prefix(&self) -> String {
        format!("e2e-{}-", self.run_id)
    }

    // --- setup --------------------------------------------------------------

    /// Creates the namespace, installs the CRDs from the generator, and
    /// refuses a cluster where someone else's LivePatches exist.
    pub async fn setup(&self) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                labels: Some(self.labels()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        within(
            &format!("creating namespace {}", self.namespace),
            namespaces.create(&self.post_params(), &namespace),
        )
        .await?;
        self.install_crds().await?;

        let live_patches: Api<LivePatch> = Api::all(self.client.clone());
        let existing = within(
            "listing LivePatches",
            live_patches.list(&ListParams::default()),
        )
        .await?;
        let foreign: Vec<String> = existing
            .items
            .iter()
            .filter(|lp| !lp.labels().contains_key(LABEL))
            .map(|lp| lp.name_any())
            .collect();
        if !foreign.is_empty() {
            bail!(
                "this cluster already has LivePatches that are not the suite's ({}): another Graft may be \
                 running here and would act on the test nodes too; run the suite on a throw-away cluster",
                foreign.join(", ")
            );
        }
        let leftovers: Vec<String> = existing.items.iter().map(|lp| lp.name_any()).collect();
        if !leftovers.is_empty() {
            eprintln!(
                "note: LivePatches of earlier e2e runs are still there ({}); `tests/e2e/run.sh cleanup` removes them",
                leftovers.join(", ")
            );
        }
        let lpns: Api<LivePatchNode> = Api::all(self.client.clone());
        let before = within("listing LivePatchNodes", lpns.list(&ListParams::default())).await?;
        let agents: Vec<String> = before
            .items
            .iter()
            .filter(|o| !o.name_any().starts_with("e2e-"))
            .filter(|o| o.status.as_ref().is_some_and(|s| s.agent_version.is_some()))
            .map(|o| o.name_any())
            .collect();
        if !agents.is_empty() {
            bail!(
                "Graft agents have reported in this cluster (LivePatchNode {} has an agent's status): an \
                 installed Graft would act on the test's objects too; run the suite on a cluster without Graft \
                 (or delete those LivePatchNodes if they are left over from an uninstalled Graft)",
                agents.join(", ")
            );
        }
        *self.lpns_before.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(before.items.iter().map(|o| o.name_any()).collect());
        Ok(())
    }

    async fn install_crds(&self) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for file in &self.crds {
            let name = file.crd.metadata.name.clone().unwrap_or_default();
            let existing = within(&format!("reading CRD {name}"), api.get_opt(&name)).await?;
            let mut body = serde_json::to_value(&file.crd)?;
            body["apiVersion"] = json!("apiextensions.k8s.io/v1");
            body["kind"] = json!("CustomResourceDefinition");
            if existing.is_none() {
                // Created by the suite: labelled, so the cleanup removes it.
                body["metadata"]["labels"] = json!(self.labels());
            } else {
                eprintln!(
                    "note: CRD {name} exists already; the suite applies this checkout's schema to it and keeps it afterwards"
                );
            }
            within(
                &format!("applying CRD {name}"),
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                ),
            )
            .await?;
        }
        for file in &self.crds {
            let name = file.crd.metadata.name.clone().unwrap_or_default();
            eventually(
                &format!("CRD {name} to be Established"),
                Duration::from_secs(60),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await?;
                        let established = crd
                            .status
                            .iter()
                            .flat_map(|s| s.conditions.iter().flatten())
                            .any(|c| c.type_ == "Established" && c.status == "True");
                        Ok(if established {
                            Look::Done(())
                        } else {
                            Look::Waiting("not Established".into())
                        })
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    pub fn post_params(&self) -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        }
    }

    pub fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    // --- simulated kernels and modules -----------------------------------------

    /// Runs `graft-agent sim ARGS`; returns its stdout.
    pub async fn sim(&self, args: &[&str]) -> Result<String> {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(&self.agent_bin)
                .arg("sim")
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("graft-agent sim {} did not finish in 30s", args.join(" ")))??;
        if !output.status.success() {
            bail!(
                "graft-agent sim {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Builds a livepatch module for the simulated kernels that replaces `function`.
    pub async fn build_module(
        &self,
        name: &str,
        release: &str,
        function: &str,
        transition: &str,
    ) -> Result<Module> {
        let path = self
            .workdir
            .join("modules")
            .join(format!("{name}-{release}.ko"));
        let path_text = path.to_string_lossy().into_owned();
        self.sim(&[
            "build-module",
            "--name",
            name,
            "--release",
            release,
            "--patches",
            &format!("vmlinux:{function}"),
            "--transition-time",
            transition,
            "-o",
            &path_text,
        ])
        .await?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading {path_text}"))?;
        Ok(Module {
            name: name.to_owned(),
            path: path_text,
            sha256: hex::encode(Sha256::digest(&bytes)),
            release: release.to_owned(),
        })
    }

    /// The simulated kernel's state file (`DIR/kernel.json`, documented).
    pub fn kernel_state(dir: &Path) -> Result<Value> {
        let path = dir.join("kernel.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The simulated kernel's boot ID.
    pub fn boot_id(dir: &Path) -> Result<String> {
        Self::kernel_state(dir)?["boot_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{}: no boot_id", dir.display()))
    }

    /// How many patching transitions of `module` completed on this boot (kernel log lines).
    pub fn completed_patchings(dir: &Path, module: &str) -> Result<usize> {
        let needle = format!("'{module}': patching complete");
        Ok(Self::kernel_state(dir)?["log"]
            .as_array()
            .map_or(0, |lines| {
                lines
                    .iter()
                    .filter(|l| l.as_str().is_some_and(|l| l.contains(&needle)))
                    .count()
            }))
    }

    /// Whether `module` is loaded in the simulated kernel, and whether its patch is enabled.
    pub fn module_state(dir: &Path, module: &str) -> Result<(bool, bool)> {
        let state = Self::kernel_state(dir)?;
        let entry = &state["modules"][module];
        let loaded = !entry.is_null();
        let enabled = entry["patch"]["enabled"].as_bool().unwrap_or(false);
        Ok((loaded, enabled))
    }

    // --- nodes ------------------------------------------------------------------

    /// A Node name of scenario `scenario`.
    pub fn node_name(&self, scenario: u8, suffix: &str) -> String {
        format!("{}s{scenario}-{suffix}", self.prefix())
    }

    /// Makes a simulated node of `scenario`: a simulated kernel, and a Node
    /// object with the run's labels, `kubernetes.io/os=linux`, the zone, and
    /// `status.nodeInfo` (kernel release, boot ID) written to the status
    /// subresource as a kubelet would.
    pub async fn add_node(&self, scenario: u8, opts: NodeOpts<'_>) -> Result<SimNode> {
        let name = self.node_name(scenario, opts.suffix);
        let dir = self.workdir.join("nodes").join(&name);
        let dir_text = dir.to_string_lossy().into_owned();
        let mut init = vec![
            "init",
            &dir_text,
            "--release",
            opts.release,
            "--tasks",
            "12",
        ];
        if !opts.livepatch {
            init.push("--no-livepatch");
        }
        self.sim(&init).await?;
        let boot_id = Self::boot_id(&dir)?;

        let mut labels = self.labels();
        labels.insert(SCENARIO_LABEL.into(), format!("s{scenario}"));
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        if let Some(zone) = opts.zone {
            labels.insert("topology.kubernetes.io/zone".into(), zone.into());
        }
        for (key, value) in &opts.labels {
            labels.insert((*key).into(), (*value).into());
        }
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        within(
            &format!("creating Node {name}"),
            nodes.create(&self.post_params(), &node),
        )
        .await?;
        let machine = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
        let status = json!({
            "status": {
                "nodeInfo": {
                    "machineID": machine,
                    "systemUUID": machine,
                    "bootID": boot_id,
                    "kernelVersion": opts.release,
                    "osImage": "Graft e2e simulated node (no kubelet)",
                    "containerRuntimeVersion": "none://0",
                    "kubeletVersion": self.server_version,
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                }
            }
        });
        within(
            &format!("writing the status of Node {name}"),
            nodes.patch_status(&name, &self.patch_params(), &Patch::Merge(&status)),
        )
        .await?;
        Ok(SimNode {
            name,
            dir,
            release: opts.release.to_owned(),
        })
    }

    /// Sets `status.nodeInfo.bootID`, as the kubelet does after a reboot.
    pub async fn set_node_boot_id(&self, node: &str, boot_id: &str) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        within(
            &format!("writing the boot ID of Node {node}"),
            nodes.patch_status(
                node,
                &self.patch_params(),
                &Patch::Merge(json!({"status": {"nodeInfo": {"bootID": boot_id}}})),
            ),
        )
        .await?;
        Ok(())
    }

    // --- processes --------------------------------------------------------------

    fn log_path(&self, key: &str) -> PathBuf {
        self.workdir
            .join("logs")
            .join(format!("{}.log", key.replace('/', "_")))
    }

    async fn spawn(
        &self,
        key: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &OsStr)],
    ) -> Result<()> {
        let mut procs = self.procs.lock().await;
        if let Some(mut old) = procs.remove(key)
            && old.exited().is_none()
        {
            procs.insert(key.to_owned(), old);
            bail!("{key} is already running");
        }
        let proc = Proc::spawn(key, program, args, env, self.log_path(key), &self.pid_file)?;
        procs.insert(key.to_owned(), proc);
        Ok(())
    }

    /// Starts a graft-operator as `key` (`operator` is the suite's shared
    /// one) with `extra` flags; returns its admin address.
    pub async fn start_operator(&self, key: &str, extra: &[String]) -> Result<SocketAddr> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = vec!["--listen".to_owned(), addr.to_string()];
        args.extend_from_slice(extra);
        self.spawn(key, &self.operator_bin.clone(), &args, &[])
            .await?;
        Ok(addr)
    }

    /// Makes sure exactly the suite's shared operator runs (a scenario that
    /// failed half-way may have left it stopped, or extra replicas running).
    pub async fn ensure_single_operator(&self) -> Result<()> {
        let extra: Vec<String> = {
            let mut procs = self.procs.lock().await;
            let stale = procs
                .get_mut("operator")
                .is_some_and(|p| p.exited().is_some());
            if stale {
                procs.remove("operator");
            }
            procs
                .keys()
                .filter(|k| k.starts_with("operator/"))
                .cloned()
                .collect()
        };
        for key in extra {
            self.stop(&key).await?;
        }
        if !self.procs.lock().await.contains_key("operator") {
            self.start_operator("operator", &[]).await?;
        }
        Ok(())
    }

    /// Starts `graft-agent run` for `node` on its simulated kernel, as the
    /// suite's admin identity, or with `kubeconfig` when given.
    pub async fn start_agent_as(
        &self,
        key: &str,
        node_name: &str,
        dir: &Path,
        kubeconfig: Option<&Path>,
    ) -> Result<()> {
        let args = vec![
            "--kernel".to_owned(),
            format!("sim:{}", dir.display()),
            "run".to_owned(),
            "--node-name".to_owned(),
            node_name.to_owned(),
            "--namespace".to_owned(),
            self.namespace.clone(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        let env: Vec<(&str, &OsStr)> = kubeconfig
            .map(|path| vec![("KUBECONFIG", path.as_os_str())])
            .unwrap_or_default();
        self.spawn(key, &self.agent_bin.clone(), &args, &env).await
    }

    /// Starts the agent of `node` (key `agent/<node>`).
    pub async fn start_agent(&self, node: &SimNode) -> Result<()> {
        self.start_agent_as(&agent_key(&node.name), &node.name, &node.dir, None)
            .await
    }

    /// SIGKILLs the process `key`.
    pub async fn kill(&self, key: &str) -> Result<()> {
        let proc = self.procs.lock().await.remove(key);
        match proc {
            Some(proc) => {
                proc.kill().await;
                Ok(())
            }
            None => bail!("{key} is not running"),
        }
    }

    /// Stops the process `key` with SIGTERM (SIGKILL after 10 s).
    pub async fn stop(&self, key: &str) -> Result<()> {
        let proc = self.procs.lock().await.remove(key);
        match proc {
            Some(proc) => {
                proc.stop(Duration::from_secs(10)).await;
                Ok(())
            }
            None => bail!("{key} is not running"),
        }
    }

    /// What process `key` logged so far.
    pub async fn log_of(&self, key: &str) -> String {
        match self.procs.lock().await.get(key) {
            Some(proc) => proc.log_text(),
            None => std::fs::read_to_string(self.log_path(key)).unwrap_or_default(),
        }
    }

    /// Processes that exited although nobody stopped them (for failure messages).
    pub async fn exited_processes(&self) -> Vec<String> {
        let mut procs = self.procs.lock().await;
        procs
            .values_mut()
            .filter_map(|p| {
                let status = p.exited()?;
                Some(format!(
                    "{} exited ({status}); log {}",
                    p.name,
                    p.log.display()
                ))
            })
            .collect()
    }

    /// Stops every process (SIGTERM, then SIGKILL).
    pub async fn stop_all(&self) {
        let procs: Vec<Proc> = std::mem::take(&mut *self.procs.lock().await)
            .into_values()
            .collect();
        futures::future::join_all(procs.into_iter().map(|p| p.stop(Duration::from_secs(5)))).await;
    }

    // --- cleanup ----------------------------------------------------------------

    /// Deletes what this run created (everything labelled with its ID), after
    /// stopping its processes. Returns what could not be cleaned up.
    pub async fn cleanup(&self) -> Vec<String> {
        self.stop_all().await;
        let lpns_before = self
            .lpns_before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        cleanup_by_label(
            &self.client,
            &self.selector(),
            &self.prefix(),
            lpns_before.as_ref(),
        )
        .await
    }
}

/// The process key of the agent of `node`.
pub fn agent_key(node: &str) -> String {
    format!("agent/{node}")
}

/// Deletes every object `selector` matches, in an order that never leaves
/// anything stuck: LivePatches lose their finalizer first (no operator is
/// left to revert), LivePatchNodes of the selected Nodes (and, when
/// `lpns_before` is known, those the run's operator created for other
/// Nodes), force-deleted Pods (no kubelet would ever confirm), Nodes, the
/// chart's cluster-scoped objects, namespaces, the operator's Events about
/// objects named `name_prefix…`, and the CRDs the suite created (only
/// those carry its label). Returns what failed.
pub async fn cleanup_by_label(
    client: &Client,
    selector: &str,
    name_prefix: &str,
    lpns_before: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let by_label = ListParams::default().labels(selector);
    let mut note = |result: Result<()>| {
        if let Err(error) = result {
            errors.push(format!("{error:#}"));
        }
    };
    let crds_present = {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        within(
            "reading the LivePatch CRD",
            api.get_opt("livepatches.graft.dev"),
        )
        .await
        .ok()
        .flatten()
        .is_some()
    };

    if crds_present {
        // 1. LivePatches: drop the finalizer, then delete.
        let live_patches: Api<LivePatch> = Api::all(client.clone());
        note(
            async {
                let list = within(
                    "listing the run's LivePatches",
                    live_patches.list(&by_label),
                )
                .await?;
                for lp in list.items {
                    let name = lp.name_any();
                    if lp.finalizers().iter().any(|f| f == graft_crds::FINALIZER) {
                        within(
                            &format!("removing the finalizer of LivePatch {name}"),
                            live_patches.patch(
                                &name,
                                &PatchParams {
                                    field_manager: Some(FIELD_MANAGER.into()),
                                    ..PatchParams::default()
                                },
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            ),
                        )
                        .await?;
                    }
                    ignore_not_found(
                        within(
                            &format!("deleting LivePatch {name}"),
                            live_patches.delete(&name, &DeleteParams::default()),
                        )
                        .await,
                    )?;
                }
                Ok(())
            }
            .await,
        );
    }

    // 2. Nodes (listed first: their LivePatchNodes are named after them).
    let nodes: Api<Node> = Api::all(client.clone());
    let node_names: Vec<String> =
        match within("listing the run's Nodes", nodes.list(&by_label)).await {
            Ok(list) => list.items.iter().map(|n| n.name_any()).collect(),
            Err(error) => {
                note(Err(error));
                Vec::new()
            }
        };
    if crds_present {
        let lpns: Api<LivePatchNode> = Api::all(client.clone());
        let mut doomed: BTreeSet<String> = node_names.iter().cloned().collect();
        if let Some(before) = lpns_before
            && let Ok(list) =
                within("listing LivePatchNodes", lpns.list(&ListParams::default())).await
        {
            doomed.extend(
                list.items
                    .iter()
                    .map(|o| o.name_any())
                    .filter(|name| !before.contains(name)),
            );
        }
        for name in doomed {
            note(ignore_not_found(
                within(
                    &format!("deleting LivePatchNode {name}"),
                    lpns.delete(&name, &DeleteParams::default()),
                )
                .await,
            ));
        }
    }

    // 3. Pods bound to test nodes never run and would stay Terminating: force them.
    let pods: Api<Pod> = Api::all(client.clone());
    if let Ok(list) = within("listing the run's Pods", pods.list(&by_label)).await {
        for pod in list.items {
            let (Some(namespace), name) = (pod.namespace(), pod.name_any()) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            note(ignore_not_found(
                within(
                    &format!("deleting Pod {namespace}/{name}"),
                    api.delete(
                        &name,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    ),
                )
                .await,
            ));
        }
    }

    for name in &node_names {
        note(ignore_not_found(
            within(
                &format!("deleting Node {name}"),
                nodes.delete(name, &DeleteParams::default()),
            )
            .await,
        ));
    }

    // 4. The chart's cluster-scoped objects (scenario 9), then namespaces.
    note(delete_collection::<ValidatingAdmissionPolicyBinding>(client, &by_label).await);
    note(delete_collection::<ValidatingAdmissionPolicy>(client, &by_label).await);
    note(delete_collection::<ClusterRoleBinding>(client, &by_label).await);
    note(delete_collection::<ClusterRole>(client, &by_label).await);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = within("listing the run's namespaces", namespaces.list(&by_label)).await {
        for ns in list.items {
            let name = ns.name_any();
            note(ignore_not_found(
                within(
                    &format!("deleting namespace {name}"),
                    namespaces.delete(&name, &DeleteParams::default()),
                )
                .await,
            ));
        }
    }

    // 5. The operator's Events about the run's objects.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    if let Ok(list) = within("listing Events", events.list(&ListParams::default())).await {
        for event in list.items {
            let about_run = event
                .regarding
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .is_some_and(|n| n.starts_with(name_prefix));
            if about_run
                && event.reporting_controller.as_deref() == Some(graft_crds::OPERATOR_FIELD_MANAGER)
            {
                let name = event.name_any();
                note(ignore_not_found(
                    within(
                        &format!("deleting Event {name}"),
                        events.delete(&name, &DeleteParams::default()),
                    )
                    .await,
                ));
            }
        }
    }

    // 6. CRDs the suite created (labelled), last.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if let Ok(list) = within("listing the run's CRDs", crds.list(&by_label)).await {
        for crd in list.items {
            let name = crd.name_any();
            note(ignore_not_found(
                within(
                    &format!("deleting CRD {name}"),
                    crds.delete(&name, &DeleteParams::default()),
                )
                .await,
            ));
        }
    }
    errors
}

async fn delete_collection<K>(client: &Client, by_label: &ListParams) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let list = match tokio::time::timeout(CALL_LIMIT, api.list(by_label)).await {
        Ok(Ok(list)) => list,
        // Not served by this API server (e.g. no ValidatingAdmissionPolicy): nothing to delete.
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => return Ok(()),
        Ok(Err(error)) => return Err(anyhow!(error).context(format!("listing the run's {kind}s"))),
        Err(_) => bail!(
            "listing the run's {kind}s: no answer within {}s",
            CALL_LIMIT.as_secs()
        ),
    };
    for object in list.items {
        let name = object.name_any();
        ignore_not_found(
            within(
                &format!("deleting {kind} {name}"),
                api.delete(&name, &DeleteParams::default()),
            )
            .await,
        )?;
    }
    Ok(())
}

fn ignore_not_found<T>(result: Result<T>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .downcast_ref::<kube::Error>()
                .is_some_and(|e| matches!(e, kube::Error::Api(s) if s.code == 404)) =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_lowercase_names() {
        let id = new_run_id();
        assert_eq!(id.len(), 6);
        assert!(valid_run_id(&id), "{id}");
        assert!(!valid_run_id("Run"));
        assert!(!valid_run_id(""));
        assert!(!valid_run_id("abcdefghijk"));
    }

    #[test]
    fn a_missing_object_is_already_cleaned_up() {
        let not_found: Result<()> = Err(kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            ..kube::core::Status::default()
        })))
        .context("deleting x");
        assert!(ignore_not_found(not_found).is_ok());
        let forbidden: Result<()> = Err(kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            ..kube::core::Status::default()
        })))
        .context("deleting x");
        assert!(ignore_not_found(forbidden).is_err());
    }
}
