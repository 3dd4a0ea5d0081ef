//! What a kubelet reports about a Pod, derived from its containers' lives: container statuses,
//! the phase (kubelet's getPhase rules) and the conditions (PodReadyToStartContainers,
//! Initialized, Ready, ContainersReady, PodScheduled) with their reasons and messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::containers::Restart;

/// Something that happened to one container.
#[derive(Debug)]
pub(crate) enum ContainerEvent {
    /// A run's process started.
    Started { name: String, at: Time },
    /// The startup probe succeeded: the container is started.
    StartupSucceeded { name: String },
    /// The readiness probe's result changed.
    ReadinessChanged { name: String, ready: bool },
    /// A run ended (or failed to start); `backoff` is the CrashLoopBackOff message while the
    /// container waits to be restarted, `None` if it stays terminated.
    Exited {
        name: String,
        exit: Exit,
        backoff: Option<String>,
    },
}

/// How a container run ended.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    pub(crate) code: i32,
    pub(crate) signal: Option<i32>,
    pub(crate) reason: String,
    pub(crate) message: Option<String>,
    pub(crate) started_at: Time,
    pub(crate) finished_at: Time,
}

/// The Pod's status as this node knows it.
pub(crate) struct PodStatusModel {
    uid: String,
    restart: Restart,
    start_time: Time,
    init: Vec<Slot>,
    main: Vec<Slot>,
    /// The volumes and environment are ready ("sandbox" created).
    sandbox_ready: bool,
    /// The Pod is being deleted and its containers were stopped: its phase becomes terminal.
    terminating: bool,
    /// Condition type → (status, lastTransitionTime): the time moves only when the status flips.
    conditions: BTreeMap<&'static str, (bool, Time)>,
}

struct Slot {
    name: String,
    image: String,
    has_startup_probe: bool,
    has_readiness_probe: bool,
    state: ContainerState,
    last_state: Option<ContainerState>,
    runs: i32,
    started: bool,
    ready: bool,
    /// Terminated and not going to be restarted, with this exit code.
    done: Option<i32>,
}

impl Slot {
    fn new(container: &Container, reason: &str) -> Self {
        Slot {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            has_startup_probe: container.startup_probe.is_some(),
            has_readiness_probe: container.readiness_probe.is_some(),
            state: waiting(reason, None),
            last_state: None,
            runs: 0,
            started: false,
            ready: false,
            done: None,
        }
    }

    fn is_running(&self) -> bool {
        self.state.running.is_some()
    }

    /// Terminated now, or waiting to restart after a termination: kubelet's "stopped".
    fn is_stopped(&self) -> bool {
        self.state.terminated.is_some() || (self.state.waiting.is_some() && self.last_state.is_some())
    }

    fn succeeded(&self) -> bool {
        let exit_code = |state: &ContainerState| state.terminated.as_ref().map(|terminated| terminated.exit_code);
        match exit_code(&self.state) {
            Some(code) => code == 0,
            None => self.last_state.as_ref().and_then(exit_code) == Some(0),
        }
    }

    fn is_ready(&self) -> bool {
        self.is_running() && self.ready
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// The reason a container waits before its first run: its Pod's init containers, or its own
/// creation.
pub(crate) fn first_waiting_reason(pod: &Pod) -> &'static str {
    let has_init = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.init_containers.as_ref())
        .is_some_and(|init| !init.is_empty());
    if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    }
}

