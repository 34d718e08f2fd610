//! The image catalog: Skiff runs no container images, so an image name resolves to a program on the host
//! filesystem (its "entrypoint" and default arguments). Pure: no I/O except loading the user mapping file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an image "contains": an entrypoint and default arguments (Docker's ENTRYPOINT and CMD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// The program to execute; `None` for images that have no entrypoint (their CMD or the pod's command
    /// names the program).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// A multi-call binary (busybox) that every bare program name of the argument vector runs through:
    /// `sh -c ...` becomes `/bin/busybox` with argv[0] `sh`.
    pub multicall: Option<PathBuf>,
}

/// The process a container runs: executable path, argv[0] as the process sees it, and the remaining arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCommand {
    pub program: PathBuf,
    pub arg0: String,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Shown as the container's waiting reason `ImageNotInCatalog`.
    #[error("image {image:?} is not in the image catalog and the container has no command; add a command or map the image in the catalog file")]
    NotInCatalog { image: String },
    #[error("image {image:?} resolves to an empty command")]
    EmptyCommand { image: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading image catalog {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing image catalog {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The catalog: built-ins plus the user's mapping (image → argv), the user's entries winning.
#[derive(Debug, Clone)]
pub struct Catalog {
    skiff_exe: PathBuf,
    internal_kubeconfig: Option<PathBuf>,
    busybox: PathBuf,
    user: BTreeMap<String, Vec<String>>,
}

/// Reduce an image reference to the name the catalog is keyed by: no tag, no digest, no `docker.io/` or
/// `docker.io/library/` prefix (so `busybox`, `busybox:1.36`, `docker.io/library/busybox` are one image).
pub fn normalize_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' starts the tag; one before it belongs to a registry host:port.
    let without_tag = match without_digest.rfind(':') {
        Some(colon) if without_digest[colon..].find('/').is_none() => &without_digest[..colon],
        _ => without_digest,
    };
    let name = without_tag
        .strip_prefix("docker.io/")
        .or_else(|| without_tag.strip_prefix("index.docker.io/"))
        .unwrap_or(without_tag);
    let name = name.strip_prefix("library/").unwrap_or(name);
    name.to_string()
}

impl Catalog {
    pub fn new(skiff_exe: PathBuf, internal_kubeconfig: Option<PathBuf>) -> Self {
        Self {
            skiff_exe,
            internal_kubeconfig,
            busybox: PathBuf::from("/bin/busybox"),
            user: BTreeMap::new(),
        }
    }

    /// Add the user's mapping (YAML: `image: [program, args...]`); keys may carry a tag to map one tag only.
    pub fn with_user_entries(mut self, entries: BTreeMap<String, Vec<String>>) -> Self {
        self.user = entries;
        self
    }

    pub fn load_user_file(self, path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let entries: BTreeMap<String, Vec<String>> =
            serde_yaml::from_str(&text).map_err(|source| LoadError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        Ok(self.with_user_entries(entries))
    }

    /// The image's configuration, or None when the catalog does not know it.
    pub fn image_config(&self, image: &str) -> Option<ImageConfig> {
        let plain = |entrypoint: Vec<String>| ImageConfig {
            entrypoint,
            cmd: Vec::new(),
            multicall: None,
        };
        if let Some(argv) = self
            .user
            .get(image)
            .or_else(|| self.user.get(&normalize_image(image)))
        {
            return Some(plain(argv.clone()));
        }
        let exe = self.skiff_exe.display().to_string();
        match normalize_image(image).as_str() {
            "ikubernetes/demoapp" => Some(plain(vec![exe, "demoapp".into()])),
            "skiff/dns" => {
                let mut argv = vec![exe, "dns".into()];
                if let Some(kubeconfig) = &self.internal_kubeconfig {
                    argv.push("--kubeconfig".into());
                    argv.push(kubeconfig.display().to_string());
                }
                Some(plain(argv))
            }
            "busybox" | "alpine" => Some(ImageConfig {
                entrypoint: Vec::new(),
                cmd: vec!["sh".into()],
                multicall: Some(self.busybox.clone()),
            }),
            "registry.k8s.io/pause" | "k8s.gcr.io/pause" => Some(ImageConfig {
                entrypoint: vec!["sleep".into(), "infinity".into()],
                cmd: Vec::new(),
                multicall: Some(PathBuf::from("/usr/bin/sleep")),
            }),
            _ => None,
        }
    }

    /// The container's process as upstream combines image and pod: `command` replaces the entrypoint (and
    /// drops the image's CMD), `args` replace the CMD.
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> Result<ResolvedCommand, CatalogError> {
        let config = self.image_config(image);
        let argv: Vec<String> = match (&config, command.is_empty()) {
            (_, false) => command.iter().chain(args).cloned().collect(),
            (Some(config), true) => {
                let tail = if args.is_empty() { &config.cmd } else { args };
                config.entrypoint.iter().chain(tail).cloned().collect()
            }
            (None, true) => {
                return Err(CatalogError::NotInCatalog {
                    image: image.to_string(),
                })
            }
        };
        let Some((first, rest)) = argv.split_first() else {
            return Err(CatalogError::EmptyCommand {
                image: image.to_string(),
            });
        };
        let multicall = config.as_ref().and_then(|c| c.multicall.clone());
        let program = match multicall {
            // A bare name or a standard bin path runs as the multi-call binary's applet of that name.
            Some(binary) if is_applet_name(first) => binary,
            _ => PathBuf::from(first),
        };
        Ok(ResolvedCommand {
            program,
            arg0: first.clone(),
            args: rest.to_vec(),
        })
    }
}

fn is_applet_name(program: &str) -> bool {
    !program.contains('/')
        || ["/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"]
            .iter()
            .any(|dir| {
                program
                    .strip_prefix(dir)
                    .is_some_and(|rest| !rest.contains('/'))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(
            "/opt/skiff".into(),
            Some("/var/lib/skiff/internal.kubeconfig".into()),
        )
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn resolved(program: &str, arg0: &str, args: &[&str]) -> ResolvedCommand {
        ResolvedCommand {
            program: program.into(),
            arg0: arg0.into(),
            args: s(args),
        }
    }

    #[test]
    fn normalizes_image_references() {
        assert_eq!(normalize_image("busybox"), "busybox");
        assert_eq!(normalize_image("busybox:1.36"), "busybox");
        assert_eq!(
            normalize_image("docker.io/library/busybox:latest"),
            "busybox"
        );
        assert_eq!(
            normalize_image("ikubernetes/demoapp:v1.0"),
            "ikubernetes/demoapp"
        );
        assert_eq!(
            normalize_image("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause"
        );
        assert_eq!(normalize_image("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(
            normalize_image("localhost:5000/app:v2@sha256:abcd"),
            "localhost:5000/app"
        );
    }

    #[test]
    fn demoapp_runs_skiff_demoapp_with_pod_args_appended() {
        let c = catalog();
        assert_eq!(
            c.resolve("ikubernetes/demoapp:v1.0", &[], &[]).unwrap(),
            resolved("/opt/skiff", "/opt/skiff", &["demoapp"])
        );
        assert_eq!(
            c.resolve("ikubernetes/demoapp", &[], &s(&["--port", "8080"]))
                .unwrap(),
            resolved("/opt/skiff", "/opt/skiff", &["demoapp", "--port", "8080"])
        );
    }

    #[test]
    fn dns_image_gets_internal_kubeconfig() {
        assert_eq!(
            catalog()
                .resolve("skiff/dns", &[], &s(&["--ttl", "5"]))
                .unwrap(),
            resolved(
                "/opt/skiff",
                "/opt/skiff",
                &[
                    "dns",
                    "--kubeconfig",
                    "/var/lib/skiff/internal.kubeconfig",
                    "--ttl",
                    "5"
                ]
            )
        );
    }

    #[test]
    fn busybox_commands_run_as_applets() {
        let c = catalog();
        assert_eq!(
            c.resolve("busybox", &s(&["sh", "-c", "echo hi"]), &[])
                .unwrap(),
            resolved("/bin/busybox", "sh", &["-c", "echo hi"])
        );
        assert_eq!(
            c.resolve("alpine:3.20", &s(&["/bin/sleep"]), &s(&["3600"]))
                .unwrap(),
            resolved("/bin/busybox", "/bin/sleep", &["3600"])
        );
        // No command: the image's CMD (`sh`); args replace the CMD.
        assert_eq!(
            c.resolve("busybox", &[], &[]).unwrap(),
            resolved("/bin/busybox", "sh", &[])
        );
        assert_eq!(
            c.resolve("busybox", &[], &s(&["sleep", "10"])).unwrap(),
            resolved("/bin/busybox", "sleep", &["10"])
        );
        // An explicit path elsewhere is a host program.
        assert_eq!(
            c.resolve("busybox", &s(&["/usr/local/bin/tool"]), &[])
                .unwrap(),
            resolved("/usr/local/bin/tool", "/usr/local/bin/tool", &[])
        );
    }

    #[test]
    fn pause_sleeps_forever() {
        assert_eq!(
            catalog()
                .resolve("registry.k8s.io/pause:3.10", &[], &[])
                .unwrap(),
            resolved("/usr/bin/sleep", "sleep", &["infinity"])
        );
    }

    #[test]
    fn command_replaces_entrypoint() {
        assert_eq!(
            catalog()
                .resolve("ikubernetes/demoapp", &s(&["/usr/bin/env"]), &s(&["FOO=1"]))
                .unwrap(),
            resolved("/usr/bin/env", "/usr/bin/env", &["FOO=1"])
        );
    }

    #[test]
    fn unknown_image_needs_a_command() {
        let c = catalog();
        let err = c
            .resolve("nginx:1.27", &[], &s(&["-g", "daemon off;"]))
            .unwrap_err();
        assert_eq!(
            err,
            CatalogError::NotInCatalog {
                image: "nginx:1.27".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "image \"nginx:1.27\" is not in the image catalog and the container has no command; add a command or map the image in the catalog file"
        );
        assert_eq!(
            c.resolve("nginx", &s(&["/usr/sbin/nginx"]), &[]).unwrap(),
            resolved("/usr/sbin/nginx", "/usr/sbin/nginx", &[])
        );
    }

    #[test]
    fn user_file_maps_images_and_wins_over_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.yaml");
        std::fs::write(
            &path,
            "nginx: [/usr/sbin/nginx, -g, daemon off;]\n\"busybox:custom\": [/bin/true]\n",
        )
        .unwrap();
        let c = catalog().load_user_file(&path).unwrap();
        assert_eq!(
            c.resolve("docker.io/library/nginx:1.27", &[], &[]).unwrap(),
            resolved("/usr/sbin/nginx", "/usr/sbin/nginx", &["-g", "daemon off;"])
        );
        assert_eq!(
            c.resolve("busybox:custom", &[], &[]).unwrap(),
            resolved("/bin/true", "/bin/true", &[])
        );
        assert_eq!(
            c.resolve("busybox", &[], &[]).unwrap(),
            resolved("/bin/busybox", "sh", &[])
        );
        std::fs::write(&path, "nginx: {bad").unwrap();
        assert!(matches!(
            catalog().load_user_file(&path),
            Err(LoadError::Parse { .. })
        ));
    }
}
