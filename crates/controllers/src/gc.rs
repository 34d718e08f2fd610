use crate::context::Ctx;
use std::sync::Arc;
pub(crate) async fn run(_ctx: Arc<Ctx>) {
    std::future::pending::<()>().await
}
pub(crate) fn on_object(
    _ctx: &Arc<Ctx>,
    _old: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    _new: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) {
}
