//! Helpers: run the machine's real kubectl against a TestServer.
#![allow(dead_code)]

use skiff_api::testing::TestServer;
use std::path::PathBuf;
use std::process::Command;

pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "kubectl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
}

impl Kubectl {
    pub fn new(s: &TestServer) -> Self {
        Self {
            kubeconfig: s.kubeconfig_path.clone(),
            cache: tempfile::tempdir().expect("cache dir"),
            work: tempfile::tempdir().expect("work dir"),
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        use std::io::Write;
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env("HOME", self.work.path())
            .env("KUBECACHEDIR", self.cache.path())
            .current_dir(self.work.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(mut si) = child.stdin.take() {
            if let Some(text) = stdin {
                si.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        let out = child.wait_with_output().expect("kubectl output");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Write `text` to a file in the work dir and return its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.work.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.to_string_lossy().into_owned()
    }
}
