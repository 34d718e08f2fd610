//! Real etcd members for tests (Debian's `etcd` binary on loopback): unique ports and data dirs, killed on
//! drop, and killed with the test process if it dies first (PR_SET_PDEATHSIG).
//!
//! Children are forked from one long-lived thread: the death signal fires when the *thread* that forked the
//! child ends, and test runtimes end their threads whenever they like.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The etcd server binary (Debian's etcd-server); `SKIFF_ETCD_BIN` overrides it.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("SKIFF_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static S: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    S.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        let spawn = std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawn {
            tracing::error!(error = %e, "cannot start the etcd spawner thread");
        }
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)] // a fork hook: std has no parent-death signal
fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner gone"))?
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// tmpfs when there is one: fsync is what bounds etcd's write rate, and tests measure nothing.
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Remove data dirs left by test processes that are gone (the per-process shared member is never dropped).
fn remove_stale_dirs(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("skiff-etcd-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Start `n` members and wait until every one answers `/health`.
    pub fn start(n: usize) -> Result<Self, String> {
        let mut last = String::new();
        // Ports are picked free and then handed to etcd: another process may grab one meanwhile; try again.
        for _ in 0..3 {
            match Self::try_start(n) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(n: usize) -> Result<Self, String> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = scratch_root();
        remove_stale_dirs(&root);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("skiff-etcd-{}-{seq}", std::process::id());
        let dir = root.join(&token);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port().map_err(|e| e.to_string())?,
                peer_port: free_port().map_err(|e| e.to_string())?,
                data_dir: dir.join(format!("m{i}")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..n {
            c.spawn_member(i)?;
        }
        for i in 0..n {
            c.wait_healthy(i, Duration::from_secs(60))?;
        }
        Ok(c)
    }

    fn spawn_member(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name)))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn(cmd).map_err(|e| format!("starting {}: {e}", etcd_bin().display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if health(self.members[i].client_port) {
                return Ok(());
            }
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    let log = std::fs::read_to_string(
                        self.dir.join(format!("{}.log", self.members[i].name)),
                    )
                    .unwrap_or_default();
                    return Err(format!("etcd member {i} exited ({st}): {log}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("etcd member {i} not healthy within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Client URLs of every member (`http://127.0.0.1:PORT`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// SIGKILL member `i` (as `kill -9`) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start member `i` again on its data dir (after `kill`) and wait until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn_member(i)?;
        self.wait_healthy(i, Duration::from_secs(60))
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// One member for the whole test process, started on first use, shared by every caller (each uses a
    /// key prefix of its own). Killed with the process.
    pub fn shared() -> Result<&'static EtcdCluster, String> {
        static SHARED: OnceLock<Result<EtcdCluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| EtcdCluster::start(1))
            .as_ref()
            .map_err(|e| e.clone())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /health` on a client port answers `{"health":"true"}` once the member has a leader.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.contains("\"health\":\"true\"")
}
