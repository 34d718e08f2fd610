//! Golden tests of the pure answer model: query → full response (rcode, flags, sections, TTLs), after a
//! round trip through the wire format. Services across two namespaces: ClusterIP (single and dual-stack),
//! headless, StatefulSet-style headless (hostnames), ExternalName (in and out of the zone).

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use serde_json::json;
use skiff_dns::answer::{answer, query_message, Forward};
use skiff_dns::model::{Snapshot, SnapshotBuilder};
use skiff_dns::testing::{add_service, render};

fn cluster_builder() -> SnapshotBuilder {
    skiff_dns::testing::example_cluster()
}

fn cluster() -> Snapshot {
    cluster_builder().snapshot()
}

fn ask_msg(snap: &Snapshot, request: &Message) -> (String, Forward) {
    let ans = answer(snap, request);
    let wire = ans.message.to_vec().expect("encodes");
    let back = Message::from_vec(&wire).expect("decodes");
    (render(&back), ans.forward)
}

fn ask(snap: &Snapshot, name: &str, qtype: RecordType) -> String {
    let q = query_message(7, Name::from_ascii(name).expect("name"), qtype);
    let (text, fwd) = ask_msg(snap, &q);
    assert_eq!(
        fwd,
        Forward::None,
        "{name} {qtype} should be answered locally"
    );
    text
}

const SOA: &str = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 12345 7200 1800 86400 5";

#[track_caller]
fn golden(actual: String, expected: &str) {
    assert_eq!(
        actual,
        expected.replace("{SOA}", SOA),
        "\n--- actual ---\n{actual}"
    );
}

