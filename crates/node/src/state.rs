//! What the agent persists per pod under `<data-dir>/pods/<uid>/` so a restarted agent adopts running pods:
//! the sandbox (netns name, IPs, the CNI config and result needed for DEL) and each container's process
//! (pid + kernel start time, so a reused pid is not mistaken for ours).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcRecord {
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at: String,
    pub container_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub restart_count: i32,
    pub running: Option<ProcRecord>,
    /// An init container that completed successfully (not run again after an agent restart).
    #[serde(default)]
    pub completed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub netns: Option<String>,
    pub pod_ips: Vec<String>,
    pub cni_config: Option<serde_json::Value>,
    pub cni_result: Option<serde_json::Value>,
    pub start_time: Option<String>,
    pub containers: BTreeMap<String, ContainerRecord>,
}

pub fn pods_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pods")
}

pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    pods_dir(data_dir).join(uid)
}

impl PodRecord {
    /// Write atomically (temp file + rename) so a crash never leaves half a record.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let dir = pod_dir(data_dir, &self.uid);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, dir.join("state.json"))
    }

    /// Every record found under the data dir (unreadable ones are skipped with a warning).
    pub fn load_all(data_dir: &Path) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(pods_dir(data_dir)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let path = e.path().join("state.json");
                let bytes = std::fs::read(&path).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(record) => Some(record),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "ignoring unreadable pod state");
                        None
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = PodRecord {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "p".into(),
            netns: Some("skiff-u1".into()),
            pod_ips: vec!["10.244.0.5".into()],
            ..Default::default()
        };
        record.containers.insert(
            "c".into(),
            ContainerRecord {
                restart_count: 2,
                completed: false,
                running: Some(ProcRecord {
                    pid: 42,
                    start_ticks: 7,
                    started_at: "2026-01-01T00:00:00Z".into(),
                    container_id: "skiff://x".into(),
                }),
            },
        );
        record.save(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("pods/broken")).unwrap();
        std::fs::write(dir.path().join("pods/broken/state.json"), "{").unwrap();
        assert_eq!(PodRecord::load_all(dir.path()), vec![record]);
    }
}
