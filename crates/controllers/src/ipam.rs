use crate::context::Ctx;
use std::sync::Arc;
pub(crate) async fn run(_ctx: Arc<Ctx>) {
    std::future::pending::<()>().await
}