#[test]
fn clusterip_a_record() {
    golden(
        ask(&cluster(), "web.default.svc.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.default.svc.cluster.local. IN A
;ANSWER
web.default.svc.cluster.local. 5 IN A 10.96.0.20
",
    );
}

#[test]
fn names_are_case_insensitive_and_echo_the_question_case() {
    golden(
        ask(&cluster(), "WEB.Default.SVC.cluster.LOCAL.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION WEB.Default.SVC.cluster.LOCAL. IN A
;ANSWER
WEB.Default.SVC.cluster.LOCAL. 5 IN A 10.96.0.20
",
    );
}

#[test]
fn clusterip_aaaa_without_ipv6_is_nodata_with_soa() {
    golden(
        ask(
            &cluster(),
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.default.svc.cluster.local. IN AAAA
;AUTHORITY
{SOA}
",
    );
}

#[test]
fn dual_stack_service_in_other_namespace() {
    let snap = cluster();
    golden(
        ask(&snap, "web.prod.svc.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.prod.svc.cluster.local. IN A
;ANSWER
web.prod.svc.cluster.local. 5 IN A 10.96.0.30
",
    );
    golden(
        ask(&snap, "web.prod.svc.cluster.local.", RecordType::AAAA),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.prod.svc.cluster.local. IN AAAA
;ANSWER
web.prod.svc.cluster.local. 5 IN AAAA fd00::30
",
    );
}

#[test]
fn clusterip_srv_named_port_targets_the_service_with_glue() {
    golden(
        ask(
            &cluster(),
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION _http._tcp.web.default.svc.cluster.local. IN SRV
;ANSWER
_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 80 web.default.svc.cluster.local.
;ADDITIONAL
web.default.svc.cluster.local. 5 IN A 10.96.0.20
",
    );
}

#[test]
fn srv_on_the_service_name_lists_every_port() {
    golden(
        ask(
            &cluster(),
            "web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.default.svc.cluster.local. IN SRV
;ANSWER
web.default.svc.cluster.local. 5 IN SRV 0 50 80 web.default.svc.cluster.local.
web.default.svc.cluster.local. 5 IN SRV 0 50 8080 web.default.svc.cluster.local.
;ADDITIONAL
web.default.svc.cluster.local. 5 IN A 10.96.0.20
",
    );
}

#[test]
fn srv_with_wrong_port_or_protocol_is_nxdomain() {
    let snap = cluster();
    for name in [
        "_http._udp.web.default.svc.cluster.local.",
        "_nope._tcp.web.default.svc.cluster.local.",
        "_http._xyz.web.default.svc.cluster.local.",
        "http.tcp.web.default.svc.cluster.local.",
    ] {
        golden(
            ask(&snap, name, RecordType::SRV),
            &format!(
                "\
status: NXDOMAIN, flags: aa rd ra
;QUESTION {name} IN SRV
;AUTHORITY
{{SOA}}
"
            ),
        );
    }
}

#[test]
fn headless_a_lists_ready_endpoints_only() {
    golden(
        ask(&cluster(), "db.default.svc.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION db.default.svc.cluster.local. IN A
;ANSWER
db.default.svc.cluster.local. 5 IN A 10.244.1.5
db.default.svc.cluster.local. 5 IN A 10.244.2.6
",
    );
}

#[test]
fn headless_srv_targets_dashed_ip_names_with_glue() {
    golden(ask(&cluster(), "_mysql._tcp.db.default.svc.cluster.local.", RecordType::SRV), "\
status: NOERROR, flags: aa rd ra
;QUESTION _mysql._tcp.db.default.svc.cluster.local. IN SRV
;ANSWER
_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 3306 10-244-1-5.db.default.svc.cluster.local.
_mysql._tcp.db.default.svc.cluster.local. 5 IN SRV 0 50 3306 10-244-2-6.db.default.svc.cluster.local.
;ADDITIONAL
10-244-1-5.db.default.svc.cluster.local. 5 IN A 10.244.1.5
10-244-2-6.db.default.svc.cluster.local. 5 IN A 10.244.2.6
");
}

#[test]
fn headless_endpoint_by_dashed_ip_and_not_ready_is_absent() {
    let snap = cluster();
    golden(
        ask(
            &snap,
            "10-244-2-6.db.default.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION 10-244-2-6.db.default.svc.cluster.local. IN A
;ANSWER
10-244-2-6.db.default.svc.cluster.local. 5 IN A 10.244.2.6
",
    );
    golden(
        ask(
            &snap,
            "10-244-3-7.db.default.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NXDOMAIN, flags: aa rd ra
;QUESTION 10-244-3-7.db.default.svc.cluster.local. IN A
;AUTHORITY
{SOA}
",
    );
}

#[test]
fn headless_without_endpoints_is_nxdomain() {
    golden(
        ask(
            &cluster(),
            "empty.default.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NXDOMAIN, flags: aa rd ra
;QUESTION empty.default.svc.cluster.local. IN A
;AUTHORITY
{SOA}
",
    );
}

#[test]
fn statefulset_hostnames() {
    let snap = cluster();
    golden(
        ask(
            &snap,
            "mysql-1.mysql.prod.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION mysql-1.mysql.prod.svc.cluster.local. IN A
;ANSWER
mysql-1.mysql.prod.svc.cluster.local. 5 IN A 10.244.2.11
",
    );
    golden(
        ask(&snap, "mysql.prod.svc.cluster.local.", RecordType::SRV),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION mysql.prod.svc.cluster.local. IN SRV
;ANSWER
mysql.prod.svc.cluster.local. 5 IN SRV 0 50 3306 mysql-0.mysql.prod.svc.cluster.local.
mysql.prod.svc.cluster.local. 5 IN SRV 0 50 3306 mysql-1.mysql.prod.svc.cluster.local.
;ADDITIONAL
mysql-0.mysql.prod.svc.cluster.local. 5 IN A 10.244.1.10
mysql-1.mysql.prod.svc.cluster.local. 5 IN A 10.244.2.11
",
    );
    golden(
        ask(
            &snap,
            "mysql-2.mysql.prod.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NXDOMAIN, flags: aa rd ra
;QUESTION mysql-2.mysql.prod.svc.cluster.local. IN A
;AUTHORITY
{SOA}
",
    );
    // An existing endpoint name asked for a type it has no data for: NODATA.
    golden(
        ask(
            &snap,
            "mysql-0.mysql.prod.svc.cluster.local.",
            RecordType::TXT,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION mysql-0.mysql.prod.svc.cluster.local. IN TXT
;AUTHORITY
{SOA}
",
    );
}

#[test]
fn externalname_in_zone_is_chased() {
    golden(
        ask(
            &cluster(),
            "alias.default.svc.cluster.local.",
            RecordType::A,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION alias.default.svc.cluster.local. IN A
;ANSWER
alias.default.svc.cluster.local. 5 IN CNAME web.prod.svc.cluster.local.
web.prod.svc.cluster.local. 5 IN A 10.96.0.30
",
    );
}

#[test]
fn externalname_out_of_zone_asks_for_upstream_resolution_of_the_target() {
    let q = query_message(
        9,
        Name::from_ascii("ext.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    let (text, fwd) = ask_msg(&cluster(), &q);
    assert_eq!(
        fwd,
        Forward::Target(Name::from_ascii("www.example.com.").unwrap())
    );
    golden(
        text,
        "\
status: NOERROR, flags: aa rd ra
;QUESTION ext.default.svc.cluster.local. IN A
;ANSWER
ext.default.svc.cluster.local. 5 IN CNAME www.example.com.
",
    );
    // Asked for the CNAME itself: no chase.
    golden(
        ask(
            &cluster(),
            "ext.default.svc.cluster.local.",
            RecordType::CNAME,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION ext.default.svc.cluster.local. IN CNAME
;ANSWER
ext.default.svc.cluster.local. 5 IN CNAME www.example.com.
",
    );
}

#[test]
fn externalname_loop_inside_zone_terminates() {
    let mut b = cluster_builder();
    add_service(
        &mut b,
        json!({"metadata": {"name": "a", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "b.default.svc.cluster.local"}}),
    );
    add_service(
        &mut b,
        json!({"metadata": {"name": "b", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "a.default.svc.cluster.local"}}),
    );
    golden(
        ask(&b.snapshot(), "a.default.svc.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION a.default.svc.cluster.local. IN A
;ANSWER
a.default.svc.cluster.local. 5 IN CNAME b.default.svc.cluster.local.
b.default.svc.cluster.local. 5 IN CNAME a.default.svc.cluster.local.
a.default.svc.cluster.local. 5 IN CNAME b.default.svc.cluster.local.
",
    );
}

#[test]
fn nxdomain_vs_nodata_for_namespaces_and_structure() {
    let snap = cluster();
    let nodata = |name: &str| {
        format!("status: NOERROR, flags: aa rd ra\n;QUESTION {name} IN A\n;AUTHORITY\n{{SOA}}\n")
    };
    let nx = |name: &str| {
        format!("status: NXDOMAIN, flags: aa rd ra\n;QUESTION {name} IN A\n;AUTHORITY\n{{SOA}}\n")
    };
    for name in [
        "prod.svc.cluster.local.",
        "svc.cluster.local.",
        "pod.cluster.local.",
        "cluster.local.",
        "default.pod.cluster.local.",
    ] {
        golden(ask(&snap, name, RecordType::A), &nodata(name));
    }
    for name in [
        "nope.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        "nope.default.svc.cluster.local.",
        "foo.cluster.local.",
        "a.b.c.d.e.f.svc.cluster.local.",
    ] {
        golden(ask(&snap, name, RecordType::A), &nx(name));
    }
}

#[test]
fn search_path_candidates_answer_nxdomain_from_the_snapshot() {
    // A pod in "default" (ndots:5) resolving "www.example.com" walks the search path first; every in-zone
    // candidate is answered NXDOMAIN from the snapshot (authoritatively, no forwarding), then the name goes up.
    let snap = cluster();
    for name in [
        "www.example.com.default.svc.cluster.local.",
        "www.example.com.svc.cluster.local.",
        "www.example.com.cluster.local.",
    ] {
        let text = ask(&snap, name, RecordType::A);
        assert!(
            text.starts_with("status: NXDOMAIN, flags: aa"),
            "{name}: {text}"
        );
    }
    let q = query_message(
        1,
        Name::from_ascii("www.example.com.").unwrap(),
        RecordType::A,
    );
    assert_eq!(answer(&snap, &q).forward, Forward::Query);
    // "web.prod" from "default": the first candidate is NXDOMAIN, the second is the service.
    assert!(
        ask(&snap, "web.prod.default.svc.cluster.local.", RecordType::A)
            .starts_with("status: NXDOMAIN")
    );
    assert!(ask(&snap, "web.prod.svc.cluster.local.", RecordType::A).contains("IN A 10.96.0.30"));
}

#[test]
fn dns_version_txt() {
    let snap = cluster();
    golden(
        ask(&snap, "dns-version.cluster.local.", RecordType::TXT),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION dns-version.cluster.local. IN TXT
;ANSWER
dns-version.cluster.local. 5 IN TXT 1.1.0
",
    );
    golden(
        ask(&snap, "dns-version.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION dns-version.cluster.local. IN A
;AUTHORITY
{SOA}
",
    );
}

#[test]
fn zone_apex_soa_and_ns() {
    let snap = cluster();
    golden(
        ask(&snap, "cluster.local.", RecordType::SOA),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION cluster.local. IN SOA
;ANSWER
{SOA}
",
    );
    golden(
        ask(&snap, "cluster.local.", RecordType::NS),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION cluster.local. IN NS
;ANSWER
cluster.local. 5 IN NS ns.dns.cluster.local.
;ADDITIONAL
ns.dns.cluster.local. 5 IN A 10.96.0.10
",
    );
}

#[test]
fn pod_records_insecure_mode() {
    let snap = cluster();
    golden(
        ask(
            &snap,
            "10-244-1-5.default.pod.cluster.local.",
            RecordType::A,
        ),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION 10-244-1-5.default.pod.cluster.local. IN A
;ANSWER
10-244-1-5.default.pod.cluster.local. 5 IN A 10.244.1.5
",
    );
    golden(
        ask(&snap, "fd00--5.prod.pod.cluster.local.", RecordType::AAAA),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION fd00--5.prod.pod.cluster.local. IN AAAA
;ANSWER
fd00--5.prod.pod.cluster.local. 5 IN AAAA fd00::5
",
    );
    for name in [
        "10-244-1-5.nope.pod.cluster.local.",
        "not-an-ip.default.pod.cluster.local.",
        "1-2-3-999.default.pod.cluster.local.",
    ] {
        assert!(
            ask(&snap, name, RecordType::A).starts_with("status: NXDOMAIN"),
            "{name}"
        );
    }
}

#[test]
fn ptr_for_cluster_ips_and_endpoints() {
    let snap = cluster();
    golden(
        ask(&snap, "20.0.96.10.in-addr.arpa.", RecordType::PTR),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION 20.0.96.10.in-addr.arpa. IN PTR
;ANSWER
20.0.96.10.in-addr.arpa. 5 IN PTR web.default.svc.cluster.local.
",
    );
    golden(
        ask(&snap, "10.1.244.10.in-addr.arpa.", RecordType::PTR),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION 10.1.244.10.in-addr.arpa. IN PTR
;ANSWER
10.1.244.10.in-addr.arpa. 5 IN PTR mysql-0.mysql.prod.svc.cluster.local.
",
    );
    let v6 = "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    golden(
        ask(&snap, v6, RecordType::PTR),
        &format!(
            "\
status: NOERROR, flags: aa rd ra
;QUESTION {v6} IN PTR
;ANSWER
{v6} 5 IN PTR web.prod.svc.cluster.local.
"
        ),
    );
    // Unknown addresses fall through to the upstream resolvers, as CoreDNS's `fallthrough in-addr.arpa`.
    let q = query_message(
        1,
        Name::from_ascii("1.2.3.4.in-addr.arpa.").unwrap(),
        RecordType::PTR,
    );
    assert_eq!(answer(&snap, &q).forward, Forward::Query);
}

#[test]
fn not_synced_is_servfail() {
    let snap = Snapshot::unsynced("cluster.local", 5);
    golden(
        ask(&snap, "web.default.svc.cluster.local.", RecordType::A),
        "\
status: SERVFAIL, flags: rd ra
;QUESTION web.default.svc.cluster.local. IN A
",
    );
}

#[test]
fn non_in_class_is_refused_and_edns_is_echoed() {
    let snap = cluster();
    let mut q = query_message(
        3,
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    q.queries[0].set_query_class(DNSClass::CH);
    let (text, _) = ask_msg(&snap, &q);
    assert!(text.starts_with("status: REFUSED"), "{text}");

    let mut q = query_message(
        3,
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let ans = answer(&snap, &q);
    assert_eq!(
        ans.message.edns.as_ref().map(|e| e.max_payload()),
        Some(1232)
    );
}

#[test]
fn ttl_is_configurable() {
    let mut b = SnapshotBuilder::new("example.internal", 30);
    b.apply_namespace("default");
    add_service(
        &mut b,
        json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20"}}),
    );
    b.set_serial(1);
    b.set_synced(true);
    let snap = b.snapshot();
    golden(
        ask(&snap, "web.default.svc.example.internal.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION web.default.svc.example.internal. IN A
;ANSWER
web.default.svc.example.internal. 30 IN A 10.96.0.20
",
    );
    // cluster.local is not our zone now: forwarded.
    let q = query_message(
        1,
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    );
    assert_eq!(answer(&snap, &q).forward, Forward::Query);
}

#[test]
fn incremental_updates_follow_changes_and_deletions() {
    let mut b = cluster_builder();
    let before = b.snapshot();
    // ExternalName switched to ClusterIP.
    add_service(
        &mut b,
        json!({"metadata": {"name": "ext", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.99"}}),
    );
    b.delete_service("default", "web");
    b.delete_slice("prod", "mysql-1");
    let after = b.snapshot();
    assert!(ask(&before, "web.default.svc.cluster.local.", RecordType::A).contains("10.96.0.20"));
    golden(
        ask(&after, "ext.default.svc.cluster.local.", RecordType::A),
        "\
status: NOERROR, flags: aa rd ra
;QUESTION ext.default.svc.cluster.local. IN A
;ANSWER
ext.default.svc.cluster.local. 5 IN A 10.96.0.99
",
    );
    assert!(ask(&after, "web.default.svc.cluster.local.", RecordType::A)
        .starts_with("status: NXDOMAIN"));
    assert!(
        ask(&after, "mysql.prod.svc.cluster.local.", RecordType::A).starts_with("status: NXDOMAIN")
    );
    // Reverse entries of removed objects are gone too (and so fall through to upstream).
    let q = query_message(
        1,
        Name::from_ascii("20.0.96.10.in-addr.arpa.").unwrap(),
        RecordType::PTR,
    );
    assert_eq!(answer(&after, &q).forward, Forward::Query);
    let q = query_message(
        1,
        Name::from_ascii("99.0.96.10.in-addr.arpa.").unwrap(),
        RecordType::PTR,
    );
    assert_eq!(answer(&after, &q).forward, Forward::None);
}
