//! Invoking CNI plugins from a network configuration list, as a container runtime does (CNI spec 1.0:
//! ADD in order with prevResult chaining, DEL in reverse order with the cached result).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration in {0}")]
    NoConfig(String),
    #[error("reading CNI configuration {path}: {message}")]
    Config { path: String, message: String },
    #[error("CNI plugin {0:?} not found in {1}")]
    PluginNotFound(String, String),
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("running CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
}

/// The network configuration list a runtime uses: the first `*.conflist` / `*.conf` / `*.json` by name.
pub fn find_config(dir: &Path) -> Result<Option<(PathBuf, Value)>, CniError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect(),
        Err(_) => return Ok(None),
    };
    files.sort();
    let Some(path) = files.into_iter().next() else {
        return Ok(None);
    };
    let err = |message: String| CniError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    // A single-plugin .conf is a list of one.
    if value.get("plugins").is_none() {
        let mut plugin = value.clone();
        if let Some(obj) = plugin.as_object_mut() {
            obj.remove("name");
            obj.remove("cniVersion");
        }
        value = json!({
            "cniVersion": value.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
            "name": value.get("name").cloned().unwrap_or(json!("")),
            "plugins": [plugin],
        });
    }
    Ok(Some((path, value)))
}

/// One attachment of a sandbox to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
}

pub struct Runtime {
    pub bin_dirs: Vec<PathBuf>,
}

impl Runtime {
    fn find_plugin(&self, kind: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::PluginNotFound(
                    kind.to_string(),
                    self.bin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                )
            })
    }

    async fn exec(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value, CniError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let binary = self.find_plugin(&kind)?;
        let mut config = plugin.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.insert(
                "name".into(),
                list.get("name").cloned().unwrap_or(json!("")),
            );
            obj.insert(
                "cniVersion".into(),
                list.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
            );
            if let Some(prev) = prev {
                obj.insert("prevResult".into(), prev.clone());
            }
        }
        let cni_args = std::iter::once("IgnoreUnknown=1".to_string())
            .chain(att.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";");
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let exec_err = |source| CniError::Exec {
            plugin: kind.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", path)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = serde_json::to_vec(&config).unwrap_or_default();
            stdin.write_all(&bytes).await.map_err(exec_err)?;
        }
        let out = child.wait_with_output().await.map_err(exec_err)?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let message = match stdout.get("msg").and_then(Value::as_str) {
                Some(msg) => {
                    let details = stdout
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let code = stdout.get("code").cloned().unwrap_or(Value::Null);
                    format!("error code {code}: {msg} {details}")
                        .trim_end()
                        .to_string()
                }
                None => format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            };
            return Err(CniError::Plugin {
                plugin: kind,
                command: command.into(),
                message,
            });
        }
        Ok(stdout)
    }

    /// ADD through every plugin; the final result.
    pub async fn add(&self, list: &Value, att: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in list
            .get("plugins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let result = self.exec("ADD", list, plugin, att, prev.as_ref()).await?;
            // Plugins that print nothing pass the previous result on.
            if !result.is_null() {
                prev = Some(result);
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through every plugin in reverse; keeps going on errors and reports the first.
    pub async fn del(
        &self,
        list: &Value,
        att: &Attachment,
        cached: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        let plugins: Vec<&Value> = list
            .get("plugins")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        for plugin in plugins.into_iter().rev() {
            if let Err(err) = self.exec("DEL", list, plugin, att, cached).await {
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The pod addresses in a CNI result (`ips[].address`, prefix length stripped).
pub fn result_ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}

/// Fallback network list when the conf dir has none and no Skiff plugin config is available: Debian's
/// reference bridge + host-local plugins over the node's podCIDR.
pub fn bridge_conflist(pod_cidr: &str, ipam_data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_data_dir,
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_from_result() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}]});
        assert_eq!(result_ips(&r), vec!["10.244.1.5".to_string()]);
        assert!(result_ips(&Value::Null).is_empty());
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"n","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"name":"later","plugins":[]}"#,
        )
        .unwrap();
        let (path, list) = find_config(dir.path()).unwrap().unwrap();
        assert!(path.ends_with("10-a.conf"));
        assert_eq!(
            list,
            json!({"cniVersion":"0.4.0","name":"n","plugins":[{"type":"bridge"}]})
        );
        assert!(find_config(&dir.path().join("missing")).unwrap().is_none());
    }
}
