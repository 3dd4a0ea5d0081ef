//! The scheduler against the real test bed, running in-process in each test's namespace.
//!
//! Runs are synthetic: the test plays the run kind's controller by patching each run's
//! status (phase, completionTime) itself, so these tests prove the scheduler alone.
//! Nothing here measures time: waits are for conditions, with generous timeouts.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use stowage_api::{BackupSchedule, RunKind};
use stowage_e2e::{bed, wait_for};
use stowage_operator::conditions::{find, to_time};
use stowage_scheduler_ctrl::runs;
use support::*;

#[tokio::test]
async fn a_seconds_schedule_creates_runs_and_forbid_skips_ticks_while_one_is_active() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-forbid", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let schedule = create_schedule(
            &client,
            &namespace,
            "db",
            json!({"schedule": "*/2 * * * * *", "template": exec_template()}),
        )
        .await?;
        let first = wait_runs(&client, &namespace, "db", 1).await?.remove(0);
        let first_name = first.name_any();
        assert!(first_name.starts_with("db-"), "{first_name}");
        assert_eq!(first.labels()["stowage.io/schedule"], "db");
        assert_eq!(first.labels()["app"], "db");
        assert_eq!(first.data["spec"]["backup"]["command"][0], "pg_dumpall");
        let owner = &first.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("BackupSchedule", schedule.uid().unwrap().as_str())
        );

        // The next ticks come while the first run is active: Forbid skips them.
        wait_event(&client, &namespace, "db", "TickSkipped").await?;
        let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?;
        assert_eq!(runs.len(), 1, "Forbid created a run while one was active");
        let status = get_schedule(&client, &namespace, "db").await?.status.unwrap();
        assert_eq!(status.active.len(), 1);
        assert!(status.next_schedule_time.is_some());
        assert!(find(&status.conditions, "Ready").is_some_and(|c| c.status == "True"));

        // Once it succeeds, the next tick creates the next run.
        finish(&client, &namespace, &first_name, "Succeeded", Utc::now()).await?;
        let runs = wait_runs(&client, &namespace, "db", 2).await?;
        assert!(runs.iter().any(|r| r.name_any() != first_name && phase(r).is_none()));
        wait_event(&client, &namespace, "db", "RunSucceeded").await?;
        let status = wait_for("lastSuccessfulTime in status", || async {
            let status = get_schedule(&client, &namespace, "db")
                .await?
                .status
                .unwrap_or_default();
            Ok(status.last_successful_time.is_some().then_some(status))
        })
        .await?;
        assert!(status.last_schedule_time.is_some());
        let metrics = scheduler.metrics();
        assert!(metrics.contains("stowage_schedule_runs_created_total{"), "{metrics}");
        assert!(metrics.contains("reason=\"ConcurrencyForbid\""), "{metrics}");
        assert!(
            metrics.contains("stowage_schedule_lag_seconds_count{kind=\"ExecBackup\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("stowage_last_success_timestamp_seconds{"), "{metrics}");
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn replace_deletes_the_active_run_and_allow_runs_them_side_by_side() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-replace", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let spec = |policy: &str| {
            json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": policy, "template": exec_template()})
        };
        create_schedule(&client, &namespace, "replace", spec("Replace")).await?;
        create_schedule(&client, &namespace, "allow", spec("Allow")).await?;

        let first = wait_runs(&client, &namespace, "replace", 1).await?.remove(0).name_any();
        wait_for("the active run to be replaced by a new one", || async {
            let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "replace").await?;
            Ok((runs.len() == 1 && runs[0].name_any() != first).then_some(()))
        })
        .await?;
        let message = wait_event(&client, &namespace, "replace", "RunReplaced").await?;
        assert!(message.contains(&first), "{message}");

        let runs = wait_runs(&client, &namespace, "allow", 2).await?;
        assert!(runs.iter().all(|r| phase(r).is_none()), "Allow: several active runs at once");
        let status = wait_for("two active runs in the Allow schedule's status", || async {
            let status = get_schedule(&client, &namespace, "allow").await?.status.unwrap_or_default();
            Ok((status.active.len() >= 2).then_some(status))
        })
        .await?;
        assert!(status.active.iter().all(|a| a.kind == "ExecBackup"));
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn suspend_stops_runs_and_resume_starts_them_again() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-suspend", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Allow", "template": exec_template()});
        create_schedule(&client, &namespace, "db", spec).await?;
        wait_runs(&client, &namespace, "db", 1).await?;

        patch_spec(&client, &namespace, "db", json!({"suspend": true})).await?;
        let suspended = wait_condition(&client, &namespace, "db", "Suspended", "True", "Suspended").await?;
        assert!(suspended.status.unwrap().next_schedule_time.is_none());
        wait_event(&client, &namespace, "db", "Suspended").await?;
        let before = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?.len();
        // Several ticks pass while suspended (a pause, not a measurement): no run appears.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?.len();
        assert_eq!(during, before, "a suspended schedule created runs");

        patch_spec(&client, &namespace, "db", json!({"suspend": false})).await?;
        wait_condition(&client, &namespace, "db", "Suspended", "False", "Active").await?;
        wait_event(&client, &namespace, "db", "Resumed").await?;
        wait_runs(&client, &namespace, "db", before + 1).await?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn history_limits_delete_the_oldest_finished_runs() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-history", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Allow",
            "successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1, "template": exec_template()});
        create_schedule(&client, &namespace, "db", spec).await?;
        let finished = finish_runs(&client, &namespace, "db", 6, |i| {
            if i % 3 == 2 { "Failed" } else { "Succeeded" }
        })
        .await?;
        let mut expected = newest(&finished, "Succeeded", 2);
        expected.extend(newest(&finished, "Failed", 1));
        expected.sort();
        wait_for("the history limits to leave 2 successful and 1 failed run", || async {
            let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?;
            let names: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
            Ok((names == expected).then_some(()))
        })
        .await?;
        let message = wait_event(&client, &namespace, "db", "RunsDeleted").await?;
        assert!(message.contains("history limits"), "{message}");
        wait_event(&client, &namespace, "db", "RunFailed").await?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn keep_last_retention_keeps_the_newest_and_pinned_runs() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-retention", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let spec = json!({"schedule": "*/2 * * * * *", "concurrencyPolicy": "Allow",
            "retention": {"keepLast": 1}, "template": exec_template()});
        create_schedule(&client, &namespace, "db", spec).await?;
        let pinned = wait_runs(&client, &namespace, "db", 1).await?.remove(0).name_any();
        let api = runs::api(&client, RunKind::ExecBackup, &namespace);
        let label = json!({"metadata": {"labels": {"stowage.io/keep": "true"}}});
        api.patch(&pinned, &PatchParams::default(), &Patch::Merge(&label))
            .await?;

        let finished = finish_runs(&client, &namespace, "db", 4, |_| "Succeeded").await?;
        assert!(finished.iter().any(|(n, _, _)| *n == pinned));
        let mut expected = newest(&finished, "Succeeded", 1);
        expected.push(pinned.clone());
        expected.sort();
        expected.dedup();
        wait_for("retention to keep the newest run and the pinned one", || async {
            let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "db").await?;
            let names: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
            Ok((names == expected).then_some(()))
        })
        .await?;
        let message = wait_event(&client, &namespace, "db", "RunsDeleted").await?;
        assert!(message.contains("retention"), "{message}");
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tenant_schedule_of_a_cluster_scoped_kind_is_refused() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-tenant", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let template = json!({"kind": "ResourceBackup",
            "spec": {"resourceSetName": "everything", "storage": {"name": "s3"}}});
        create_schedule(
            &client,
            &namespace,
            "cluster",
            json!({"schedule": "* * * * * *", "template": template}),
        )
        .await?;
        let refused = wait_condition(
            &client,
            &namespace,
            "cluster",
            "Ready",
            "False",
            "ClusterScopedKindForbidden",
        )
        .await?;
        let message = wait_event(&client, &namespace, "cluster", "ClusterScopedKindForbidden").await?;
        assert!(message.contains("'stowage-system'"), "{message}");
        assert!(refused.status.unwrap().next_schedule_time.is_none());
        let runs = list_runs(&client, RunKind::ResourceBackup, &namespace, "cluster").await?;
        assert!(runs.is_empty(), "a tenant created cluster-scoped runs: {runs:?}");
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn invalid_schedules_time_zones_templates_and_kinds_create_no_runs() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-invalid", |client, namespace| async move {
        // Running in this namespace, so cluster-scoped templates get as far as the dry run.
        let scheduler = Scheduler::start(&client, &namespace, &namespace, None).await?;
        create_schedule(
            &client,
            &namespace,
            "cron",
            json!({"schedule": "61 * * * *", "template": exec_template()}),
        )
        .await?;
        let spec = json!({"schedule": "@daily", "timeZone": "Mars/Olympus_Mons", "template": exec_template()});
        create_schedule(&client, &namespace, "zone", spec).await?;
        let template = json!({"kind": "ResourceBackup", "spec": {"storage": {"name": "s3"}}});
        create_schedule(
            &client,
            &namespace,
            "template",
            json!({"schedule": "* * * * * *", "template": template}),
        )
        .await?;

        for name in ["cron", "zone"] {
            let schedule =
                wait_condition(&client, &namespace, name, "InvalidSchedule", "True", "InvalidSchedule").await?;
            let ready = find(&schedule.status.as_ref().unwrap().conditions, "Ready")
                .cloned()
                .unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "InvalidSchedule")
            );
            wait_event(&client, &namespace, name, "InvalidSchedule").await?;
        }
        let zone = get_schedule(&client, &namespace, "zone").await?;
        let message = find(&zone.status.unwrap().conditions, "Ready").unwrap().message.clone();
        assert!(message.contains("unknown time zone 'Mars/Olympus_Mons'"), "{message}");

        wait_condition(&client, &namespace, "template", "Ready", "False", "InvalidSpec").await?;
        let message = wait_event(&client, &namespace, "template", "InvalidSpec").await?;
        assert!(message.contains("resourceSetName"), "{message}");

        // An unknown kind never gets in: the CRD's enum refuses it.
        let unknown = json!({"schedule": "@daily", "template": {"kind": "PodBackup", "spec": {}}});
        let error = create_schedule(&client, &namespace, "unknown", unknown)
            .await
            .expect_err("a schedule of an unknown kind was accepted");
        let error = format!("{error:#}");
        assert!(error.contains("PodBackup") && error.contains("ExecBackup"), "{error}");

        for name in ["cron", "zone"] {
            assert!(
                list_runs(&client, RunKind::ExecBackup, &namespace, name)
                    .await?
                    .is_empty()
            );
        }
        assert!(
            list_runs(&client, RunKind::ResourceBackup, &namespace, "template")
                .await?
                .is_empty()
        );
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restart_does_not_fire_a_tick_twice_and_late_ticks_respect_the_deadline() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-restart", |client, namespace| async move {
        // The clock stands one second after the next full hour: exactly one tick is due.
        let hour = DateTime::from_timestamp((Utc::now().timestamp() / 3600 + 1) * 3600, 0).unwrap();
        let clock = hour + chrono::Duration::seconds(1);
        let spec = json!({"schedule": "0 * * * *", "template": exec_template()});
        create_schedule(&client, &namespace, "hourly", spec).await?;
        let late = json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 0, "template": exec_template()});
        create_schedule(&client, &namespace, "strict", late).await?;

        let first = Scheduler::start(&client, &namespace, "stowage-system", Some(clock)).await?;
        let runs = wait_runs(&client, &namespace, "hourly", 1).await?;
        assert_eq!(runs[0].name_any(), format!("hourly-{}", hour.timestamp()));
        wait_for("lastScheduleTime to be the hour", || async {
            let status = get_schedule(&client, &namespace, "hourly")
                .await?
                .status
                .unwrap_or_default();
            Ok((status.last_schedule_time == Some(to_time(hour))).then_some(()))
        })
        .await?;
        let message = wait_event(&client, &namespace, "strict", "MissedSchedule").await?;
        assert!(message.contains("startingDeadlineSeconds"), "{message}");
        first.stop().await?;

        // As if the controller had crashed after creating the run but before writing status.
        let api: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
        let forget = json!({"status": {"lastScheduleTime": null}});
        api.patch_status("hourly", &PatchParams::default(), &Patch::Merge(&forget))
            .await?;

        let second = Scheduler::start(&client, &namespace, "stowage-system", Some(clock)).await?;
        wait_for("the restarted scheduler to record the hour's run", || async {
            let status = get_schedule(&client, &namespace, "hourly")
                .await?
                .status
                .unwrap_or_default();
            Ok((status.last_schedule_time == Some(to_time(hour))).then_some(()))
        })
        .await?;
        assert_eq!(
            list_runs(&client, RunKind::ExecBackup, &namespace, "hourly")
                .await?
                .len(),
            1
        );
        let created = events(&client, &namespace, "hourly").await?;
        let created = created.iter().filter(|(reason, _)| reason == "RunCreated").count();
        assert_eq!(created, 1, "the tick fired twice");
        assert!(
            list_runs(&client, RunKind::ExecBackup, &namespace, "strict")
                .await?
                .is_empty()
        );
        second.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_manual_trigger_creates_a_cluster_scoped_run_from_the_controller_namespace() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-trigger", |client, namespace| async move {
        let scheduler = Scheduler::start(&client, &namespace, &namespace, None).await?;
        let template = json!({"kind": "ResourceBackup",
            "spec": {"resourceSetName": "everything", "storage": {"name": "s3"}}});
        let metadata = json!({"name": "yearly", "annotations": {"stowage.io/trigger": "first"}});
        create_schedule_with(
            &client,
            &namespace,
            metadata,
            json!({"schedule": "@yearly", "template": template}),
        )
        .await?;
        let result = async {
            let run = wait_for("the triggered ResourceBackup", || async {
                let runs = list_runs(&client, RunKind::ResourceBackup, &namespace, "yearly").await?;
                Ok(runs.into_iter().next())
            })
            .await?;
            assert_eq!(run.metadata.namespace, None);
            assert_eq!(run.labels()["stowage.io/schedule-namespace"], namespace);
            assert_eq!(run.annotations()["stowage.io/trigger"], "first");
            wait_for("lastTrigger in status", || async {
                let status = get_schedule(&client, &namespace, "yearly")
                    .await?
                    .status
                    .unwrap_or_default();
                Ok((status.last_trigger.as_deref() == Some("first")).then_some(()))
            })
            .await?;
            let runs = list_runs(&client, RunKind::ResourceBackup, &namespace, "yearly").await?;
            assert_eq!(runs.len(), 1, "one trigger, one run");
            anyhow::Ok(())
        }
        .await;
        // Cluster-scoped runs outlive the namespace: remove them whatever happened.
        let api = runs::api(&client, RunKind::ResourceBackup, &namespace);
        let selector = runs::selector(RunKind::ResourceBackup, &namespace, "yearly");
        api.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector))
            .await?;
        result?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn gfs_retention_over_synthetic_completed_runs_keeps_what_restic_would() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await.unwrap();
    bed.with_namespace("sched-gfs", |client, namespace| async move {
        // Ten daily runs, 2026-01-11 to 01-20 at 12:00 UTC (the 19th is a Monday), one
        // pinned, and two failed ones; all finished before the schedule exists, so the
        // scheduler decides once, over the whole history.
        let api = runs::api(&client, RunKind::ExecBackup, &namespace);
        let day = |d: u32| format!("2026-01-{d:02}T12:00:00Z");
        let mut history: Vec<(String, String, &str)> = (11..=20)
            .map(|d| (format!("gfs-day{d}"), day(d), "Succeeded"))
            .collect();
        history.push(("gfs-failed14".into(), "2026-01-14T13:00:00Z".into(), "Failed"));
        history.push(("gfs-failed15".into(), "2026-01-15T13:00:00Z".into(), "Failed"));
        for (name, completed, phase) in &history {
            let mut labels = json!({"stowage.io/schedule": "gfs"});
            if name == "gfs-day12" {
                labels["stowage.io/keep"] = json!("true");
            }
            let mut run: kube::api::DynamicObject = serde_json::from_value(json!({
                "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
                "metadata": {"name": name, "labels": labels},
                "spec": exec_template()["spec"],
            }))?;
            run.metadata.namespace = Some(namespace.clone());
            api.create(&Default::default(), &run).await?;
            let status = json!({"status": {"phase": phase, "completionTime": completed}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }

        let scheduler = Scheduler::start(&client, &namespace, "stowage-system", None).await?;
        let spec = json!({"schedule": "@yearly", "failedRunsHistoryLimit": 1,
            "retention": {"keepDaily": 3, "keepWeekly": 2, "keepMonthly": 2},
            "template": exec_template()});
        create_schedule(&client, &namespace, "gfs", spec).await?;
        // restic forget --keep-daily 3 --keep-weekly 2 --keep-monthly 2 on this history:
        // daily keeps the 20th, 19th, 18th; weekly the 20th (week of the 19th) and the 18th
        // (week of the 12th); monthly the 20th (January) and, with a count left, the
        // oldest run, the 11th. The pinned 12th and the newest failed run stay too.
        let expected: Vec<String> = [
            "gfs-day11",
            "gfs-day12",
            "gfs-day18",
            "gfs-day19",
            "gfs-day20",
            "gfs-failed15",
        ]
        .map(String::from)
        .to_vec();
        wait_for("retention to leave what restic's forget would", || async {
            let runs = list_runs(&client, RunKind::ExecBackup, &namespace, "gfs").await?;
            let names: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
            Ok((names == expected).then_some(()))
        })
        .await?;
        let message = wait_event(&client, &namespace, "gfs", "RunsDeleted").await?;
        assert!(message.contains("retention"), "{message}");
        for deleted in ["gfs-day13", "gfs-day17", "gfs-failed14"] {
            assert!(message.contains(deleted), "{message}");
        }
        // The pass that deleted the runs writes the status after queueing its Event.
        let day20 = Some(to_time(
            DateTime::parse_from_rfc3339(&day(20)).unwrap().with_timezone(&Utc),
        ));
        wait_for("lastSuccessfulTime to be the newest successful run's", || async {
            let status = get_schedule(&client, &namespace, "gfs").await?.status;
            Ok(status.filter(|s| s.last_successful_time == day20).map(|_| ()))
        })
        .await?;
        scheduler.stop().await
    })
    .await
    .unwrap();
}
