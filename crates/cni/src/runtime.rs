//! The container-runtime side of CNI (what libcni does for containerd/CRI-O): load the first network
//! configuration in a directory, execute its plugins in order with `prevResult` chaining, cache the result for
//! CHECK and DEL, and run DEL in reverse order. Any spec-compliant plugin works (Debian's reference plugins
//! as well as skiff-cni).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::types::{CniError, CniResult};

/// How long one plugin invocation may take before it is considered hung.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {0}")]
    NoConfig(PathBuf),
    #[error("invalid CNI network configuration {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("failed to find plugin \"{plugin}\" in path {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("executing plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {plugin} timed out after {PLUGIN_TIMEOUT:?}")]
    Timeout { plugin: String },
    #[error("plugin type=\"{plugin}\" failed ({command}): {error}")]
    Plugin {
        plugin: String,
        command: &'static str,
        error: CniError,
    },
    #[error("plugin {plugin} printed an invalid result: {msg}")]
    BadOutput { plugin: String, msg: String },
    #[error("no cached result for container {container_id} interface {ifname} (never added?)")]
    NotCached {
        container_id: String,
        ifname: String,
    },
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The spec error object when a plugin reported one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            Error::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Who the attachment is for; becomes CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...) as kubelet sets them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A loaded network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Parse a `.conflist` or, with `single`, a `.conf` holding one plugin.
    pub fn parse(path: &Path, bytes: &[u8], single: bool) -> Result<NetworkConfigList, Error> {
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(bad("missing network name".into()));
        }
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let plugins = if single {
            vec![obj.clone()]
        } else {
            obj.get("plugins")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("missing plugins list".into()))?
                .iter()
                .map(|p| {
                    p.as_object()
                        .cloned()
                        .ok_or_else(|| bad("plugin entry is not an object".into()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        if plugins.is_empty() {
            return Err(bad("empty plugins list".into()));
        }
        for p in &plugins {
            if p.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(bad("plugin without type".into()));
            }
        }
        Ok(NetworkConfigList {
            path: path.to_path_buf(),
            name,
            cni_version,
            plugins,
        })
    }

    /// The stdin of one plugin: its entry plus the list's name and version, plus prevResult when given.
    fn plugin_config(&self, index: usize, prev_result: Option<&Value>) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        conf.remove("prevResult");
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }

    fn to_value(&self) -> Value {
        serde_json::json!({ "cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins })
    }
}

/// The cached state of one attachment, as libcni keeps it (`<cache>/results/<net>-<id>-<ifname>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    netns: String,
    pod: PodRef,
    /// The configuration list the attachment was made with: DEL uses it even after the file changed.
    config: Value,
    result: Value,
}

/// Runs CNI plugins for the node agent.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl CniRuntime {
    pub fn new(
        conf_dir: impl Into<PathBuf>,
        bin_dirs: Vec<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        CniRuntime {
            conf_dir: conf_dir.into(),
            bin_dirs,
            cache_dir: cache_dir.into(),
        }
    }

    /// The first configuration in `conf_dir` in lexical order (as libcni's ConfFiles + kubelet do).
    pub async fn load(&self) -> Result<NetworkConfigList, Error> {
        let mut entries = tokio::fs::read_dir(&self.conf_dir)
            .await
            .map_err(|_| Error::NoConfig(self.conf_dir.clone()))?;
        let mut files = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            if matches!(ext, "conflist" | "conf" | "json") {
                files.push(path);
            }
        }
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoConfig(self.conf_dir.clone()))?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| Error::Config {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let single = path.extension().and_then(|e| e.to_str()) != Some("conflist");
        NetworkConfigList::parse(&path, &bytes, single)
    }

    fn find_plugin(&self, kind: &str) -> Result<PathBuf, Error> {
        if kind.contains('/') {
            return Err(Error::PluginNotFound {
                plugin: kind.into(),
                dirs: self.bin_dirs.clone(),
            });
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::PluginNotFound {
                plugin: kind.into(),
                dirs: self.bin_dirs.clone(),
            })
    }

    fn cache_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    async fn exec(
        &self,
        command: &'static str,
        config: &Value,
        container_id: &str,
        netns: &str,
        ifname: &str,
        pod: &PodRef,
    ) -> Result<Option<Value>, Error> {
        let kind = config
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let binary = self.find_plugin(&kind)?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, container_id, pod.uid
        );
        let cni_path = std::env::join_paths(&self.bin_dirs).map_err(|e| Error::Exec {
            plugin: kind.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Exec {
                plugin: kind.clone(),
                source,
            })?;
        let input = serde_json::to_vec(config).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|source| Error::Exec {
                    plugin: kind.clone(),
                    source,
                })?;
        }
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                plugin: kind.clone(),
            })?
            .map_err(|source| Error::Exec {
                plugin: kind.clone(),
                source,
            })?;
        tracing::debug!(plugin = %kind, command, status = ?output.status, "CNI plugin ran");
        if !output.status.success() {
            let error = serde_json::from_slice::<CniError>(&output.stdout).unwrap_or_else(|_| {
                CniError::new(
                    0,
                    format!(
                        "plugin exited with {} and no error object: {}{}",
                        output.status,
                        String::from_utf8_lossy(&output.stdout).trim(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                )
            });
            return Err(Error::Plugin {
                plugin: kind,
                command,
                error,
            });
        }
        if command != "ADD" {
            return Ok(None);
        }
        let value: Value =
            serde_json::from_slice(&output.stdout).map_err(|e| Error::BadOutput {
                plugin: kind.clone(),
                msg: e.to_string(),
            })?;
        Ok(Some(value))
    }

    /// ADD: run every plugin in order, each given the previous one's result; the last result is the
    /// attachment's, cached for CHECK and DEL. On failure the plugins are torn down again (best effort).
    pub async fn add(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        pod: &PodRef,
    ) -> Result<CniResult, Error> {
        let list = self.load().await?;
        let netns_s = netns.display().to_string();
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let conf = list.plugin_config(i, prev.as_ref());
            match self
                .exec("ADD", &conf, container_id, &netns_s, ifname, pod)
                .await
            {
                Ok(result) => prev = result,
                Err(e) => {
                    let _ = self
                        .del_with(&list, container_id, &netns_s, ifname, pod, prev.as_ref())
                        .await;
                    return Err(e);
                }
            }
        }
        let value = prev.ok_or_else(|| Error::BadOutput {
            plugin: list.name.clone(),
            msg: "no result".into(),
        })?;
        let result: CniResult =
            serde_json::from_value(value.clone()).map_err(|e| Error::BadOutput {
                plugin: list.name.clone(),
                msg: e.to_string(),
            })?;
        let entry = CacheEntry {
            kind: "cniCacheV1".into(),
            container_id: container_id.into(),
            if_name: ifname.into(),
            network_name: list.name.clone(),
            netns: netns_s,
            pod: pod.clone(),
            config: list.to_value(),
            result: value,
        };
        let path = self.cache_path(&list.name, container_id, ifname);
        let cache_err = |source| Error::Cache {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(cache_err)?;
        }
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, serde_json::to_vec(&entry).unwrap_or_default())
            .await
            .map_err(cache_err)?;
        tokio::fs::rename(&tmp, &path).await.map_err(cache_err)?;
        Ok(result)
    }

    async fn read_cache(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Option<CacheEntry> {
        let bytes = tokio::fs::read(self.cache_path(network, container_id, ifname))
            .await
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The cached result of an earlier ADD (e.g. for an agent that restarts and adopts running pods).
    pub async fn cached_result(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CniResult>, Error> {
        let list = self.load().await?;
        Ok(self
            .read_cache(&list.name, container_id, ifname)
            .await
            .and_then(|entry| serde_json::from_value(entry.result).ok()))
    }

    async fn del_with(
        &self,
        list: &NetworkConfigList,
        container_id: &str,
        netns: &str,
        ifname: &str,
        pod: &PodRef,
        prev: Option<&Value>,
    ) -> Result<(), Error> {
        for i in (0..list.plugins.len()).rev() {
            let conf = list.plugin_config(i, prev);
            self.exec("DEL", &conf, container_id, netns, ifname, pod)
                .await?;
        }
        Ok(())
    }

    /// DEL: run every plugin in reverse order with the cached result as prevResult, then drop the cache.
    /// Idempotent: succeeds for attachments already gone; `netns` may be None when the namespace is gone.
    pub async fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        pod: &PodRef,
    ) -> Result<(), Error> {
        let current = self.load().await?;
        let cached = self.read_cache(&current.name, container_id, ifname).await;
        // Tear down with the configuration the attachment was made with, when it is known.
        let list = cached
            .as_ref()
            .and_then(|c| {
                let bytes = serde_json::to_vec(&c.config).ok()?;
                NetworkConfigList::parse(&current.path, &bytes, false).ok()
            })
            .unwrap_or(current);
        let netns_s = netns.map(|p| p.display().to_string()).unwrap_or_default();
        self.del_with(
            &list,
            container_id,
            &netns_s,
            ifname,
            pod,
            cached.as_ref().map(|c| &c.result),
        )
        .await?;
        let path = self.cache_path(&list.name, container_id, ifname);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Cache { path, source }),
        }
    }

    /// CHECK: run every plugin in order with the cached result as prevResult.
    pub async fn check(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        pod: &PodRef,
    ) -> Result<(), Error> {
        let list = self.load().await?;
        let cached = self
            .read_cache(&list.name, container_id, ifname)
            .await
            .ok_or_else(|| Error::NotCached {
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        let netns_s = netns.display().to_string();
        for i in 0..list.plugins.len() {
            let conf = list.plugin_config(i, Some(&cached.result));
            self.exec("CHECK", &conf, container_id, &netns_s, ifname, pod)
                .await?;
        }
        Ok(())
    }
}

impl CniRuntime {
    /// Garbage-collect: DEL every cached attachment of the current network that is not in `valid`
    /// ((container id, ifname) pairs the caller still runs), then, for configurations of version 1.1.0 or
    /// later, run the plugins' GC command with `cni.dev/valid-attachments` so they release what a crash left
    /// without a cache entry. Returns the attachments that were deleted.
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<Vec<(String, String)>, Error> {
        let list = self.load().await?;
        let keep: std::collections::BTreeSet<&(String, String)> = valid.iter().collect();
        let mut deleted = Vec::new();
        let dir = self.cache_dir.join("results");
        if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let Ok(bytes) = tokio::fs::read(entry.path()).await else {
                    continue;
                };
                let Ok(cached) = serde_json::from_slice::<CacheEntry>(&bytes) else {
                    continue;
                };
                let key = (cached.container_id.clone(), cached.if_name.clone());
                if cached.network_name != list.name || keep.contains(&key) {
                    continue;
                }
                let netns = Some(PathBuf::from(&cached.netns)).filter(|p| p.exists());
                self.del(
                    &cached.container_id,
                    netns.as_deref(),
                    &cached.if_name,
                    &cached.pod,
                )
                .await?;
                deleted.push(key);
            }
        }
        if version_at_least(&list.cni_version, (1, 1, 0)) {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|(id, ifname)| serde_json::json!({ "containerID": id, "ifname": ifname }))
                .collect();
            for i in 0..list.plugins.len() {
                let mut conf = list.plugin_config(i, None);
                conf["cni.dev/valid-attachments"] = Value::Array(attachments.clone());
                self.exec("GC", &conf, "", "", "", &PodRef::default())
                    .await?;
            }
        }
        Ok(deleted)
    }
}

