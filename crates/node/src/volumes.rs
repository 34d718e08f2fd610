//! Pod volumes: `emptyDir`, `hostPath`, and the projected kinds (`configMap`, `secret`, `downwardAPI`,
//! `projected`) whose files are computed purely from the pod and its sources, then written with kubelet's
//! atomic writer layout (`..<timestamp>/` holds the files, `..data` points at it, each visible name is a
//! symlink through `..data`): an update swaps `..data` in one rename, so a reader never sees half of it.
//! Each volume lives under `<pod dir>/volumes/<name>`; containers get it bind-mounted at their
//! `volumeMounts` paths inside their private mount namespace (see `spawn`).

use crate::envvars::{field_value, PodFacts};
use crate::resources;
use crate::sources::{Kind, PodSources, SourceError};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PodSpec, Volume, VolumeProjection,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file of a projected volume: relative path, content, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub content: Vec<u8>,
    pub mode: u32,
}

pub type Payload = BTreeMap<String, File>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("configmap references non-existent config key: {0}")]
    MissingConfigKey(String),
    #[error("references non-existent secret key: {0}")]
    MissingSecretKey(String),
    #[error("unsupported fieldRef {0:?}")]
    Field(String),
    #[error(transparent)]
    Resource(#[from] resources::ResourceError),
    #[error("cannot find container {0:?} for resourceFieldRef")]
    NoContainer(String),
    #[error("invalid path {0:?}: must be relative and may not contain '..'")]
    Path(String),
    #[error("{0}")]
    Io(String),
}

/// Kubelet's default mode of projected files.
pub const DEFAULT_MODE: i32 = 0o644;

/// How a volume is backed on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A directory of the pod (emptyDir).
    Scratch,
    /// A path of the node's filesystem (hostPath), created first when its type asks for it.
    Host { path: PathBuf, kind: String },
    /// Files computed from the pod and its sources; always mounted read-only.
    Projected(Payload),
}

fn check_path(p: &str) -> Result<(), VolumeError> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(VolumeError::Path(p.to_string()));
    }
    Ok(())
}

fn go_quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels and annotations as a downwardAPI file shows them: `key="value"` lines, sorted.
fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configMap or secret source of a volume (or of a projection).
struct KeySource<'a> {
    kind: Kind,
    name: &'a str,
    items: Option<&'a [KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
}

fn key_files(
    source: KeySource<'_>,
    namespace: &str,
    sources: &PodSources,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let KeySource {
        kind,
        name,
        items,
        default_mode,
        optional,
    } = source;
    let mode = default_mode.unwrap_or(DEFAULT_MODE);
    let Some(data) = sources.lookup(kind, namespace, name, optional)? else {
        return Ok(());
    };
    let files = data.files();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                check_path(&item.path)?;
                match files.get(&item.key) {
                    Some(content) => {
                        out.insert(
                            item.path.clone(),
                            File {
                                content: content.clone(),
                                mode: item.mode.unwrap_or(mode) as u32,
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(match kind {
                            Kind::ConfigMap => VolumeError::MissingConfigKey(item.key.clone()),
                            Kind::Secret => VolumeError::MissingSecretKey(item.key.clone()),
                        })
                    }
                }
            }
        }
        _ => {
            for (key, content) in files {
                out.insert(
                    key,
                    File {
                        content,
                        mode: mode as u32,
                    },
                );
            }
        }
    }
    Ok(())
}

fn downward_files(
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    facts: &PodFacts,
    containers: &[Container],
    out: &mut Payload,
) -> Result<(), VolumeError> {
    for item in items {
        check_path(&item.path)?;
        let content = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(&facts.labels),
                "metadata.annotations" => format_map(&facts.annotations),
                path => field_value(facts, path).ok_or_else(|| VolumeError::Field(path.into()))?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let c = containers
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| VolumeError::NoContainer(name.clone()))?;
            resources::container_resource(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                &facts.allocatable,
            )?
        } else {
            continue;
        };
        out.insert(
            item.path.clone(),
            File {
                content: content.into_bytes(),
                mode: item.mode.or(default_mode).unwrap_or(DEFAULT_MODE) as u32,
            },
        );
    }
    Ok(())
}

