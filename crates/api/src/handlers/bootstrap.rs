//! What a fresh store gets at start: system namespaces and the `kubernetes` Service with its endpoints.

use super::*;

/// Another API server sharing the store may create the same bootstrap object at the same moment: losing that
/// race is fine.
async fn created_or_exists(ctx: &Ctx, key: &str, r: ApiResult<Value>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => match ctx.store.get(key).await? {
            Some(_) => Ok(()),
            None => Err(Error::Bootstrap(e.message)),
        },
    }
}

/// Create the system namespaces and the `kubernetes` Service with its Endpoints and EndpointSlice
/// (pointing at the advertise address); refresh the endpoints on every start.
pub async fn bootstrap(ctx: &Arc<Ctx>) -> Result<(), Error> {
    let berr = |e: ApiError| Error::Bootstrap(e.message);
    let opts = WriteOpts {
        dry_run: false,
        manager: "skiff-apiserver".into(),
        validation: "Ignore".into(),
    };
    let nsr = registry::find("", "v1", "namespaces")
        .ok_or_else(|| Error::Bootstrap("namespaces".into()))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if ctx.store.get(&nsr.key(None, ns)).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            let r = create_prepared(ctx, nsr, None, obj, &opts, None).await;
            created_or_exists(ctx, &nsr.key(None, ns), r).await?;
        }
    }
    let svcr =
        registry::find("", "v1", "services").ok_or_else(|| Error::Bootstrap("services".into()))?;
    let first_ip = ctx.alloc.first_ip().to_string();
    if ctx
        .store
        .get(&svcr.key(Some("default"), "kubernetes"))
        .await?
        .is_none()
    {
        let obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": first_ip, "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": ctx.port}]},
        });
        let r = create_prepared(ctx, svcr, Some("default"), obj, &opts, None).await;
        created_or_exists(ctx, &svcr.key(Some("default"), "kubernetes"), r).await?;
    } else {
        // Keep the targetPort in step with the port actually served.
        let cur = get_kv(ctx, svcr, Some("default"), "kubernetes")
            .await
            .map_err(berr)?;
        let mut v = from_kv(&cur).map_err(berr)?;
        if v["spec"]["ports"][0]["targetPort"] != json!(ctx.port) {
            v["spec"]["ports"][0]["targetPort"] = json!(ctx.port);
            finish_update(
                ctx,
                svcr,
                Some("default"),
                "kubernetes",
                &cur,
                v,
                None,
                &opts,
                false,
            )
            .await
            .map_err(berr)?;
        }
    }
    let ip = ctx.advertise.to_string();
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": ctx.port, "protocol": "TCP"}]}],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": if ctx.advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": ctx.port, "protocol": "TCP"}],
    });
    for (plural, group, obj) in [
        ("endpoints", "", ep),
        ("endpointslices", "discovery.k8s.io", slice),
    ] {
        let r =
            registry::find(group, "v1", plural).ok_or_else(|| Error::Bootstrap(plural.into()))?;
        match ctx.store.get(&r.key(Some("default"), "kubernetes")).await? {
            None => {
                let c = create_prepared(ctx, r, Some("default"), obj, &opts, None).await;
                created_or_exists(ctx, &r.key(Some("default"), "kubernetes"), c).await?;
            }
            Some(cur) => {
                let mut new = from_kv(&cur).map_err(berr)?;
                for k in ["subsets", "endpoints", "ports", "addressType"] {
                    if let Some(x) = obj.get(k) {
                        new[k] = x.clone();
                    }
                }
                finish_update(
                    ctx,
                    r,
                    Some("default"),
                    "kubernetes",
                    &cur,
                    new,
                    None,
                    &opts,
                    false,
                )
                .await
                .map_err(berr)?;
            }
        }
    }
    Ok(())
}