impl PodStatusModel {
    pub(crate) fn new(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let main_reason = first_waiting_reason(pod);
        PodStatusModel {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            restart: Restart::from_policy(spec.restart_policy.as_deref()),
            start_time: Time(Timestamp::now()),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Slot::new(c, "PodInitializing"))
                .collect(),
            main: spec.containers.iter().map(|c| Slot::new(c, main_reason)).collect(),
            sandbox_ready: false,
            terminating: false,
            conditions: BTreeMap::new(),
        }
    }

    /// Marks every container that has not started yet as waiting for `reason`.
    pub(crate) fn set_waiting(&mut self, reason: &str, message: &str) {
        for slot in self.init.iter_mut().chain(self.main.iter_mut()) {
            if slot.runs == 0 {
                slot.state = waiting(reason, Some(message.to_owned()));
            }
        }
    }

    /// The Pod's volumes and environment are ready: its containers can start.
    pub(crate) fn set_sandbox_ready(&mut self) {
        self.sandbox_ready = true;
        let reason = if self.init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        for slot in self.init.iter_mut().chain(self.main.iter_mut()) {
            if slot.runs == 0 && slot.state.waiting.is_some() {
                slot.state = waiting(reason, None);
            }
        }
    }

    /// The Pod is being deleted and its containers have stopped.
    pub(crate) fn set_terminating(&mut self) {
        self.terminating = true;
    }

    pub(crate) fn apply(&mut self, event: &ContainerEvent) {
        let name = match event {
            ContainerEvent::Started { name, .. }
            | ContainerEvent::StartupSucceeded { name }
            | ContainerEvent::ReadinessChanged { name, .. }
            | ContainerEvent::Exited { name, .. } => name,
        };
        let Some(slot) = self
            .init
            .iter_mut()
            .chain(self.main.iter_mut())
            .find(|slot| slot.name == *name)
        else {
            return;
        };
        match event {
            ContainerEvent::Started { at, .. } => {
                slot.runs += 1;
                slot.started = !slot.has_startup_probe;
                slot.ready = slot.started && !slot.has_readiness_probe;
                slot.state = ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(at.clone()),
                    }),
                    ..ContainerState::default()
                };
            }
            ContainerEvent::StartupSucceeded { .. } => {
                slot.started = slot.is_running();
                slot.ready = slot.started && !slot.has_readiness_probe;
            }
            ContainerEvent::ReadinessChanged { ready, .. } => slot.ready = slot.started && *ready,
            ContainerEvent::Exited { exit, backoff, .. } => {
                if !slot.is_running() {
                    // It never got to run: the start itself failed, and counts as a run.
                    slot.runs += 1;
                }
                slot.started = false;
                slot.ready = false;
                let terminated = ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: exit.code,
                        signal: exit.signal,
                        reason: Some(exit.reason.clone()),
                        message: exit.message.clone(),
                        started_at: Some(exit.started_at.clone()),
                        finished_at: Some(exit.finished_at.clone()),
                        container_id: Some(container_id(&self.uid, name, slot.runs)),
                    }),
                    ..ContainerState::default()
                };
                if let Some(message) = backoff {
                    slot.last_state = Some(terminated);
                    slot.state = waiting("CrashLoopBackOff", Some(message.clone()));
                } else {
                    slot.state = terminated;
                    slot.done = Some(exit.code);
                }
            }
        }
    }

    /// Init containers all completed successfully (or there are none).
    pub(crate) fn initialized(&self) -> bool {
        self.init.iter().all(|slot| slot.done == Some(0))
    }

    /// An init container failed and will not be retried.
    fn init_failed(&self) -> bool {
        self.init.iter().any(|slot| slot.done.is_some_and(|code| code != 0))
    }

    /// The phase by a kubelet's rules.
    pub(crate) fn phase(&self) -> &'static str {
        if self.init_failed() && self.restart == Restart::Never {
            return "Failed";
        }
        let stopped = self.main.iter().filter(|slot| slot.is_stopped()).count();
        let succeeded = self
            .main
            .iter()
            .filter(|slot| slot.is_stopped() && slot.succeeded())
            .count();
        if self.terminating {
            return if succeeded == self.main.len() {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        let running = self.main.iter().filter(|slot| slot.is_running()).count();
        let waiting = self.main.len() - running - stopped;
        if !self.initialized() || waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 && self.restart == Restart::Always {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if self.restart == Restart::Never {
            "Failed"
        } else {
            "Running"
        }
    }

    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    /// The full status, as the status subresource should hold it. `scheduled` is the Pod's
    /// PodScheduled condition as the binding set it, kept as is.
    pub(crate) fn status(&mut self, scheduled: Option<PodCondition>) -> PodStatus {
        let phase = self.phase();
        let incomplete: Vec<String> = self
            .init
            .iter()
            .filter(|slot| slot.done != Some(0))
            .map(|slot| slot.name.clone())
            .collect();
        let unready: Vec<String> = self
            .main
            .iter()
            .filter(|slot| !slot.is_ready())
            .map(|slot| slot.name.clone())
            .collect();
        let completed = phase == "Succeeded";
        let (ready_reason, ready_message) = if completed {
            (Some("PodCompleted"), None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!("containers with unready status: [{}]", unready.join(" "))),
            )
        };
        let initialized_message = format!("containers with incomplete status: [{}]", incomplete.join(" "));
        let mut conditions = vec![
            self.condition("PodReadyToStartContainers", self.sandbox_ready, None, None),
            self.condition(
                "Initialized",
                incomplete.is_empty(),
                Some(if completed {
                    "PodCompleted"
                } else {
                    "ContainersNotInitialized"
                }),
                Some(initialized_message),
            ),
            self.condition(
                "Ready",
                unready.is_empty() && !completed,
                ready_reason,
                ready_message.clone(),
            ),
            self.condition(
                "ContainersReady",
                unready.is_empty() && !completed,
                ready_reason,
                ready_message,
            ),
        ];
        conditions.push(scheduled.unwrap_or_else(|| self.condition("PodScheduled", true, None, None)));
        PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            host_ip: Some("127.0.0.1".into()),
            host_ips: Some(vec![HostIP { ip: "127.0.0.1".into() }]),
            pod_ip: Some("127.0.0.1".into()),
            pod_ips: Some(vec![PodIP { ip: "127.0.0.1".into() }]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: Some(self.init.iter().map(|slot| self.container_status(slot)).collect()),
            container_statuses: Some(self.main.iter().map(|slot| self.container_status(slot)).collect()),
            ..PodStatus::default()
        }
    }

    /// A condition; `reason` and `message` apply only when it is False (a kubelet's Initialized
    /// of a completed Pod is the exception: True with reason PodCompleted).
    fn condition(
        &mut self,
        kind: &'static str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let entry = self
            .conditions
            .entry(kind)
            .or_insert_with(|| (status, Time(Timestamp::now())));
        if entry.0 != status {
            *entry = (status, Time(Timestamp::now()));
        }
        let completed_init = kind == "Initialized" && reason == Some("PodCompleted");
        PodCondition {
            type_: kind.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            last_transition_time: Some(entry.1.clone()),
            reason: (!status || completed_init).then(|| reason.map(str::to_owned)).flatten(),
            message: (!status).then_some(message).flatten(),
            ..PodCondition::default()
        }
    }

    fn container_status(&self, slot: &Slot) -> ContainerStatus {
        ContainerStatus {
            name: slot.name.clone(),
            image: slot.image.clone(),
            image_id: String::new(),
            container_id: (slot.runs > 0).then(|| container_id(&self.uid, &slot.name, slot.runs)),
            ready: slot.is_ready(),
            started: Some(slot.is_running() && slot.started),
            restart_count: (slot.runs - 1).max(0),
            state: Some(slot.state.clone()),
            last_state: slot.last_state.clone(),
            ..ContainerStatus::default()
        }
    }
}

fn container_id(uid: &str, name: &str, run: i32) -> String {
    format!("host-process://{uid}/{name}/{run}")
}
