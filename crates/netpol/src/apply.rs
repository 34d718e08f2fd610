//! Kernel-facing commands: `nft -f -` (one transaction per call) and reading the denial counters. A `Runner`
//! can target another network namespace (tests, benchmarks) through `ip netns exec`.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Runner {
    pub netns: Option<String>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    pub fn in_netns(name: impl Into<String>) -> Runner {
        Runner {
            netns: Some(name.into()),
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Run `nft args`, feeding `stdin`; the output on success.
    pub async fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
        let program = "nft".to_string();
        let spawn_err = |source| ApplyError::Spawn {
            program: program.clone(),
            source,
        };
        let mut child = self
            .command("nft")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data.as_bytes()).await.map_err(spawn_err)?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        if !out.status.success() {
            return Err(ApplyError::Failed {
                program,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Apply a script as one atomic transaction (nothing to do for an empty one).
    pub async fn apply(&self, script: &str) -> Result<(), ApplyError> {
        if script.is_empty() {
            return Ok(());
        }
        self.nft(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// The named counters of `table`: name → (packets, bytes). A missing table reads as no counters.
    pub async fn counters(&self, table: &str) -> Result<BTreeMap<String, (u64, u64)>, ApplyError> {
        let out = match self
            .nft(&["-j", "list", "counters", "table", "inet", table], None)
            .await
        {
            Ok(out) => out,
            Err(ApplyError::Failed { stderr, .. }) if stderr.contains("No such file") => {
                return Ok(BTreeMap::new())
            }
            Err(e) => return Err(e),
        };
        Ok(parse_counters(&out))
    }
}

/// `nft -j list counters` output → name → (packets, bytes); anything unexpected is skipped.
pub fn parse_counters(json: &str) -> BTreeMap<String, (u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.get("nftables")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((
                c.get("name")?.as_str()?.to_string(),
                (c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_parse_from_nft_json() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "denied-ingress-x/p1", "table": "skiff-netpol", "handle": 1, "packets": 3, "bytes": 180}}]}"#;
        let c = super::parse_counters(out);
        assert_eq!(c.get("denied-ingress-x/p1"), Some(&(3, 180)));
        assert!(super::parse_counters("garbage").is_empty());
    }
}
