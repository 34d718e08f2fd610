//! Upstream's conformance cases (TCP and UDP) against the pure model: every step's whole 9×9 table.

use skiff_netpol::testing::{self, pod_name, Case, Fixture};

fn run(case: &Case) -> Vec<String> {
    let mut fx = Fixture::new();
    let mut failures = Vec::new();
    for (si, step) in case.steps.iter().enumerate() {
        for a in &step.actions {
            fx.apply(a);
        }
        for c in &step.checks {
            let got = fx.table(c.protocol, c.port);
            let wrong = c.expect.mismatches(&got);
            if !wrong.is_empty() {
                let pairs: Vec<String> = wrong
                    .iter()
                    .map(|(f, t)| format!("{}→{}", pod_name(*f), pod_name(*t)))
                    .collect();
                failures.push(format!(
                    "{} step {si} {}/{}: wrong {pairs:?}\nexpected:\n{}got:\n{}",
                    case.name,
                    c.protocol,
                    c.port,
                    c.expect.render(),
                    got.render()
                ));
            }
        }
    }
    failures
}

#[test]
fn upstream_tcp_cases_hold_in_the_model() {
    let cases = testing::tcp_cases();
    assert_eq!(cases.len(), 43, "42 upstream TCP cases + endPort");
    let failures: Vec<String> = cases.iter().flat_map(run).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn upstream_udp_cases_hold_in_the_model() {
    let failures: Vec<String> = testing::udp_cases().iter().flat_map(run).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tables are not vacuous: every case but the allow-everything ones expects some denial.
#[test]
fn expectations_deny_something() {
    let denying = testing::tcp_cases()
        .iter()
        .filter(|c| {
            c.steps.iter().flat_map(|s| &s.checks).any(|ch| {
                !ch.expect
                    .mismatches(&testing::Reachability::new(true))
                    .is_empty()
            })
        })
        .count();
    assert!(denying >= 40, "{denying}");
}
