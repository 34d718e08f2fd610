use crate::context::Ctx;
use k8s_openapi::api::core::v1::Node;
use std::sync::Arc;
pub struct Pool;
impl Pool {
    pub fn parse(_s: &[String]) -> Result<Pool, String> {
        Ok(Pool)
    }
}
pub(crate) fn on_node(_ctx: &Arc<Ctx>, _old: Option<&Node>, _new: Option<&Node>) {}
pub(crate) async fn run(_ctx: Arc<Ctx>, _p: Pool) {
    std::future::pending::<()>().await
}
