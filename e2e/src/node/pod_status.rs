//! What a kubelet reports about a Pod, derived from its containers' lives.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Something that happened to one container process.
#[derive(Debug)]
pub(crate) enum ContainerEvent {
    Started { name: String, at: Time },
    Exited { name: String, exit: Exit, restarting: bool },
}

/// How a container process ended.
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
    start_time: Time,
    init: Vec<Slot>,
    main: Vec<Slot>,
    init_failed: bool,
    /// Condition type → (status, lastTransitionTime): the time moves only when the status flips.
    conditions: BTreeMap<&'static str, (bool, Time)>,
}

struct Slot {
    name: String,
    image: String,
    state: ContainerState,
    last_state: Option<ContainerState>,
    runs: i32,
    /// Terminated and not going to be restarted.
    done: Option<i32>,
}

impl Slot {
    fn new(container: &Container, reason: &str) -> Self {
        Slot {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            state: waiting(reason, None),
            last_state: None,
            runs: 0,
            done: None,
        }
    }

    fn is_running(&self) -> bool {
        self.state.running.is_some()
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

impl PodStatusModel {
    pub(crate) fn new(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|init| !init.is_empty());
        let main_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        PodStatusModel {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            start_time: Time(Timestamp::now()),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Slot::new(c, "PodInitializing"))
                .collect(),
            main: spec.containers.iter().map(|c| Slot::new(c, main_reason)).collect(),
            init_failed: false,
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

    pub(crate) fn apply(&mut self, event: &ContainerEvent) {
        let name = match event {
            ContainerEvent::Started { name, .. } | ContainerEvent::Exited { name, .. } => name,
        };
        let is_init = self.init.iter().any(|slot| slot.name == *name);
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
                slot.state = ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(at.clone()),
                    }),
                    ..ContainerState::default()
                };
            }
            ContainerEvent::Exited { exit, restarting, .. } => {
                let terminated = ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: exit.code,
                        signal: exit.signal,
                        reason: Some(exit.reason.clone()),
                        message: exit.message.clone(),
                        started_at: Some(exit.started_at.clone()),
                        finished_at: Some(exit.finished_at.clone()),
                        container_id: None,
                    }),
                    ..ContainerState::default()
                };
                if *restarting {
                    slot.last_state = Some(terminated);
                    slot.state = waiting(
                        "CrashLoopBackOff",
                        Some(format!("back-off restarting container {name}")),
                    );
                } else {
                    slot.state = terminated;
                    slot.done = Some(exit.code);
                    if is_init && exit.code != 0 {
                        self.init_failed = true;
                    }
                }
            }
        }
    }

    /// Init containers all completed successfully (or there are none).
    pub(crate) fn initialized(&self) -> bool {
        self.init.iter().all(|slot| slot.done == Some(0))
    }

    pub(crate) fn phase(&self) -> &'static str {
        if self.init_failed {
            "Failed"
        } else if !self.initialized() {
            "Pending"
        } else if self.main.iter().all(|slot| slot.done.is_some()) {
            if self.main.iter().all(|slot| slot.done == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.main.iter().all(|slot| slot.runs > 0) {
            "Running"
        } else {
            "Pending"
        }
    }

    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    /// The full status, as the status subresource should hold it.
    pub(crate) fn status(&mut self) -> PodStatus {
        let phase = self.phase();
        let ready = phase == "Running" && self.main.iter().all(Slot::is_running);
        let initialized = self.initialized();
        let mut conditions = Vec::new();
        for (kind, status) in [
            ("PodScheduled", true),
            ("Initialized", initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
        ] {
            let entry = self
                .conditions
                .entry(kind)
                .or_insert_with(|| (status, Time(Timestamp::now())));
            if entry.0 != status {
                *entry = (status, Time(Timestamp::now()));
            }
            let reason = match (kind, status, phase) {
                (_, true, _) => None,
                ("Ready" | "ContainersReady", false, "Succeeded" | "Failed") => Some("PodCompleted".to_owned()),
                ("Ready" | "ContainersReady", false, _) => Some("ContainersNotReady".to_owned()),
                _ => Some("ContainersNotInitialized".to_owned()),
            };
            conditions.push(PodCondition {
                type_: kind.to_owned(),
                status: if status { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(entry.1.clone()),
                reason,
                ..PodCondition::default()
            });
        }
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

    fn container_status(&self, slot: &Slot) -> ContainerStatus {
        let running = slot.is_running();
        ContainerStatus {
            name: slot.name.clone(),
            image: slot.image.clone(),
            image_id: String::new(),
            container_id: (slot.runs > 0).then(|| format!("host-process://{}/{}/{}", self.uid, slot.name, slot.runs)),
            ready: running,
            started: Some(running),
            restart_count: (slot.runs - 1).max(0),
            state: Some(slot.state.clone()),
            last_state: slot.last_state.clone(),
            ..ContainerStatus::default()
        }
    }
}
