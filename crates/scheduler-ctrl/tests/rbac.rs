//! deploy/scheduler-ctrl's RBAC against the real apiserver: the scheduler, running as its
//! ServiceAccount (impersonated), does its whole job with it, and may do nothing else that
//! matters: create and delete runs, read schedules and write their status, and no more.
#![allow(clippy::unwrap_used)]

mod support;

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stowage_api::RunKind;
use stowage_e2e::crds::repo_root;
use stowage_e2e::{bed, wait_for};
use support::*;

const ACCOUNT: &str = "system:serviceaccount:stowage-system:scheduler-ctrl";

/// Applies the RBAC objects of deploy/scheduler-ctrl (not its Deployment: no image runs here).
async fn apply_rbac(bed: &stowage_e2e::bed::TestBed) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(bed.client());
    if namespaces.get_opt("stowage-system").await?.is_none() {
        let namespace = serde_json::from_value(json!({"metadata": {"name": "stowage-system"}}))?;
        // Another test binary may create it at the same moment.
        let _ = namespaces.create(&PostParams::default(), &namespace).await;
    }
    let rendered = bed
        .kubectl([
            "kustomize".as_ref(),
            repo_root().join("deploy/scheduler-ctrl").as_os_str(),
        ])
        .await?;
    let rbac: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|document| !document.contains("kind: Deployment"))
        .collect();
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rbac.join("\n---\n"))?;
    bed.kubectl([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "--force-conflicts".as_ref(),
        "-f".as_ref(),
        file.path().as_os_str(),
    ])
    .await?;
    Ok(())
}

/// A client acting as the scheduler's ServiceAccount.
fn as_scheduler(bed: &stowage_e2e::bed::TestBed) -> anyhow::Result<Client> {
    let mut config = bed.config().clone();
    config.auth_info.impersonate = Some(ACCOUNT.to_string());
    Ok(Client::try_from(config)?)
}

/// Whether the impersonated client may `verb` on `resource` (group stowage.io unless given).
async fn allowed(client: &Client, verb: &str, group: &str, resource: &str, namespace: &str) -> anyhow::Result<bool> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                 "subresource": subresource, "namespace": namespace}},
    }))?;
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[tokio::test]
async fn the_deployed_rbac_lets_the_scheduler_work_and_no_more() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    apply_rbac(bed).await.unwrap();
    bed.with_namespace("sched-rbac", |client, namespace| async move {
        let scheduler_client = as_scheduler(bed)?;
        // RBAC bindings take effect at once, but the authorizer's cache may lag a moment.
        wait_for("the scheduler's ClusterRole to be in force", || async {
            Ok(
                allowed(&scheduler_client, "create", "stowage.io", "execbackups", &namespace)
                    .await?
                    .then_some(()),
            )
        })
        .await?;

        // Its whole job, as the ServiceAccount: dry-run and create runs, status, Events,
        // history limits deleting runs.
        let scheduler = Scheduler::start(&scheduler_client, &namespace, "stowage-system", None).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Allow",
            "successfulRunsHistoryLimit": 1, "template": exec_template()});
        create_schedule(&client, &namespace, "db", spec).await?;
        let finished = finish_runs(&client, &namespace, "db", 3, |_| "Succeeded").await?;
        let expected = newest(&finished, "Succeeded", 1);
        wait_for("the history limit to leave one run", || async {
            let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?;
            let names: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
            Ok((names == expected).then_some(()))
        })
        .await?;
        wait_event(&client, &namespace, "db", "RunCreated").await?;
        wait_event(&client, &namespace, "db", "RunsDeleted").await?;
        wait_for("a last success in the schedule's status", || async {
            let status = get_schedule(&client, &namespace, "db").await?.status;
            Ok(status.and_then(|s| s.last_successful_time).map(|_| ()))
        })
        .await?;
        scheduler.stop().await?;

        for (verb, resource) in [
            ("create", "execbackups"),
            ("delete", "execbackups"),
            ("create", "volumebackups"),
            ("create", "resourcebackups"),
            ("delete", "etcdbackups"),
            ("watch", "backupschedules"),
            ("patch", "backupschedules/status"),
        ] {
            let may = allowed(&scheduler_client, verb, "stowage.io", resource, &namespace).await?;
            assert!(may, "the scheduler may not {verb} {resource}");
        }
        for (verb, group, resource) in [
            ("update", "stowage.io", "execbackups"),
            ("patch", "stowage.io", "execbackups"),
            ("patch", "stowage.io", "execbackups/status"),
            ("create", "stowage.io", "backupschedules"),
            ("update", "stowage.io", "backupschedules"),
            ("delete", "stowage.io", "backupschedules"),
            ("create", "stowage.io", "execrestores"),
            ("create", "stowage.io", "resourcerestores"),
            ("get", "stowage.io", "backupstorages"),
            ("get", "", "secrets"),
            ("create", "", "pods"),
            ("create", "", "pods/exec"),
        ] {
            let may = allowed(&scheduler_client, verb, group, resource, &namespace).await?;
            assert!(
                !may,
                "the scheduler may {verb} {group}/{resource}, which it never needs"
            );
        }
        Ok(())
    })
    .await
    .unwrap();
}