fn projection_files(
    p: &VolumeProjection,
    default_mode: Option<i32>,
    facts: &PodFacts,
    containers: &[Container],
    sources: &PodSources,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    if let Some(cm) = &p.config_map {
        key_files(
            KeySource {
                kind: Kind::ConfigMap,
                name: &cm.name,
                items: cm.items.as_deref(),
                default_mode,
                optional: cm.optional.unwrap_or(false),
            },
            &facts.namespace,
            sources,
            out,
        )?;
    }
    if let Some(s) = &p.secret {
        key_files(
            KeySource {
                kind: Kind::Secret,
                name: &s.name,
                items: s.items.as_deref(),
                default_mode,
                optional: s.optional.unwrap_or(false),
            },
            &facts.namespace,
            sources,
            out,
        )?;
    }
    if let Some(d) = &p.downward_api {
        downward_files(
            d.items.as_deref().unwrap_or_default(),
            default_mode,
            facts,
            containers,
            out,
        )?;
    }
    Ok(())
}

/// What backs `volume` (pure). Volume kinds Skiff does not implement are reported as an error.
pub fn backing(
    volume: &Volume,
    facts: &PodFacts,
    spec: &PodSpec,
    sources: &PodSources,
) -> Result<Backing, VolumeError> {
    let containers: Vec<Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .cloned()
        .collect();
    let mut out = Payload::new();
    if volume.empty_dir.is_some() {
        return Ok(Backing::Scratch);
    }
    if let Some(h) = &volume.host_path {
        return Ok(Backing::Host {
            path: PathBuf::from(&h.path),
            kind: h.type_.clone().unwrap_or_default(),
        });
    }
    if let Some(cm) = &volume.config_map {
        key_files(
            KeySource {
                kind: Kind::ConfigMap,
                name: &cm.name,
                items: cm.items.as_deref(),
                default_mode: cm.default_mode,
                optional: cm.optional.unwrap_or(false),
            },
            &facts.namespace,
            sources,
            &mut out,
        )?;
    } else if let Some(s) = &volume.secret {
        key_files(
            KeySource {
                kind: Kind::Secret,
                name: s.secret_name.as_deref().unwrap_or_default(),
                items: s.items.as_deref(),
                default_mode: s.default_mode,
                optional: s.optional.unwrap_or(false),
            },
            &facts.namespace,
            sources,
            &mut out,
        )?;
    } else if let Some(d) = &volume.downward_api {
        downward_files(
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            facts,
            &containers,
            &mut out,
        )?;
    } else if let Some(p) = &volume.projected {
        for source in p.sources.as_deref().unwrap_or_default() {
            projection_files(
                source,
                p.default_mode,
                facts,
                &containers,
                sources,
                &mut out,
            )?;
        }
    } else {
        return Err(VolumeError::Io(
            "volume type not supported by skiff (emptyDir, hostPath, configMap, secret, downwardAPI, projected are)"
                .into(),
        ));
    }
    Ok(Backing::Projected(out))
}

pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// A bind mount a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The container's bind mounts (pure), sorted so a parent path is mounted before the paths inside it.
pub fn container_mounts(
    container: &Container,
    spec: &PodSpec,
    pod_dir: &Path,
) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .ok_or_else(|| {
                format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    m.name, container.name
                )
            })?;
        let (base, forced_ro) = match &volume.host_path {
            Some(h) => (PathBuf::from(&h.path), false),
            None => (
                volumes_dir(pod_dir).join(&volume.name),
                volume.empty_dir.is_none(),
            ),
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                check_path(sub).map_err(|e| e.to_string())?;
                base.join(sub)
            }
            None => base,
        };
        out.push(Mount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: forced_ro || m.read_only.unwrap_or(false),
        });
    }
    out.sort_by_key(|m| m.target.components().count());
    Ok(out)
}

// ---- I/O ----

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |e| VolumeError::Io(format!("{context}: {e}"))
}

/// What the volume shows now (through `..data`), to skip writes that change nothing.
fn current_payload(dir: &Path) -> Option<Payload> {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join("..data");
    let target = std::fs::read_link(&data).ok()?;
    let root = dir.join(target);
    let mut out = Payload::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).ok()?.to_string_lossy().into_owned();
                out.insert(
                    rel,
                    File {
                        content: std::fs::read(&p).ok()?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Some(out)
}

/// Write `payload` into `dir` the way kubelet's atomic writer does; Ok(true) when something changed.
pub fn write_atomic(dir: &Path, payload: &Payload) -> Result<bool, VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    if current_payload(dir).as_ref() == Some(payload) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir).map_err(io(format!("creating {}", ts_dir.display())))?;
    for (rel, file) in payload {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, &file.content).map_err(io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(io(format!("chmod {}", path.display())))?;
    }
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", ts_dir.display())))?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("linking ..data_tmp"))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(io("renaming ..data"))?;
    // The visible names: one symlink per top-level entry, through ..data.
    let top: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .map_err(io(format!("linking {}", link.display())))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !top.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Make every volume of the pod exist on the node (projected ones written or updated). Returns the
