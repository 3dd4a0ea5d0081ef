#![allow(clippy::unwrap_used)]
//! The HTTP/2 client against the real API server: it does speak HTTP/2, and many requests
//! in flight at once, with a watch open beside them, all arrive over it.

use std::collections::BTreeSet;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use stowage_e2e::bed;

#[tokio::test]
async fn requests_in_flight_share_one_http2_connection() {
    let bed = bed().await.unwrap();
    let client = stowage_operator::http2::client(bed.config().clone()).unwrap();

    let version = client
        .send(
            http::Request::get("/version")
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        version.version(),
        http::Version::HTTP_2,
        "the API server answered over {:?}",
        version.version()
    );

    bed.with_namespace("kit-http2", |_, namespace| async move {
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let seen = tokio::spawn(
            watcher(maps.clone(), watcher::Config::default())
                .applied_objects()
                .map_ok(|map| map.metadata.name.unwrap_or_default())
                .take(300)
                .try_collect::<BTreeSet<String>>(),
        );
        let creations = (0..300).map(|index| {
            let maps = maps.clone();
            async move {
                let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("map-{index:03}")}}))?;
                maps.create(&PostParams::default(), &map).await?;
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(creations).await?;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(120), seen)
            .await
            .expect("the watch saw the 300 ConfigMaps")??;
        assert_eq!(seen.len(), 300, "the watch saw {} distinct ConfigMaps", seen.len());
        Ok(())
    })
    .await
    .unwrap();
}
