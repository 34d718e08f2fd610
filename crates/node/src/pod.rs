//! One worker per pod: sandbox, containers, restarts with back-off, probes, status, deletion.

use crate::backoff::BackOff;
use crate::catalog::CatalogError;
use crate::dnsconf;
use crate::envvars::{self, PodFacts};
use crate::events;
use crate::netns;
use crate::probe::{self, Outcome, Target, Thresholds};
use crate::spawn::{self, SpawnSpec};
use crate::state::{self, PodRecord, ProcRecord};
use crate::Ctx;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

enum Msg {
    Exited {
        idx: usize,
        gen: u64,
        code: i32,
        signal: Option<i32>,
    },
    Probe {
        idx: usize,
        gen: u64,
        kind: ProbeKind,
        ok: bool,
        message: String,
    },
}

struct Proc {
    pid: i32,
    ticks: u64,
    started_at: Time,
    container_id: String,
}

struct ContainerRt {
    spec: Container,
    /// An init container (they come first, in spec order, and run one at a time to completion).
    init: bool,
    gen: u64,
    proc: Option<Proc>,
    state: ContainerState,
    last_state: Option<ContainerState>,
    restart_count: i32,
    ready: bool,
    started: bool,
    backoff: BackOff,
    /// When a container waiting in back-off restarts.
    restart_at: Option<Instant>,
    /// Exit time (offset from the agent's origin) of the last run, for the back-off.
    finished_at: Option<Duration>,
    /// Pod-wide permanent failure for this container (image not in catalog, bad env): no restarts.
    blocked: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl ContainerRt {
    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Stop the probes but keep watching the process (tasks[0] is its exit waiter).
    fn stop_probes(&mut self) {
        for t in self.tasks.drain(..).skip(1) {
            t.abort();
        }
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn parse_time(s: &str) -> Option<Time> {
    s.parse::<jiff::Timestamp>().ok().map(Time)
}

pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    uid: String,
    ns: String,
    name: String,
    record: PodRecord,
    netns_path: Option<PathBuf>,
    pod_ips: Vec<String>,
    hostname: String,
    sandbox_ready: bool,
    containers: Vec<ContainerRt>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    published: Option<PodStatus>,
    start_time: Time,
    terminating: bool,
    /// The ConfigMaps and Secrets the pod refers to, as last read.
    sources: crate::sources::PodSources,
    /// Why the pod's volumes could not be set up (containers wait until they can).
    volume_error: Option<String>,
}

impl Worker {
    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn dir(&self) -> PathBuf {
        state::pod_dir(&self.ctx.options.data_dir, &self.uid)
    }

    fn event(&self, container: Option<&str>, kind: &str, reason: &str, message: String) {
        events::emit(&self.ctx, &self.pod, container, kind, reason, message);
    }

    fn save(&mut self) {
        self.record.pod_ips = self.pod_ips.clone();
        self.record.start_time = Some(self.start_time.0.to_string());
        for c in &self.containers {
            // Containers this worker has not started or adopted yet keep their record (an agent restart
            // reads it to adopt the running process).
            if c.gen == 0 {
                continue;
            }
            let entry = self
                .record
                .containers
                .entry(c.spec.name.clone())
                .or_default();
            entry.restart_count = c.restart_count;
            entry.completed = c.init
                && c.state
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.exit_code == 0);
            entry.running = c.proc.as_ref().map(|p| ProcRecord {
                pid: p.pid,
                start_ticks: p.ticks,
                started_at: p.started_at.0.to_string(),
                container_id: p.container_id.clone(),
            });
        }
        if let Err(err) = self.record.save(&self.ctx.options.data_dir) {
            tracing::warn!(pod = %self.name, %err, "saving pod state");
        }
    }

    /// Network namespace, CNI ADD (or adoption of the recorded sandbox), resolv.conf and hosts.
    async fn setup_sandbox(&mut self, mut retry: bool) -> Result<(), String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        if host_network {
            self.pod_ips = vec![self.ctx.node.ip.to_string()];
        } else if self.record.netns.as_deref().is_some_and(netns::exists)
            && !self.record.pod_ips.is_empty()
        {
            self.netns_path = self.record.netns.as_deref().map(netns::netns_path);
            self.pod_ips = self.record.pod_ips.clone();
        } else {
            let name = netns::netns_name(&self.uid);
            let path = match netns::create(&name).await {
                Ok(p) => p,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A leftover from a crash before the state was saved: start clean.
                    retry = true;
                    let _ = netns::remove(&name);
                    netns::create(&name)
                        .await
                        .map_err(|e| format!("creating network namespace {name}: {e}"))?
                }
                Err(e) => return Err(format!("creating network namespace {name}: {e}")),
            };
            self.record.netns = Some(name.clone());
            self.netns_path = Some(path.clone());
            self.save();
            if retry {
                // An earlier attempt may have left an attachment (or an IPAM reservation) behind.
                let _ = self
                    .ctx
                    .cni
                    .del(&name, Some(&path), "eth0", &self.pod_ref())
                    .await;
            }
            let result = self
                .ctx
                .cni
                .add(&name, &path, "eth0", &self.pod_ref())
                .await
                .map_err(|e| format!("failed to set up sandbox container network: {e}"))?;
            let ips: Vec<String> = result
                .ips
                .iter()
                .map(|ip| ip.address.addr().to_string())
                .collect();
            if ips.is_empty() {
                return Err("CNI result has no IP address".into());
            }
            self.record.cni_result = serde_json::to_value(&result).ok();
            self.pod_ips = ips;
        }
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let domain = dnsconf::pod_domain(&spec, &self.ns, &self.ctx.options.cluster_domain);
        if !host_network {
            let hosts =
                dnsconf::hosts_file(&self.pod_ips, &self.hostname, domain.as_deref(), &spec);
            std::fs::write(dir.join("hosts"), hosts).map_err(|e| format!("writing hosts: {e}"))?;
        }
        let resolv = dnsconf::pod_resolv_conf(
            &spec,
            &self.ns,
            &self.ctx.options.cluster_dns,
            &self.ctx.options.cluster_domain,
            &self.ctx.host_resolv,
        );
        match resolv {
            Some(conf) => std::fs::write(dir.join("resolv.conf"), conf.render())
                .map_err(|e| format!("writing resolv.conf: {e}"))?,
            None => {
                let _ = std::fs::remove_file(dir.join("resolv.conf"));
            }
        }
        if let (Some(gate), false) = (&self.ctx.pod_gate, host_network) {
            let admitted = gate.admit(&self.pod, &self.pod_ips);
            if tokio::time::timeout(crate::POD_GATE_TIMEOUT, admitted)
                .await
                .is_err()
            {
                tracing::warn!(pod = %self.name, "pod start gate (network policy) not open in time; starting anyway");
            }
        }
        self.sandbox_ready = true;
        self.save();
        Ok(())
    }

    fn pod_ref(&self) -> skiff_cni::runtime::PodRef {
        skiff_cni::runtime::PodRef {
            namespace: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    fn base_spawn(&self) -> SpawnSpec {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let dir = self.dir();
        let resolv = dir.join("resolv.conf");
        SpawnSpec {
            netns: self.netns_path.clone(),
            hostname: (!host_network).then(|| self.hostname.clone()),
            resolv_conf: resolv.exists().then_some(resolv),
            hosts: (!host_network).then(|| dir.join("hosts")),
            ..Default::default()
        }
    }

    fn facts(&self) -> PodFacts {
        let spec = self.pod.spec.clone().unwrap_or_default();
        PodFacts {
            name: self.name.clone(),
            namespace: self.ns.clone(),
            uid: self.uid.clone(),
            node_name: self.ctx.node.name.clone(),
            pod_ip: self.pod_ips.first().cloned().unwrap_or_default(),
            host_ip: self.ctx.node.ip.to_string(),
            service_account: spec
                .service_account_name
                .unwrap_or_else(|| "default".into()),
            labels: self.pod.metadata.labels.clone().unwrap_or_default(),
            annotations: self.pod.metadata.annotations.clone().unwrap_or_default(),
            allocatable: [
                (
                    "cpu".to_string(),
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                        .to_string(),
                ),
                ("memory".to_string(), crate::node::memory_capacity()),
            ]
            .into(),
        }
    }

    /// The process a container (or its exec probe) runs, with its environment.
    fn process_spec(
        &self,
        c: &Container,
        command: &[String],
        args: &[String],
    ) -> Result<SpawnSpec, (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let resolved = self
            .ctx
            .catalog
            .resolve(&image, command, args)
            .map_err(|e| match e {
                CatalogError::NotInCatalog { .. } => {
                    ("ImageNotInCatalog".to_string(), e.to_string())
                }
                CatalogError::EmptyCommand { .. } => {
                    ("CreateContainerConfigError".to_string(), e.to_string())
                }
            })?;
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let services = self.ctx.services.state();
        let service_vars =
            envvars::services_env(&self.ns, links, services.iter().map(|s| s.as_ref()));
        let config_error = |m: String| ("CreateContainerConfigError".to_string(), m);
        let mut env = envvars::container_env(c, &self.facts(), &service_vars, &self.sources)
            .map_err(|e| config_error(e.to_string()))?;
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let mounts =
            crate::volumes::container_mounts(c, &pod_spec, &self.dir()).map_err(config_error)?;
        let pod_ref = format!("{}_{}({})", self.name, self.ns, self.uid);
        let user = crate::security::container_user(&pod_spec, c, &pod_ref)
            .map_err(|e| config_error(e.to_string()))?;
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        // $(VAR) in command and args expands against the container's environment, as upstream.
        let arg0 = envvars::expand(&resolved.arg0, &lookup);
        let exp_args: Vec<String> = resolved
            .args
            .iter()
            .map(|a| envvars::expand(a, &lookup))
            .collect();
        let mut program = resolved.program.clone();
        if program.as_os_str() == resolved.arg0.as_str() {
            program = PathBuf::from(&arg0);
        }
        for (k, v) in [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOSTNAME", self.hostname.clone()),
            ("HOME", "/root".to_string()),
        ] {
            if !env.iter().any(|(name, _)| name == k) {
                env.insert(0, (k.to_string(), v));
            }
        }
        Ok(SpawnSpec {
            program,
            arg0,
            args: exp_args,
            env,
            working_dir: c
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            mounts,
            user,
            ..self.base_spawn()
        })
    }

    fn start(&mut self, idx: usize) {
        let c = self.containers[idx].spec.clone();
        let image = c.image.clone().unwrap_or_default();
        let spec = match self.process_spec(
            &c,
            c.command.as_deref().unwrap_or_default(),
            c.args.as_deref().unwrap_or_default(),
        ) {
            Ok(s) => s,
            Err((reason, message)) => {
                let rt = &mut self.containers[idx];
                rt.state = waiting(&reason, Some(message.clone()));
                rt.blocked = true;
                self.event(
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {message}"),
                );
                return;
            }
        };
        if self.containers[idx].restart_count == 0 && self.containers[idx].finished_at.is_none() {
            self.event(
                Some(&c.name),
                "Normal",
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
        }
        self.event(
            Some(&c.name),
            "Normal",
            "Created",
            format!("Created container: {}", c.name),
        );
        let restart = self.containers[idx].restart_count;
        let log = self
            .dir()
            .join("logs")
            .join(&c.name)
            .join(format!("{restart}.log"));
        let spec = SpawnSpec {
            log: Some(log),
            ..spec
        };
        if let Err(err) = crate::volumes::ensure_mount_points(&self.dir(), &spec.mounts) {
            // The mount in the child then fails and says so in the container's StartError.
            tracing::warn!(pod = %self.name, %err, "creating mount points");
        }
        let gen = self.containers[idx].gen + 1;
        self.containers[idx].gen = gen;
        let started_at = now();
        let spawned = spawn::command(&spec).and_then(|mut cmd| cmd.spawn());
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) => {
                let message = format!(
                    "failed to start container {:?}: exec: {:?}: {err}",
                    c.name,
                    spec.program.display().to_string()
                );
                self.event(
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {message}"),
                );
                let rt = &mut self.containers[idx];
                rt.state = ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 128,
                        reason: Some("StartError".into()),
                        message: Some(message),
                        started_at: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                        finished_at: Some(now()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                rt.finished_at = Some(self.ctx.origin.elapsed());
                self.after_exit(idx);
                return;
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let ticks = spawn::start_ticks(pid).unwrap_or(0);
        let container_id = format!("skiff://{:032x}", rand::random::<u128>());
        let tx = self.tx.clone();
        let waiter = tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(code), _) => (code, None),
                        (None, Some(sig)) => (128 + sig, Some(sig)),
                        _ => (255, None),
                    }
                }
                Err(_) => (255, None),
            };
            let _ = tx.send(Msg::Exited {
                idx,
                gen,
                code,
                signal,
            });
        });
        self.event(
            Some(&c.name),
            "Normal",
            "Started",
            format!("Started container {}", c.name),
        );
        self.running(
            idx,
            Proc {
                pid,
                ticks,
                started_at,
                container_id,
            },
            vec![waiter],
        );
        self.save();
    }

    /// Mark a container running (started now or adopted) and start its probes: the startup probe alone
    /// first when there is one (the others start once it succeeds), as kubelet does.
    fn running(&mut self, idx: usize, proc: Proc, mut tasks: Vec<JoinHandle<()>>) {
        let c = self.containers[idx].spec.clone();
        let pid = proc.pid;
        let startup = c.startup_probe.is_some();
        if startup {
            tasks.extend(self.probe_task(idx, ProbeKind::Startup, pid));
        } else {
            tasks.extend(self.probe_task(idx, ProbeKind::Readiness, pid));
            tasks.extend(self.probe_task(idx, ProbeKind::Liveness, pid));
        }
        let init = self.containers[idx].init;
        let rt = &mut self.containers[idx];
        rt.state = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(proc.started_at.clone()),
            }),
            ..Default::default()
        };
        rt.ready = !init && !startup && c.readiness_probe.is_none();
        rt.started = !startup;
        rt.proc = Some(proc);
        rt.restart_at = None;
        rt.tasks = tasks;
    }

    /// The task running one of the container's probes, if it has that probe.
    fn probe_task(&self, idx: usize, kind: ProbeKind, pid: i32) -> Option<JoinHandle<()>> {
        let gen = self.containers[idx].gen;
        let c = self.containers[idx].spec.clone();
        let probe = match kind {
            ProbeKind::Readiness => c.readiness_probe.clone(),
            ProbeKind::Liveness => c.liveness_probe.clone(),
            ProbeKind::Startup => c.startup_probe.clone(),
        }?;
        let pod_ip = self
            .pod_ips
            .first()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(self.ctx.node.ip);
        let exec = probe.exec.as_ref().and_then(|e| {
            self.process_spec(&c, e.command.as_deref().unwrap_or_default(), &[])
                .ok()
        });
        let target = Target {
            pod_ip,
            netns: self.netns_path.clone(),
            pid,
            exec,
        };
        let tx = self.tx.clone();
        Some(tokio::spawn(async move {
            let initial = (kind == ProbeKind::Liveness).then_some(true);
            let mut th = Thresholds::new(&probe, initial);
            let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
            tokio::time::sleep(Duration::from_secs(delay)).await;
            let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
            // Readiness is first checked right away, then quickly until it first succeeds, so a pod becomes
            // Ready without waiting a whole period.
            let mut fast = kind == ProbeKind::Readiness;
            loop {
                let outcome = probe::attempt(&probe, &c, &target).await;
                let (ok, message) = match outcome {
                    Outcome::Success => (true, String::new()),
                    Outcome::Failure(m) => (false, m),
                };
                if ok {
                    fast = false;
                }
                if let Some(result) = th.record(ok) {
                    let _ = tx.send(Msg::Probe {
                        idx,
                        gen,
                        kind,
                        ok: result,
                        message,
                    });
                    // A startup probe is done once it succeeded.
                    if kind == ProbeKind::Startup && result {
                        return;
                    }
                }
                let wait = if fast {
                    period.min(Duration::from_millis(100))
                } else {
                    period
                };
                tokio::time::sleep(wait).await;
            }
        }))
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn on_exit(&mut self, idx: usize, gen: u64, code: i32, signal: Option<i32>) {
        let rt = &mut self.containers[idx];
        if rt.gen != gen {
            return;
        }
        rt.stop_tasks();
        let proc = rt.proc.take();
        rt.ready = false;
        rt.finished_at = Some(self.ctx.origin.elapsed());
        rt.state = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                signal,
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                started_at: proc.as_ref().map(|p| p.started_at.clone()),
                finished_at: Some(now()),
                container_id: proc.as_ref().map(|p| p.container_id.clone()),
                message: None,
            }),
            ..Default::default()
        };
        self.after_exit(idx);
        if self.containers[idx].init && code == 0 {
            self.advance_init();
        }
        self.save();
    }

    /// Decide about a restart of a container that just terminated.
    fn after_exit(&mut self, idx: usize) {
        if self.terminating {
            return;
        }
        let policy = self.restart_policy();
        let rt = &self.containers[idx];
        let code = rt
            .state
            .terminated
            .as_ref()
            .map(|t| t.exit_code)
            .unwrap_or(0);
        // Init containers run to completion: only a failure restarts them (under Always or OnFailure).
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ if rt.init => code != 0,
            _ => true,
        };
        if !restart {
            return;
        }
        let finished = rt.finished_at.unwrap_or_default();
        let (delay, shown) = rt.backoff.delay(finished, self.ctx.origin.elapsed());
        if delay.is_zero() {
            self.restart(idx);
        } else {
            let name = rt.spec.name.clone();
            let message = format!(
                "back-off {} restarting failed container={name} pod={}_{}({})",
                humantime(shown),
                self.name,
                self.ns,
                self.uid
            );
            let rt = &mut self.containers[idx];
            rt.last_state = Some(rt.state.clone());
            rt.state = waiting("CrashLoopBackOff", Some(message));
            rt.restart_at = Some(Instant::now() + delay);
            self.event(
                Some(&name),
                "Warning",
                "BackOff",
                format!(
                    "Back-off restarting failed container {name} in pod {}_{}({})",
                    self.name, self.ns, self.uid
                ),
            );
        }
    }

    fn restart(&mut self, idx: usize) {
        let rt = &mut self.containers[idx];
        if rt.state.terminated.is_some() {
            rt.last_state = Some(rt.state.clone());
        }
        let finished = rt.finished_at.unwrap_or_default();
        rt.backoff.next(finished);
        rt.restart_count += 1;
        rt.restart_at = None;
        self.start(idx);
    }

    fn on_probe(&mut self, idx: usize, gen: u64, kind: ProbeKind, ok: bool, message: String) {
        if self.containers[idx].gen != gen || self.containers[idx].proc.is_none() {
            return;
        }
        let name = self.containers[idx].spec.name.clone();
        match (kind, ok) {
            (ProbeKind::Readiness, ok) => {
                if !ok {
                    self.event(
                        Some(&name),
                        "Warning",
                        "Unhealthy",
                        format!("Readiness probe failed: {message}"),
                    );
                }
                self.containers[idx].ready = ok;
            }
            (ProbeKind::Startup, true) => {
                let pid = self.containers[idx]
                    .proc
                    .as_ref()
                    .map(|p| p.pid)
                    .unwrap_or(0);
                let more: Vec<JoinHandle<()>> = [ProbeKind::Readiness, ProbeKind::Liveness]
                    .into_iter()
                    .filter_map(|k| self.probe_task(idx, k, pid))
                    .collect();
                let rt = &mut self.containers[idx];
                rt.started = true;
                rt.ready = rt.spec.readiness_probe.is_none();
                rt.tasks.extend(more);
            }
            (ProbeKind::Startup, false) => {
                self.event(
                    Some(&name),
                    "Warning",
                    "Unhealthy",
                    format!("Startup probe failed: {message}"),
                );
                self.event(
                    Some(&name),
                    "Normal",
                    "Killing",
                    format!("Container {name} failed startup probe, will be restarted"),
                );
                if let Some(p) = &self.containers[idx].proc {
                    kill_gracefully(p.pid, p.ticks, self.grace());
                }
            }
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Liveness, false) => {
                self.event(
                    Some(&name),
                    "Warning",
                    "Unhealthy",
                    format!("Liveness probe failed: {message}"),
                );
                self.event(
                    Some(&name),
                    "Normal",
                    "Killing",
                    format!("Container {name} failed liveness probe, will be restarted"),
                );
                self.containers[idx].ready = false;
                if let Some(p) = &self.containers[idx].proc {
                    kill_gracefully(p.pid, p.ticks, self.grace());
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    fn status(&self) -> PodStatus {
        type Tagged = Vec<(bool, ContainerStatus)>;
        let (init, statuses): (Tagged, Tagged) = self
            .containers
            .iter()
            .map(|c| {
                (
                    c.init,
                    ContainerStatus {
                        name: c.spec.name.clone(),
                        image: c.spec.image.clone().unwrap_or_default(),
                        image_id: self
                            .ctx
                            .catalog
                            .image_config(c.spec.image.as_deref().unwrap_or_default())
                            .map(|_| {
                                format!(
                                    "skiff-catalog://{}",
                                    crate::catalog::normalize_image(
                                        c.spec.image.as_deref().unwrap_or_default()
                                    )
                                )
                            })
                            .unwrap_or_default(),
                        container_id: c.proc.as_ref().map(|p| p.container_id.clone()).or_else(
                            || {
                                c.state
                                    .terminated
                                    .as_ref()
                                    .and_then(|t| t.container_id.clone())
                            },
                        ),
                        state: Some(c.state.clone()),
                        last_state: Some(c.last_state.clone().unwrap_or_default()),
                        ready: c.ready,
                        started: Some(c.proc.is_some() && c.started),
                        restart_count: c.restart_count,
                        ..Default::default()
                    },
                )
            })
            .partition(|(init, _)| *init);
        crate::status::pod_status(crate::status::StatusInput {
            spec: self.pod.spec.as_ref().unwrap_or(&Default::default()),
            containers: statuses.into_iter().map(|(_, s)| s).collect(),
            init_containers: init.into_iter().map(|(_, s)| s).collect(),
            pod_ips: self.pod_ips.clone(),
            host_ip: self.ctx.node.ip.to_string(),
            start_time: Some(self.start_time.clone()),
            sandbox_ready: self.sandbox_ready,
            previous: self.published.as_ref(),
            now: now(),
        })
    }

    async fn publish(&mut self) {
        let status = self.status();
        if self.published.as_ref() == Some(&status) {
            return;
        }
        let patch = serde_json::json!({ "status": status });
        let _slot = self.ctx.api_slots.acquire().await;
        match self
            .api()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.published = Some(status),
            Err(err) => tracing::warn!(pod = %self.name, %err, "updating pod status"),
        }
    }

    /// Run the running containers' `lifecycle.preStop` hooks (concurrently, each inside its container) and
    /// wait for them, at most until `deadline`: the grace period covers hook and SIGTERM alike, as upstream.
    async fn run_pre_stop_hooks(&mut self, deadline: Instant) -> bool {
        let mut hooks = Vec::new();
        for idx in 0..self.containers.len() {
            let c = &self.containers[idx];
            let (Some(proc), Some(hook)) = (
                &c.proc,
                c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()),
            ) else {
                continue;
            };
            let spec = c.spec.clone();
            let pod_ip = self
                .pod_ips
                .first()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(self.ctx.node.ip);
            let exec = hook.exec.as_ref().and_then(|e| {
                self.process_spec(&spec, e.command.as_deref().unwrap_or_default(), &[])
                    .ok()
            });
            let target = Target {
                pod_ip,
                netns: self.netns_path.clone(),
                pid: proc.pid,
                exec,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            hooks.push(tokio::spawn(async move {
                let outcome = crate::lifecycle::run_hook(&hook, &spec, &target, left).await;
                (spec.name.clone(), hook, outcome)
            }));
        }
        let any = !hooks.is_empty();
        for hook in hooks {
            let Ok((name, handler, outcome)) = hook.await else {
                continue;
            };
            if let Err(message) = outcome {
                let what = crate::lifecycle::describe(&handler);
                self.event(
                    Some(&name),
                    "Warning",
                    "FailedPreStopHook",
                    format!(
                        "{what} for Container {name:?} in Pod \"{}_{}({})\" failed - error: {message}",
                        self.name, self.ns, self.uid
                    ),
                );
            }
        }
        any
    }

    /// SIGTERM every container, wait out the grace period (or until all exited), SIGKILL the rest.
    async fn stop_all(&mut self, grace: Duration) {
        self.terminating = true;
        for c in &mut self.containers {
            c.restart_at = None;
            c.stop_probes();
        }
        let mut deadline = Instant::now() + grace;
        if self.run_pre_stop_hooks(deadline).await {
            // As kubelet: at least 2 s for SIGTERM after the hooks used the grace period.
            deadline = deadline.max(Instant::now() + Duration::from_secs(2));
        }
        let running: Vec<(String, i32)> = self
            .containers
            .iter()
            .filter_map(|c| c.proc.as_ref().map(|p| (c.spec.name.clone(), p.pid)))
            .collect();
        for (name, pid) in &running {
            self.event(
                Some(name),
                "Normal",
                "Killing",
                format!("Stopping container {name}"),
            );
            spawn::signal(*pid, Signal::SIGTERM);
        }
        while self.containers.iter().any(|c| c.proc.is_some()) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Msg::Exited {
                    idx,
                    gen,
                    code,
                    signal,
                })) => {
                    // Adopted processes are not our children: their exit is seen, not their code.
                    let rt = &mut self.containers[idx];
                    if rt.gen == gen {
                        rt.proc = None;
                        rt.state = ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                signal,
                                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                                finished_at: Some(now()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        };
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for c in &self.containers {
            if let Some(p) = &c.proc {
                spawn::signal(p.pid, Signal::SIGKILL);
            }
        }
    }

    async fn run(mut self, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
        let already_done = matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        ) && self.record.netns.is_none()
            && self.record.containers.is_empty();
        let deleting = self.pod.metadata.deletion_timestamp.is_some();
        if !deleting && !already_done {
            let mut attempt = 0u32;
            loop {
                match self.setup_sandbox(attempt > 0).await {
                    Ok(()) => break,
                    Err(message) => {
                        tracing::warn!(pod = %self.name, %message, "sandbox setup failed");
                        self.event(
                            None,
                            "Warning",
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {message}"),
                        );
                        self.publish().await;
                        attempt += 1;
                        let wait = Duration::from_millis(500 * 2u64.pow(attempt.min(6)));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            changed = updates.changed() => {
                                // The agent is shutting down: leave everything as it is.
                                if changed.is_err() { return; }
                                let gone = updates.borrow().as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some());
                                if gone { break; }
                            }
                        }
                    }
                }
            }
            if self.sandbox_ready {
                self.refresh_sources().await;
                self.prepare_volumes();
                if self.volume_error.is_none() {
                    self.adopt_or_start();
                }
                self.publish().await;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        // ConfigMaps and Secrets are read again this often: volumes follow their changes, and containers
        // waiting for a missing one start once it exists (kubelet's sync loop does the same, about a minute).
        let mut refresh = tokio::time::interval(SOURCES_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The latest pod, whether or not a change was already seen (a deletion may have arrived while
            // the sandbox was being retried).
            let current = updates.borrow_and_update().clone();
            match current {
                Some(pod) if pod.metadata.deletion_timestamp.is_none() => self.pod = pod,
                Some(pod) => {
                    self.pod = pod;
                    let grace = self.grace();
                    self.stop_all(grace).await;
                    self.teardown().await;
                    let params = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(self.uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    let _slot = self.ctx.api_slots.acquire().await;
                    if let Err(err) = self.api().delete(&self.name, &params).await {
                        tracing::warn!(pod = %self.name, %err, "final delete");
                    }
                    return;
                }
                None => {
                    // Gone from the API (force-deleted): stop quickly and clean up.
                    self.stop_all(Duration::from_secs(2)).await;
                    self.teardown().await;
                    return;
                }
            }
            let next_restart = self.containers.iter().filter_map(|c| c.restart_at).min();
            let sleep = async {
                match next_restart {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = updates.changed() => {
                    // The agent is shutting down (not a deletion: that arrives as None): the pod keeps
                    // running and the next agent adopts it.
                    if changed.is_err() {
                        return;
                    }
                    // Handled at the top of the loop.
                    continue;
                }
                Some(msg) = self.rx.recv() => match msg {
                    Msg::Exited { idx, gen, code, signal } => self.on_exit(idx, gen, code, signal),
                    Msg::Probe { idx, gen, kind, ok, message } => self.on_probe(idx, gen, kind, ok, message),
                },
                _ = sleep => {
                    let now = Instant::now();
                    let due: Vec<usize> = (0..self.containers.len())
                        .filter(|&i| self.containers[i].restart_at.is_some_and(|at| at <= now))
                        .collect();
                    for idx in due { self.restart(idx); }
                }
                // Wakes the loop so a failed status update is retried.
                _ = tick.tick() => {}
                _ = refresh.tick() => self.refresh().await,
            }
            // Collect whatever else is already queued before one status update.
            while let Ok(msg) = self.rx.try_recv() {
                match msg {
                    Msg::Exited {
                        idx,
                        gen,
                        code,
                        signal,
                    } => self.on_exit(idx, gen, code, signal),
                    Msg::Probe {
                        idx,
                        gen,
                        kind,
                        ok,
                        message,
                    } => self.on_probe(idx, gen, kind, ok, message),
                }
            }
            self.publish().await;
        }
    }

    /// Read the ConfigMaps and Secrets the pod refers to; what the API could not be asked about keeps its
    /// last known value.
    async fn refresh_sources(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let refs = crate::sources::referenced(&spec);
        if refs.is_empty() {
            return;
        }
        let fetched = {
            let _slot = self.ctx.api_slots.acquire().await;
            crate::sources::fetch(&self.ctx.client, &self.ns, &refs).await
        };
        self.sources.objects.retain(|k, _| refs.contains(k));
        for (key, value) in fetched.objects {
            if matches!(value, crate::sources::Fetched::Failed(_))
                && self.sources.objects.contains_key(&key)
            {
                continue;
            }
            self.sources.objects.insert(key, value);
        }
    }

    /// Set up (or update) the pod's volumes; a failure is reported once as kubelet's FailedMount event.
    fn prepare_volumes(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        match crate::volumes::prepare(&self.dir(), &spec, &self.facts(), &self.sources) {
            Ok(changed) => {
                if !changed.is_empty() {
                    tracing::debug!(pod = %self.name, ?changed, "volumes updated");
                }
                self.volume_error = None;
            }
            Err((volume, err)) => {
                let message = format!("MountVolume.SetUp failed for volume {volume:?} : {err}");
                if self.volume_error.as_ref() != Some(&message) {
                    self.event(None, "Warning", "FailedMount", message.clone());
                }
                self.volume_error = Some(message);
            }
        }
    }

    /// The periodic re-read: update volumes, start what was waiting for its volumes or configuration.
    async fn refresh(&mut self) {
        if !self.sandbox_ready || self.terminating {
            return;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        if crate::sources::referenced(&spec).is_empty() && self.volume_error.is_none() {
            return;
        }
        let waited = self.volume_error.is_some();
        self.refresh_sources().await;
        self.prepare_volumes();
        if self.volume_error.is_some() {
            return;
        }
        if waited {
            self.adopt_or_start();
            return;
        }
        for idx in 0..self.containers.len() {
            let c = &self.containers[idx];
            let config_error = c.state.waiting.as_ref().and_then(|w| w.reason.as_deref())
                == Some("CreateContainerConfigError");
            if c.proc.is_none() && c.restart_at.is_none() && config_error {
                self.start(idx);
            }
        }
    }

    /// After (re)starting the worker: the init containers' turn first (see `advance_init`), then the app
    /// containers; those whose recorded process still lives are adopted, the others start.
    fn adopt_or_start(&mut self) {
        tracing::debug!(pod = %self.name, records = ?self.record.containers.keys().collect::<Vec<_>>(), "starting containers");
        self.advance_init();
        self.save();
    }

    fn init_count(&self) -> usize {
        self.containers.iter().filter(|c| c.init).count()
    }

    /// The first init container that has not completed successfully.
    fn next_init(&self) -> Option<usize> {
        (0..self.init_count()).find(|&i| {
            self.containers[i]
                .state
                .terminated
                .as_ref()
                .is_none_or(|t| t.exit_code != 0)
        })
    }

    /// Start the next init container that is due, or the app containers once every init container has
    /// completed. Init containers that completed before an agent restart are not run again.
    fn advance_init(&mut self) {
        loop {
            let Some(idx) = self.next_init() else {
                for idx in self.init_count()..self.containers.len() {
                    let rt = &self.containers[idx];
                    if rt.gen == 0 && rt.proc.is_none() && rt.restart_at.is_none() {
                        self.adopt_or_start_one(idx);
                    }
                }
                return;
            };
            let rt = &self.containers[idx];
            // Running, waiting out a back-off, or failed for good (restartPolicy Never).
            if rt.proc.is_some() || rt.restart_at.is_some() || rt.state.terminated.is_some() {
                return;
            }
            let completed = rt.gen == 0
                && self
                    .record
                    .containers
                    .get(&rt.spec.name)
                    .is_some_and(|r| r.completed);
            if completed {
                let rt = &mut self.containers[idx];
                rt.state = ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                continue;
            }
            self.adopt_or_start_one(idx);
            return;
        }
    }

    fn adopt_or_start_one(&mut self, idx: usize) {
        let name = self.containers[idx].spec.name.clone();
        let record = self
            .record
            .containers
            .get(&name)
            .cloned()
            .unwrap_or_default();
        self.containers[idx].restart_count = record.restart_count;
        match record.running {
            Some(p) if spawn::alive(p.pid, p.start_ticks) => {
                let gen = self.containers[idx].gen + 1;
                self.containers[idx].gen = gen;
                let tx = self.tx.clone();
                let (pid, ticks) = (p.pid, p.start_ticks);
                let waiter = tokio::spawn(async move {
                    spawn::wait_foreign(pid, ticks).await;
                    // The exit code of a process we did not start is not ours to read.
                    let _ = tx.send(Msg::Exited {
                        idx,
                        gen,
                        code: 255,
                        signal: None,
                    });
                });
                tracing::info!(pod = %self.name, container = %name, pid, "adopted running container");
                let started_at = parse_time(&p.started_at).unwrap_or_else(now);
                self.running(
                    idx,
                    Proc {
                        pid,
                        ticks,
                        started_at,
                        container_id: p.container_id,
                    },
                    vec![waiter],
                );
            }
            Some(p) => {
                tracing::info!(pod = %self.name, container = %name, pid = p.pid, ticks = p.start_ticks,
                    now_ticks = ?spawn::start_ticks(p.pid), "recorded container process is gone");
                // It died while the agent was away: that counts as a restart.
                self.containers[idx].finished_at = Some(self.ctx.origin.elapsed());
                self.containers[idx].restart_count += 1;
                self.start(idx);
            }
            None => self.start(idx),
        }
    }

    async fn teardown(&mut self) {
        for c in &mut self.containers {
            c.stop_tasks();
        }
        self.save();
        teardown_record(&self.ctx, &self.record).await;
    }
}

/// How often a pod's ConfigMaps and Secrets are read again.
const SOURCES_REFRESH: Duration = Duration::from_secs(5);

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// SIGTERM now, SIGKILL after the grace period if still the same process.
fn kill_gracefully(pid: i32, ticks: u64, grace: Duration) {
    spawn::signal(pid, Signal::SIGTERM);
    tokio::spawn(async move {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !spawn::alive(pid, ticks) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if spawn::alive(pid, ticks) {
            spawn::signal(pid, Signal::SIGKILL);
        }
    });
}

/// Remove everything a pod had on this node, from its record alone: processes (every one inside its network
/// namespace too), the CNI attachment, the namespace, the files.
pub(crate) async fn teardown_record(ctx: &Ctx, record: &PodRecord) {
    for c in record.containers.values() {
        if let Some(p) = &c.running {
            if spawn::alive(p.pid, p.start_ticks) {
                spawn::signal(p.pid, Signal::SIGKILL);
            }
        }
    }
    if let Some(name) = &record.netns {
        let path = netns::netns_path(name);
        if let Some(id) = netns::ns_id(&path).filter(|_| netns::exists(name)) {
            for _ in 0..50 {
                let pids = netns::pids_in(id);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let live = netns::exists(name);
        let pod_ref = skiff_cni::runtime::PodRef {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            uid: record.uid.clone(),
        };
        if let Err(err) = ctx
            .cni
            .del(name, live.then_some(path.as_path()), "eth0", &pod_ref)
            .await
        {
            tracing::warn!(pod = %record.name, %err, "CNI DEL");
        }
        if let Err(err) = netns::remove(name) {
            tracing::warn!(pod = %record.name, %err, "removing network namespace");
        }
    }
    let dir = state::pod_dir(&ctx.options.data_dir, &record.uid);
    crate::volumes::remove_mount_points(&dir);
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %err, "removing pod directory");
        }
    }
}

/// Start the worker of a pod: it runs until the pod is gone and its sandbox torn down.
pub(crate) fn spawn_worker(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    updates: watch::Receiver<Option<Arc<Pod>>>,
    record: Option<PodRecord>,
) -> JoinHandle<()> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = dnsconf::pod_hostname(&name, &spec);
    let record = record.unwrap_or_else(|| PodRecord {
        uid: uid.clone(),
        namespace: ns.clone(),
        name: name.clone(),
        ..Default::default()
    });
    let start_time = record
        .start_time
        .as_deref()
        .and_then(parse_time)
        .or_else(|| pod.status.as_ref().and_then(|s| s.start_time.clone()))
        .unwrap_or_else(now);
    let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (true, c))
        .chain(spec.containers.iter().map(|c| (false, c)))
        .map(|(init, c)| ContainerRt {
            spec: c.clone(),
            init,
            gen: 0,
            proc: None,
            // Containers waiting for init containers say so, as kubelet's do.
            state: waiting(
                if has_init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                },
                None,
            ),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            backoff: BackOff::default(),
            restart_at: None,
            finished_at: None,
            blocked: false,
            tasks: Vec::new(),
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let published = pod.status.clone();
    let worker = Worker {
        ctx,
        pod,
        uid,
        ns,
        name,
        record,
        netns_path: None,
        pod_ips: Vec::new(),
        hostname,
        sandbox_ready: false,
        containers,
        tx,
        rx,
        published,
        start_time,
        terminating: false,
        sources: Default::default(),
        volume_error: None,
    };
    tokio::spawn(worker.run(updates))
}