/// volumes whose content changed, or the first failure as kubelet words it.
pub fn prepare(
    pod_dir: &Path,
    spec: &PodSpec,
    facts: &PodFacts,
    sources: &PodSources,
) -> Result<Vec<String>, (String, VolumeError)> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let fail = |e: VolumeError| (volume.name.clone(), e);
        let dir = volumes_dir(pod_dir).join(&volume.name);
        match backing(volume, facts, spec, sources).map_err(fail)? {
            Backing::Scratch => {
                if !dir.exists() {
                    std::fs::create_dir_all(&dir)
                        .map_err(io(format!("creating {}", dir.display())))
                        .map_err(fail)?;
                    // emptyDir is world-writable, as kubelet makes it.
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .map_err(io("chmod"))
                        .map_err(fail)?;
                }
            }
            Backing::Host { path, kind } => match kind.as_str() {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path)
                    .map_err(io(format!("creating {}", path.display())))
                    .map_err(fail)?,
                "FileOrCreate" if !path.exists() => std::fs::write(&path, b"")
                    .map_err(io(format!("creating {}", path.display())))
                    .map_err(fail)?,
                "Directory" if !path.is_dir() => {
                    return Err(fail(VolumeError::Io(format!(
                        "hostPath type check failed: {} is not a directory",
                        path.display()
                    ))))
                }
                "File" if !path.is_file() => {
                    return Err(fail(VolumeError::Io(format!(
                        "hostPath type check failed: {} is not a file",
                        path.display()
                    ))))
                }
                _ => {}
            },
            Backing::Projected(payload) => {
                if write_atomic(&dir, &payload).map_err(fail)? {
                    changed.push(volume.name.clone());
                }
            }
        }
    }
    Ok(changed)
}

const CREATED: &str = "created-mount-points";

/// Make the mount points of `mounts` exist on the node (pods share the node's filesystem, so a path the
/// container mounts at must exist to be covered). What had to be created is remembered in the pod's
/// directory, so the pod's teardown removes it again.
pub fn ensure_mount_points(pod_dir: &Path, mounts: &[Mount]) -> std::io::Result<()> {
    let mut created: Vec<String> = std::fs::read_to_string(pod_dir.join(CREATED))
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let before = created.len();
    for m in mounts {
        if std::fs::symlink_metadata(&m.target).is_ok() {
            continue;
        }
        // The first missing ancestor is what removal has to take away again.
        let mut first_missing = m.target.clone();
        while let Some(parent) = first_missing.parent() {
            if parent.exists() {
                break;
            }
            first_missing = parent.to_path_buf();
        }
        if m.source.is_dir() {
            std::fs::create_dir_all(&m.target)?;
        } else {
            if let Some(parent) = m.target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&m.target, b"")?;
        }
        created.push(first_missing.to_string_lossy().into_owned());
    }
    if created.len() != before {
        std::fs::create_dir_all(pod_dir)?;
        std::fs::write(pod_dir.join(CREATED), created.join("\n"))?;
    }
    Ok(())
}

/// Remove the mount points this pod created, unless another pod of this node still records them.
pub fn remove_mount_points(pod_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(pod_dir.join(CREATED)) else {
        return;
    };
    let others: std::collections::BTreeSet<String> = pod_dir
        .parent()
        .and_then(|pods| std::fs::read_dir(pods).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path() != pod_dir)
        .filter_map(|e| std::fs::read_to_string(e.path().join(CREATED)).ok())
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    for path in text.lines().rev() {
        if others.contains(path) {
            continue;
        }
        let p = Path::new(path);
        // Only what is still empty: anything written there since is not ours to delete.
        let empty_file = p.is_file() && p.metadata().is_ok_and(|m| m.len() == 0);
        if empty_file {
            let _ = std::fs::remove_file(p);
        } else {
            remove_empty_tree(p);
        }
    }
}

