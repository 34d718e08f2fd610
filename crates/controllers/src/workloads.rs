use crate::context::Ctx;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::sync::Arc;
pub(crate) fn on_pod(_ctx: &Arc<Ctx>, _old: Option<&Pod>, _new: Option<&Pod>) {}
pub(crate) fn on_node(_ctx: &Arc<Ctx>, _old: Option<&Node>, _new: Option<&Node>) {}
pub(crate) async fn run_statefulsets(_ctx: Arc<Ctx>) {
    std::future::pending::<()>().await
}
pub(crate) async fn run_daemonsets(_ctx: Arc<Ctx>) {
    std::future::pending::<()>().await
}
