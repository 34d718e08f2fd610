use crate::context::Ctx;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::sync::Arc;
#[derive(Default)]
pub struct State {}
impl State {
    pub fn forget(&self, _k: &crate::informer::Key) {}
}
pub(crate) fn on_pod(_ctx: &Arc<Ctx>, _old: Option<&Pod>, _new: Option<&Pod>) {}
#[allow(dead_code)]
pub(crate) fn on_node(_ctx: &Arc<Ctx>, _old: Option<&Node>, _new: Option<&Node>) {}
pub(crate) async fn run(_ctx: Arc<Ctx>) {
    std::future::pending::<()>().await
}
