#![allow(clippy::unwrap_used)]
//! The runner against the real test bed: the admin endpoints, leader election with two
//! replicas (only one runs; kill the leader and the other takes over; a clean stop releases
//! the Lease), and the client's bound on requests in flight.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use stowage_core::testing::free_port;
use stowage_e2e::{bed, wait_for};
use stowage_operator::runner::{self, Args};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn args(namespace: &str, kubeconfig: &std::path::Path, port: u16, pod: &str) -> Args {
    Args {
        namespace: namespace.to_string(),
        admin_address: format!("127.0.0.1:{port}").parse().unwrap(),
        log_format: "text".into(),
        leader_elect: true,
        lease_duration_seconds: 3,
        pod_name: Some(pod.to_string()),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        watch_namespace: None,
        max_requests_in_flight: runner::DEFAULT_REQUESTS_IN_FLIGHT,
    }
}

/// `GET path` on the admin server: (status code, body).
async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let code = response.split(' ').nth(1).unwrap_or("0").parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

type Started = Arc<Mutex<Vec<String>>>;

/// One replica: records its name when it starts reconciling and runs until told to stop.
fn replica(
    namespace: &str,
    kubeconfig: &std::path::Path,
    port: u16,
    name: &str,
    started: Started,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let args = args(namespace, kubeconfig, port, name);
    let name = name.to_string();
    tokio::spawn(runner::run("runner-test", args, shutdown, move |ctx| async move {
        started.lock().unwrap().push(name);
        ctx.shutdown.cancelled().await;
        Ok(())
    }))
}

#[tokio::test]
async fn two_replicas_one_leader_takeover_after_a_kill_and_release_on_a_clean_stop() {
    let bed = bed().await.unwrap();
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    bed.with_namespace("kit-leader", |client, namespace| async move {
        let started: Started = Arc::default();
        let (port_a, port_b) = (free_port()?, free_port()?);
        let a = replica(
            &namespace,
            &kubeconfig,
            port_a,
            "replica-a",
            started.clone(),
            CancellationToken::new(),
        );
        wait_for("replica-a to lead", || async {
            Ok((started.lock().unwrap().len() == 1).then_some(()))
        })
        .await?;

        let (code, _) = get(port_a, "/healthz").await?;
        assert_eq!(code, 200);
        let (code, _) = get(port_a, "/readyz").await?;
        assert_eq!(code, 200);
        let (code, metrics) = get(port_a, "/metrics").await?;
        assert_eq!(code, 200);
        assert!(metrics.contains("stowage_leader 1"), "{metrics}");

        let stop_b = CancellationToken::new();
        let b = replica(
            &namespace,
            &kubeconfig,
            port_b,
            "replica-b",
            started.clone(),
            stop_b.clone(),
        );
        let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let holder = |lease: &Lease| {
            lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default()
        };
        // Watch the leader renew twice while B is up and ready: B must stay a standby all along.
        wait_for("replica-b's admin server (a standby is ready)", || async {
            Ok(get(port_b, "/readyz")
                .await
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|_| ()))
        })
        .await?;
        for renewal in 0..2 {
            let before = leases.get("runner-test").await?.spec.and_then(|s| s.renew_time);
            wait_for(&format!("renewal {renewal} of the leader's Lease"), || async {
                let lease = leases.get("runner-test").await?;
                assert!(holder(&lease).starts_with("replica-a-"), "{lease:?}");
                Ok((lease.spec.and_then(|s| s.renew_time) != before).then_some(()))
            })
            .await?;
        }
        assert_eq!(
            *started.lock().unwrap(),
            vec!["replica-a".to_string()],
            "the standby must not reconcile"
        );
        let (_, standby_metrics) = get(port_b, "/metrics").await?;
        assert!(standby_metrics.contains("stowage_leader 0"), "{standby_metrics}");

        // Kill the leader: no clean release, so B takes over once the Lease expires.
        a.abort();
        let _ = a.await;
        wait_for("replica-b to take over", || async {
            Ok((started.lock().unwrap().len() == 2).then_some(()))
        })
        .await?;
        assert_eq!(started.lock().unwrap()[1], "replica-b");
        let lease = leases.get("runner-test").await?;
        assert!(holder(&lease).starts_with("replica-b-"), "{lease:?}");
        assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(1));

        // A clean stop (what SIGTERM does) releases the Lease at once.
        stop_b.cancel();
        b.await??;
        let lease = leases.get("runner-test").await?;
        assert_eq!(holder(&lease), "", "a clean stop releases the Lease: {lease:?}");
        Ok(())
    })
    .await
    .unwrap();
}

/// This process's established TCP connections to `port` (its sockets among /proc/net/tcp's).
fn connections_to(port: u16) -> anyhow::Result<usize> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let target = std::fs::read_link(fd?.path()).unwrap_or_default();
        if let Some(inode) = target.to_string_lossy().strip_prefix("socket:[") {
            inodes.insert(inode.trim_end_matches(']').to_string());
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp")? + &std::fs::read_to_string("/proc/net/tcp6")?;
    let remote = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[2].ends_with(&remote) && f[3] == "01" && inodes.contains(f[9]))
        .count())
}

#[tokio::test]
async fn a_client_holds_no_more_connections_than_requests_it_lets_in_flight() {
    let bed = bed().await.unwrap();
    let port = bed.config().cluster_url.port_u16().unwrap();
    let client = runner::client(Some(bed.kubeconfig_path()), 3).await.unwrap();
    let before = connections_to(port).unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let params = kube::api::ListParams::default();
    let lists = (0..40).map(|_| namespaces.list(&params));
    let answered = futures::future::try_join_all(lists).await.unwrap();
    assert_eq!(answered.len(), 40, "every request is answered, three at a time");
    // A request gives up its place when its answer's headers arrive, and its connection is
    // free again once the body is read: a few more connections than places (39 of 40 with no
    // bound, measured), never one each.
    let opened = connections_to(port).unwrap() - before;
    assert!(
        (1..=10).contains(&opened),
        "40 requests at once through a client that lets 3 in flight opened {opened} connections"
    );
}
