//! The error policy and the reporter shared by every controller.
//!
//! An invalid spec waits for the user to change the object; anything else is retried
//! with per-object exponential backoff (5 s doubling to 5 min) that resets on success.
//! The reporter logs each reconcile's outcome once and counts it.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{Context, Error};

const FIRST_RETRY: Duration = Duration::from_secs(5);
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// The delay before retry number `failures` (1-based): 5 s, 10 s, 20 s, … capped at 5 min.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(LONGEST_RETRY)
}

fn key<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{}/{name}", K::kind(&()), namespace.unwrap_or(""))
}

/// kube's error policy: wait for a change after a user error, back off after anything else.
pub fn error_policy<K, C>(object: Arc<K>, error: &Error, ctx: Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    C: AsRef<Context>,
{
    if error.awaits_change() {
        return Action::await_change();
    }
    let ctx = (*ctx).as_ref();
    let key = key::<K>(
        object.meta().namespace.as_deref(),
        object.meta().name.as_deref().unwrap_or(""),
    );
    let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = failures.entry(key).or_insert(0);
    *count = count.saturating_add(1);
    Action::requeue(backoff(*count))
}

type RunResult<K> = Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>;

/// Logs one reconcile's outcome, counts it, and resets the object's backoff on success.
pub fn report<K>(ctx: &Context, result: RunResult<K>)
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&());
    match result {
        Ok((object, action)) => {
            let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            failures.remove(&key::<K>(object.namespace.as_deref(), &object.name));
            ctx.metrics.reconciles.with_label_values(&[&kind, "Ok"]).inc();
            tracing::debug!(kind = %kind, namespace = object.namespace.as_deref().unwrap_or(""), name = %object.name, ?action, "reconciled");
        }
        Err(controller::Error::ReconcilerFailed(error, object)) => {
            ctx.metrics.reconciles.with_label_values(&[&kind, error.reason()]).inc();
            tracing::warn!(kind = %kind, namespace = object.namespace.as_deref().unwrap_or(""), name = %object.name, reason = error.reason(), %error, "reconcile failed");
        }
        Err(controller::Error::ObjectNotFound(object)) => {
            tracing::debug!(kind = %kind, name = %object.name, "object gone before its reconcile");
        }
        Err(error) => {
            ctx.metrics
                .reconciles
                .with_label_values(&[&kind, "ControllerError"])
                .inc();
            tracing::warn!(kind = %kind, %error, "controller error");
        }
    }
}

/// Runs `controller` with `reconcile` and the shared error policy and reporter until
/// `shutdown` is cancelled; reconciles in flight then finish before this returns.
pub async fn run_controller<K, C, F, Fut>(
    controller: Controller<K>,
    ctx: Arc<C>,
    shutdown: CancellationToken,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    C: AsRef<Context> + Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let reporter = ctx.clone();
    controller
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy::<K, C>, ctx)
        .for_each(|result| {
            report((*reporter).as_ref(), result);
            std::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
