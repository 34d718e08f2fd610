//! Flags from a configuration file, the one way every component takes them (as kube-proxy's and the
//! kubelet's `--config`): a YAML or JSON mapping of flag names (without `--`) to values, e.g.
//!
//! ```yaml
//! proxy-mode: nftables
//! cni-bin-dir: [/opt/cni/bin, /usr/lib/cni]
//! insecure-http: true
//! ```
//!
//! The file's entries become command-line flags placed before the ones actually typed, and a flag typed on
//! the command line replaces the file's value: the command line always wins. Every flag keeps one
//! definition (its clap argument) and one parser.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag that names the configuration file.
pub const CONFIG_FLAG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{CONFIG_FLAG} needs a file name")]
    MissingPath,
    #[error("reading configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("configuration file {path}: expected a mapping of flag names to values")]
    NotAMapping { path: PathBuf },
    #[error("configuration file {path}: flag {flag:?}: {reason}")]
    BadEntry {
        path: PathBuf,
        flag: String,
        reason: &'static str,
    },
}

/// `argv` with the flags of the `--config FILE` it names (if any) inserted right after the subcommand
/// name (`argv[1]`), except for flags that `argv` itself gives.
pub fn expand_config_flags(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&argv)? else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = flags_from_text(&path, &text)?;
    let typed: Vec<String> = argv
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    let mut rest = argv.into_iter();
    out.extend(rest.by_ref().take(2));
    out.extend(
        from_file
            .into_iter()
            .filter(|(flag, _)| !typed.contains(flag))
            .map(|(_, arg)| OsString::from(arg)),
    );
    out.extend(rest);
    Ok(out)
}

fn config_path(argv: &[OsString]) -> Result<Option<PathBuf>, ConfigError> {
    let long = format!("--{CONFIG_FLAG}");
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if arg == long {
            return args
                .next()
                .map(|p| Some(PathBuf::from(p)))
                .ok_or(ConfigError::MissingPath);
        }
        if let Some(p) = arg.strip_prefix(&format!("{long}=")) {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    Ok(None)
}

/// The file's entries as `(flag name, "--flag=value")` pairs, in the file's order; a list gives one pair
/// per element, `true` a bare `--flag`, `false` nothing.
pub fn flags_from_text(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let map = match value {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(ConfigError::NotAMapping {
                path: path.to_path_buf(),
            })
        }
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let Some(flag) = key.as_str().map(|k| k.trim_start_matches('-').to_string()) else {
            return Err(ConfigError::NotAMapping {
                path: path.to_path_buf(),
            });
        };
        let bad = |reason| ConfigError::BadEntry {
            path: path.to_path_buf(),
            flag: flag.clone(),
            reason,
        };
        if flag == CONFIG_FLAG {
            return Err(bad("a configuration file cannot name another one"));
        }
        let values = match value {
            serde_yaml::Value::Sequence(items) => items,
            other => vec![other],
        };
        for v in values {
            match v {
                serde_yaml::Value::Bool(true) => out.push((flag.clone(), format!("--{flag}"))),
                serde_yaml::Value::Bool(false) => {}
                serde_yaml::Value::String(s) => out.push((flag.clone(), format!("--{flag}={s}"))),
                serde_yaml::Value::Number(n) => out.push((flag.clone(), format!("--{flag}={n}"))),
                _ => {
                    return Err(bad(
                        "values are strings, numbers, booleans or lists of them",
                    ))
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_flags_go_after_the_subcommand_and_typed_flags_win() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "proxy-mode: iptables\nnode-name: from-file\ncni-bin-dir: [/a, /b]\ninsecure-http: true\nquiet: false\npod-mtu: 1400\n",
        )
        .expect("writing the file");
        let config = format!("--config={}", file.display());
        let out = expand_config_flags(argv(&["skiff", "agent", &config, "--node-name", "typed"]))
            .expect("expands");
        let out: Vec<_> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            out,
            [
                "skiff",
                "agent",
                "--proxy-mode=iptables",
                "--cni-bin-dir=/a",
                "--cni-bin-dir=/b",
                "--insecure-http",
                "--pod-mtu=1400",
                &config,
                "--node-name",
                "typed",
            ]
        );
    }

    #[test]
    fn without_config_argv_is_unchanged() {
        let a = argv(&["skiff", "agent", "--node-name", "n1"]);
        assert_eq!(expand_config_flags(a.clone()).expect("unchanged"), a);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let p = Path::new("c.yaml");
        assert!(matches!(
            flags_from_text(p, "- a\n- b\n"),
            Err(ConfigError::NotAMapping { .. })
        ));
        assert!(matches!(
            flags_from_text(p, "a: {b: c}\n"),
            Err(ConfigError::BadEntry { .. })
        ));
        assert!(matches!(
            flags_from_text(p, "config: other.yaml\n"),
            Err(ConfigError::BadEntry { .. })
        ));
        assert!(matches!(
            flags_from_text(p, "a: [\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            expand_config_flags(argv(&["skiff", "agent", "--config"])),
            Err(ConfigError::MissingPath)
        ));
        let missing =
            expand_config_flags(argv(&["skiff", "agent", "--config=/nonexistent/x.yaml"]));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
