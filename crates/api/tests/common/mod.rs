//! Helpers: run the machine's real kubectl against a TestServer.
#![allow(dead_code)]

use skiff_api::testing::TestServer;
use std::path::PathBuf;
use std::process::Command;

#[derive(Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: std::sync::Arc<tempfile::TempDir>,
    pub work: std::sync::Arc<tempfile::TempDir>,
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
            cache: std::sync::Arc::new(tempfile::tempdir().expect("cache dir")),
            work: std::sync::Arc::new(tempfile::tempdir().expect("work dir")),
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, None)
    }

    /// Run kubectl off the async runtime (the server runs on it).
    pub async fn go(&self, args: &[&str]) -> Out {
        let k = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            k.run(&a)
        })
        .await
        .expect("join kubectl")
    }

    /// Run kubectl with an environment variable (e.g. KUBE_EDITOR).
    pub async fn go_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let k = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            k.run_full(&a, None, &env)
        })
        .await
        .expect("join kubectl")
    }

    pub async fn go_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let k = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            k.run_stdin(&a, Some(&stdin))
        })
        .await
        .expect("join kubectl")
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        self.run_full(args, stdin, &[])
    }

    pub fn run_full(&self, args: &[&str], stdin: Option<&str>, env: &[(String, String)]) -> Out {
        use std::io::Write;
        let mut cmd = Command::new("/usr/bin/kubectl");
        for (k, v) in env {
            cmd.env(k, v);
        }
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

/// The `NAME`-column values of a kubectl table output.
pub fn names(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|s| s.to_string())
        .collect()
}

/// The row of a kubectl table output whose first column is `name`, split on whitespace.
pub fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .find(|c| c.first().map(|s| s.as_str()) == Some(name))
        .unwrap_or_default()
}

pub const SEED_CLUSTERIP: &str = "apiVersion: v1
kind: Service
metadata:
  name: demoapp-svc
  namespace: default
spec: 
  clusterIP: 10.97.72.1   #正式部署不需要指定 会自动生成,手动指定还可能会导致冲突
  selector:               #定义过滤条件
    app: demoapp
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80    #后端pod端口
";

pub const SEED_NODEPORT: &str = "apiVersion: v1
kind: Service
metadata:
  name: demoapp-nodeport-svc
  namespace: default
spec: 
  type: NodePort
  clusterIP: 10.97.56.1   #正式部署不需要指定 会自动生成手动指定还可能会导致冲突
  selector:
    app: demoapp
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80    #后端pod端口
    nodePort: 31399  #正式部署不需要指定 会自动生成   默认生成端口在30000-32768之间
";

pub const SEED_LOADBALANCER: &str = "apiVersion: v1
kind: Service
metadata:
  name: demoapp-loadbalancer-svc
  namespace: default
spec: 
  type: LoadBalancer
  selector:
    app: demoapp
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80    #后端pod端口
#  loadBalancerIP: 1.2.3.4    #这里应该不是在Iaas平台上,无法创建ELB,所以无法创建
";

pub const SEED_EXTERNALIP: &str = "apiVersion: v1
kind: Service
metadata:
  name: demoapp-externalip-svc
  namespace: default
spec: 
  type: ClusterIP
  selector:
    app: demoapp
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 80    #后端pod端口
  externalIPs:
  - 192.168.100.100  #实际应用中,可以通过过haproxy等实现虚拟IP 达到高可用
  
";

pub const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: demoapp
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: demoapp
  template:
    metadata:
      labels:
        app: demoapp
    spec:
      containers:
      - name: demoapp
        image: ikubernetes/demoapp:v1.0
        ports:
        - containerPort: 80
";