fn remove_empty_tree(p: &Path) {
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Data, Fetched};
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, DownwardAPIVolumeSource, ObjectFieldSelector, SecretVolumeSource,
        VolumeMount,
    };

    fn sources() -> PodSources {
        let mut s = PodSources::default();
        s.objects.insert(
            (Kind::ConfigMap, "app".into()),
            Fetched::Found(Data {
                strings: [("a.conf", "x=1\n"), ("b", "two")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                bytes: BTreeMap::new(),
            }),
        );
        s.objects
            .insert((Kind::Secret, "gone".into()), Fetched::NotFound);
        s
    }

    fn facts() -> PodFacts {
        PodFacts {
            name: "web-0".into(),
            namespace: "default".into(),
            labels: [("app", "web"), ("tier", "front \"end\"")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn cm_volume(items: Option<Vec<KeyToPath>>) -> Volume {
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app".into(),
                items,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn config_map_keys_and_items() {
        let spec = PodSpec::default();
        let Backing::Projected(all) =
            backing(&cm_volume(None), &facts(), &spec, &sources()).unwrap()
        else {
            panic!("projected")
        };
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a.conf", "b"]);
        assert_eq!(all["b"].mode, 0o644);
        let items = vec![KeyToPath {
            key: "a.conf".into(),
            path: "conf/app.conf".into(),
            mode: Some(0o600),
        }];
        let Backing::Projected(some) =
            backing(&cm_volume(Some(items)), &facts(), &spec, &sources()).unwrap()
        else {
            panic!("projected")
        };
        assert_eq!(some.len(), 1);
        assert_eq!(some["conf/app.conf"].content, b"x=1\n");
        assert_eq!(some["conf/app.conf"].mode, 0o600);
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "n".into(),
            mode: None,
        }];
        assert_eq!(
            backing(&cm_volume(Some(missing)), &facts(), &spec, &sources())
                .unwrap_err()
                .to_string(),
            "configmap references non-existent config key: nope"
        );
    }

    #[test]
    fn missing_secret_and_downward_labels() {
        let spec = PodSpec::default();
        let secret = Volume {
            name: "s".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("gone".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            backing(&secret, &facts(), &spec, &sources())
                .unwrap_err()
                .to_string(),
            "secret \"gone\" not found"
        );
        let downward = Volume {
            name: "podinfo".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    DownwardAPIVolumeFile {
                        path: "labels".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    DownwardAPIVolumeFile {
                        path: "name".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Backing::Projected(files) = backing(&downward, &facts(), &spec, &sources()).unwrap()
        else {
            panic!("projected")
        };
        assert_eq!(
            String::from_utf8_lossy(&files["labels"].content),
            "app=\"web\"\ntier=\"front \\\"end\\\"\""
        );
        assert_eq!(files["name"].content, b"web-0");
    }

    #[test]
    fn atomic_writer_swaps_data_and_prunes_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let file = |s: &str| File {
            content: s.as_bytes().to_vec(),
            mode: 0o644,
        };
        let first: Payload = [("a".to_string(), file("1")), ("b".to_string(), file("2"))].into();
        assert!(write_atomic(&dir, &first).unwrap());
        assert!(!write_atomic(&dir, &first).unwrap(), "unchanged payload");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let second: Payload = [("a".to_string(), file("one"))].into();
        assert!(write_atomic(&dir, &second).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        let stamps = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(stamps, 1, "the previous timestamped dir is removed");
    }

    #[test]
    fn mounts_are_ordered_and_projected_ones_read_only() {
        let spec = PodSpec {
            volumes: Some(vec![
                cm_volume(None),
                Volume {
                    name: "cache".into(),
                    empty_dir: Some(Default::default()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mount = |name: &str, path: &str| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        };
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                mount("config", "/data/cache/config"),
                mount("cache", "/data/cache"),
            ]),
            ..Default::default()
        };
        let mounts = container_mounts(&c, &spec, Path::new("/pods/u")).unwrap();
        assert_eq!(mounts[0].target, Path::new("/data/cache"));
        assert!(!mounts[0].read_only);
        assert_eq!(mounts[1].source, Path::new("/pods/u/volumes/config"));
        assert!(mounts[1].read_only);
        let bad = Container {
            name: "c".into(),
            volume_mounts: Some(vec![mount("nope", "/x")]),
            ..Default::default()
        };
        assert_eq!(
            container_mounts(&bad, &spec, Path::new("/p")).unwrap_err(),
            "cannot find volume \"nope\" to mount into container \"c\""
        );
    }
}