fn version_at_least(version: &str, want: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_config_injects_name_version_and_prev_result() {
        let list = NetworkConfigList::parse(
            Path::new("x.conflist"),
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#,
            false,
        )
        .unwrap();
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]});
        assert_eq!(
            list.plugin_config(1, Some(&prev)).to_string(),
            r#"{"type":"portmap","name":"net","cniVersion":"1.0.0","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}}"#
        );
        assert_eq!(
            list.plugin_config(0, None).to_string(),
            r#"{"type":"bridge","bridge":"cni0","name":"net","cniVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(version_at_least("1.10.0", (1, 1, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
        assert!(!version_at_least("0.4.0", (1, 1, 0)));
    }

    #[test]
    fn invalid_lists() {
        let err = |s: &str| {
            NetworkConfigList::parse(Path::new("a.conflist"), s.as_bytes(), false)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(r#"{"cniVersion":"1.0.0","plugins":[]}"#),
            "invalid CNI network configuration a.conflist: missing network name"
        );
        assert_eq!(
            err(r#"{"name":"n","plugins":[]}"#),
            "invalid CNI network configuration a.conflist: empty plugins list"
        );
        assert_eq!(
            err(r#"{"name":"n","plugins":[{"x":1}]}"#),
            "invalid CNI network configuration a.conflist: plugin without type"
        );
    }
}
