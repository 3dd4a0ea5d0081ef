//! `pods/log` and termination messages as a kubelet serves them, checked through the real
//! kube-apiserver as a user would.

use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, LogParams};
use serde_json::json;
use stowage_e2e::bed;
use stowage_e2e::bed::wait_for;
use stowage_e2e::pods::{first, phase, terminated, wait_pod};
use stowage_e2e::support::create;

#[tokio::test]
async fn logs_serve_every_option_as_a_kubelet_does() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-logs", |client, ns| async move {
        // The first run prints and fails; the second prints to both streams, with a pause
        // before its last line so that sinceTime can select it alone.
        let script = "if [ -f /state/ran ]; then echo second-run; sleep 0.3; echo to-stderr >&2; sleep 1.2; \
                      echo later; head -c 20000 /dev/zero | tr '\\0' x; echo; exec sleep infinity; fi; \
                      touch /state/ran; echo first-run; exit 1";
        create::<Pod>(
            &client,
            &ns,
            "app",
            json!({
                "containers": [{
                    "name": "main", "image": "busybox", "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "state", "mountPath": "/state" }],
                }],
                "volumes": [{ "name": "state", "emptyDir": {} }],
            }),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let long_line = format!("{}\n", "x".repeat(20000));
        let current = format!("second-run\nto-stderr\nlater\n{long_line}");
        wait_for("the second run's whole output in pods/log", || async {
            let logs = pods.logs("app", &LogParams::default()).await?;
            Ok((logs == current).then_some(()))
        })
        .await?;
        let logs = |params: LogParams| {
            let pods = pods.clone();
            async move { pods.logs("app", &params).await }
        };
        assert_eq!(first(&pods.get("app").await?).restart_count, 1);
        assert_eq!(
            logs(LogParams {
                previous: true,
                ..LogParams::default()
            })
            .await?,
            "first-run\n"
        );
        // tailLines counts the records of the CRI log file, as a kubelet does: the long line is
        // two of them (16 KiB partial, then the rest).
        assert_eq!(
            logs(LogParams {
                tail_lines: Some(3),
                ..LogParams::default()
            })
            .await?,
            format!("later\n{long_line}")
        );
        assert_eq!(
            logs(LogParams {
                limit_bytes: Some(8),
                ..LogParams::default()
            })
            .await?,
            "second-r"
        );

        let stamped = logs(LogParams {
            timestamps: true,
            ..LogParams::default()
        })
        .await?;
        let lines: Vec<&str> = stamped.lines().collect();
        assert_eq!(lines.len(), 4, "{stamped:.200}");
        let stamp = |line: &str| -> anyhow::Result<(Timestamp, String)> {
            let (time, content) = line.split_once(' ').expect("a timestamp, a space and the line");
            Ok((time.parse::<Timestamp>()?, content.to_owned()))
        };
        let mut times = Vec::new();
        for (line, expected) in lines.iter().zip(["second-run", "to-stderr", "later"]) {
            let (time, content) = stamp(line)?;
            assert_eq!(content, expected);
            times.push(time);
        }
        // Each record of the long line carries its own timestamp, as a kubelet shows them.
        let (first_time, rest) = stamp(lines[3])?;
        let (first_part, second) = rest.split_at(16 * 1024);
        let (second_time, second_part) = stamp(second)?;
        assert_eq!(format!("{first_part}{second_part}\n"), long_line);
        times.extend([first_time, second_time]);
        assert!(times.is_sorted(), "timestamps in order: {times:?}");

        // sinceTime travels in whole seconds (kube-rs rounds to the nearest): from the second
        // in which "later" was written; the stderr line came more than a second earlier.
        let since_later = logs(LogParams {
            since_time: Some(Timestamp::from_second(times[2].as_second())?),
            ..LogParams::default()
        })
        .await?;
        assert_eq!(since_later, format!("later\n{long_line}"));
        let recent = logs(LogParams {
            since_seconds: Some(3600),
            ..LogParams::default()
        })
        .await?;
        assert_eq!(recent, current);
        wait_for("sinceSeconds=1 to leave out the lines written earlier", || async {
            let recent = pods
                .logs(
                    "app",
                    &LogParams {
                        since_seconds: Some(1),
                        ..LogParams::default()
                    },
                )
                .await?;
            Ok(recent.is_empty().then_some(()))
        })
        .await?;

        // A container that never restarted has no previous run: kubelet's 400.
        create::<Pod>(
            &client,
            &ns,
            "fresh",
            json!({ "containers": [{ "name": "main", "image": "busybox" }] }),
        )
        .await?;
        wait_pod(&client, &ns, "fresh", "to run", |pod| phase(pod) == "Running").await?;
        let error = pods
            .logs(
                "fresh",
                &LogParams {
                    previous: true,
                    ..LogParams::default()
                },
            )
            .await
            .expect_err("no previous run");
        let message = format!("{error}");
        assert!(
            message.contains("previous terminated container \"main\" in pod \"fresh\" not found"),
            "error: {message}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_followed_log_streams_output_and_ends_with_its_run() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-follow", |client, ns| async move {
        // Each run prints, pauses, prints and fails: the container restarts (Always).
        let script = "echo run-start; for i in 1 2 3; do sleep 0.5; echo tick $i; done; exit 1";
        create::<Pod>(
            &client,
            &ns,
            "looper",
            json!({
                "containers": [{ "name": "main", "image": "busybox", "command": ["sh", "-c", script] }],
            }),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_pod(&client, &ns, "looper", "to run", |pod| {
            first(pod).state.is_some_and(|state| state.running.is_some())
        })
        .await?;
        let stream = pods
            .log_stream(
                "looper",
                &LogParams {
                    follow: true,
                    ..LogParams::default()
                },
            )
            .await?;
        let lines: Vec<String> = stream.lines().try_collect().await?;
        // The follow ends with the run it followed, though the container is restarted.
        assert_eq!(lines.last().map(String::as_str), Some("tick 3"), "followed: {lines:?}");
        assert!(
            lines.iter().filter(|line| *line == "run-start").count() <= 1,
            "followed: {lines:?}"
        );
        // Between runs it waits in CrashLoopBackOff, the run before in its lastState.
        let pod = wait_pod(&client, &ns, "looper", "to wait in CrashLoopBackOff", |pod| {
            let status = first(pod);
            let waiting = status
                .state
                .and_then(|state| state.waiting)
                .and_then(|waiting| waiting.reason);
            waiting.as_deref() == Some("CrashLoopBackOff") && status.restart_count >= 1
        })
        .await?;
        let last = first(&pod)
            .last_state
            .and_then(|state| state.terminated)
            .expect("the last run");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(phase(&pod), "Running", "restartPolicy Always keeps the Pod Running");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn termination_messages_come_from_the_file_or_the_log() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-termination", |client, ns| async move {
        let job = |script: &str, extra: serde_json::Value| {
            let mut container = json!({ "name": "main", "image": "busybox", "command": ["sh", "-c", script] });
            if let (Some(container), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
                container.extend(extra.clone());
            }
            json!({ "restartPolicy": "Never", "containers": [container] })
        };
        create::<Pod>(
            &client,
            &ns,
            "file",
            job("echo 'bye from file' > /dev/termination-log; exit 3", json!({})),
        )
        .await?;
        create::<Pod>(
            &client,
            &ns,
            "custom-path",
            job(
                "echo done > /tmp/stowage-test-termination-message",
                json!({ "terminationMessagePath": "/tmp/stowage-test-termination-message" }),
            ),
        )
        .await?;
        let fallback = json!({ "terminationMessagePolicy": "FallbackToLogsOnError" });
        create::<Pod>(
            &client,
            &ns,
            "fallback",
            job(
                "for i in $(seq 100 199); do echo line-$i; done; exit 1",
                fallback.clone(),
            ),
        )
        .await?;
        create::<Pod>(&client, &ns, "fallback-ok", job("echo fine", fallback.clone())).await?;
        let mut cannot_run = job("", json!({}));
        cannot_run["containers"][0]["command"] = json!(["/no/such/program"]);
        create::<Pod>(&client, &ns, "cannot-run", cannot_run).await?;
        create::<Pod>(
            &client,
            &ns,
            "file-wins",
            job("echo from-log; echo from-file > /dev/termination-log; exit 1", fallback),
        )
        .await?;

        let ended = |name: &'static str| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let pod = wait_pod(&client, &ns, name, "to end", |pod| {
                    matches!(phase(pod), "Succeeded" | "Failed")
                })
                .await?;
                anyhow::Ok(terminated(&first(&pod)).expect("a terminated container"))
            }
        };
        let file = ended("file").await?;
        assert_eq!((file.exit_code, file.reason.as_deref()), (3, Some("Error")));
        assert_eq!(file.message.as_deref(), Some("bye from file\n"));
        let custom = ended("custom-path").await?;
        assert_eq!((custom.exit_code, custom.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(custom.message.as_deref(), Some("done\n"));
        let expected: String = (120..200).map(|i| format!("line-{i}\n")).collect();
        assert_eq!(
            ended("fallback").await?.message.as_deref(),
            Some(expected.as_str()),
            "the last 80 lines of the log"
        );
        assert_eq!(
            ended("fallback-ok").await?.message,
            None,
            "a container that succeeded gets no log fallback"
        );
        assert_eq!(ended("file-wins").await?.message.as_deref(), Some("from-file\n"));
        let cannot_run = ended("cannot-run").await?;
        assert_eq!(
            (cannot_run.exit_code, cannot_run.reason.as_deref()),
            (128, Some("StartError"))
        );
        let message = cannot_run.message.unwrap_or_default();
        assert!(
            message.contains("/no/such/program"),
            "the start error says why: {message}"
        );
        Ok(())
    })
    .await
}
