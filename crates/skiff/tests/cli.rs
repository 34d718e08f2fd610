//! The command line as users meet it: every subcommand parses (clap checks for clashing argument names only
//! when a subcommand is built, so each one is exercised), and components' flags reach the subcommands that
//! run them.

use std::process::Command;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn help(sub: &str) -> String {
    let out = Command::new(SKIFF)
        .args([sub, "--help"])
        .output()
        .expect("running skiff");
    assert!(
        out.status.success(),
        "skiff {sub} --help: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn every_subcommand_has_working_help_with_its_components_flags() {
    let expect: &[(&str, &[&str])] = &[
        (
            "up",
            &[
                "--name",
                "--nodes",
                "--data-dir",
                "--node-network",
                "--overlay",
                "--lb-pool",
                "--foreground",
                "--demo",
            ],
        ),
        ("down", &["--name", "--keep-state"]),
        ("status", &["--name"]),
        (
            "server",
            &[
                "--data-dir",
                "--listen",
                "--advertise-address",
                "--service-cidr",
                "--cluster-cidr",
                "--load-balancer-pool",
            ],
        ),
        (
            "agent",
            &[
                "--kubeconfig",
                "--node-name",
                "--node-ip",
                "--cni-conf-dir",
                "--overlay-mode",
                "--cluster-cidr",
                "--proxy-mode",
                "--proxy-service-cidr",
            ],
        ),
        ("dns", &["--kubeconfig", "--listen"]),
        ("demoapp", &["--port"]),
    ];
    for (sub, flags) in expect {
        let text = help(sub);
        for flag in *flags {
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "skiff {sub}: no {flag} in\n{text}"
            );
        }
    }
}

#[test]
fn component_flags_are_parsed_into_the_component() {
    // An invalid value for a wrapped component's flag is reported by that component's parser.
    let out = Command::new(SKIFF)
        .args([
            "agent",
            "--kubeconfig",
            "/nonexistent",
            "--node-name",
            "n",
            "--node-ip",
            "10.0.0.1",
        ])
        .args(["--proxy-service-cidr", "not-a-cidr"])
        .output()
        .expect("running skiff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-a-cidr") && err.contains("--proxy-service-cidr"),
        "{err}"
    );

    // Valid flags get through to the point where the agent reads its kubeconfig.
    let out = Command::new(SKIFF)
        .args([
            "agent",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--node-name",
            "n",
            "--node-ip",
            "10.0.0.1",
        ])
        .args([
            "--proxy-service-cidr",
            "10.96.0.0/12",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--overlay-mode",
            "host-gw",
        ])
        .output()
        .expect("running skiff");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}

#[test]
fn skiff_cni_symlink_runs_the_cni_plugin() {
    // CNI runtimes exec plugins by type name; VERSION needs no network configuration beyond cniVersion.
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("skiff-cni");
    std::os::unix::fs::symlink(SKIFF, &link).expect("symlink");
    let mut child = Command::new(&link)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running skiff-cni");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(br#"{"cniVersion":"1.0.0"}"#)
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "1.0.0")),
        "{v}"
    );
}

#[test]
fn flags_come_from_a_config_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.yaml");
    // The file gives every required flag; its bad CIDR is reported as a flag error would be.
    std::fs::write(
        &config,
        "kubeconfig: /nonexistent/from-file\nnode-name: n\nnode-ip: 10.0.0.1\nproxy-service-cidr: not-a-cidr\n",
    )
    .expect("writing the config file");
    let run = |extra: &[&str]| {
        let out = Command::new(SKIFF)
            .args(["agent", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .expect("running skiff");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(
        err.contains("not-a-cidr") && err.contains("--proxy-service-cidr"),
        "{err}"
    );
    // Typed flags replace the file's: the agent now gets as far as reading the typed kubeconfig.
    let err = run(&[
        "--proxy-service-cidr",
        "10.96.0.0/12",
        "--kubeconfig=/nonexistent/typed",
    ]);
    assert!(err.contains("/nonexistent/typed"), "{err}");

    let out = Command::new(SKIFF)
        .args(["agent", "--config", "/nonexistent/agent.yaml"])
        .output()
        .expect("running skiff");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reading configuration file /nonexistent/agent.yaml"),
        "{err}"
    );
}
