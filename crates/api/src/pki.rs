//! CA, serving certificate, bearer token and kubeconfig files in the data dir.

use crate::{io_err, Error};
use base64::Engine;
use ipnet::Ipv4Net;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

fn pki_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Pki(e.to_string())
}

fn write_private(path: &Path, data: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    f.write_all(data.as_bytes())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    f.sync_all()
        .map_err(io_err(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))
}

pub fn load_or_create_token(dir: &Path) -> Result<String, Error> {
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let bytes: [u8; 24] = rand::random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &token)?;
    Ok(token)
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    Ok(params)
}

/// Load (or create on first start) the CA; issue a fresh serving certificate for the current addresses.
pub fn tls_config(
    dir: &Path,
    advertise: IpAddr,
    cidr: &Ipv4Net,
) -> Result<(rustls::ServerConfig, String), Error> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(io_err(format!("creating {}", pki.display())))?;
    let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
    let (ca_pem, ca_key_pem) = match (
        std::fs::read_to_string(&ca_crt),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        _ => {
            let key = KeyPair::generate().map_err(pki_err)?;
            let params = ca_params()?;
            let cert = params.self_signed(&key).map_err(pki_err)?;
            let (c, k) = (cert.pem(), key.serialize_pem());
            write_private(&ca_key, &k)?;
            write_private(&ca_crt, &c)?;
            (c, k)
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(pki_err)?;
    // The issuer only needs the CA's name, key usages and key: rebuilt from the same parameters.
    let issuer = Issuer::new(ca_params()?, ca_key);

    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let mut sans = Vec::new();
    for n in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ] {
        sans.push(SanType::DnsName(n.try_into().map_err(pki_err)?));
    }
    let first_service_ip = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        advertise,
        IpAddr::V4(first_service_ip),
    ];
    ips.dedup();
    for ip in ips {
        sans.push(SanType::IpAddress(ip));
    }
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    write_private(&pki.join("apiserver.crt"), &cert.pem())?;
    write_private(&pki.join("apiserver.key"), &key.serialize_pem())?;

    let chain = vec![cert.der().clone()];
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(pki_err)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pki_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(pki_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, ca_pem))
}

pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: Option<&str>,
    token: &str,
) -> Result<(), Error> {
    let ca = match ca_pem {
        Some(pem) => format!(
            "    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
        ),
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n{ca}contexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\nusers:\n- name: admin\n  user:\n    token: {token}\n"
    );
    write_private(path, &text)
}
