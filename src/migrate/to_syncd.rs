//! The primary's and standby's syncd configs from the replication loop (or lsyncd).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::replication::Replication;
use super::{q, Kind, Out};

pub(super) fn replication_files(
    r: &Replication,
    vips: &BTreeMap<String, String>,
    standby: Option<IpAddr>,
    files: &mut Vec<(PathBuf, String)>,
    o: &mut Out,
) {
    for t in &r.traps {
        o.note(Kind::Trap, format!("the {}: {t}", r.from));
    }
    let export = r
        .source
        .as_deref()
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .unwrap_or("/srv/export")
        .to_string();
    if r.source.is_none() {
        o.note(
            Kind::NotCarried,
            format!(
                "the {}: no watched directory found; the export is written as {export}: fix it",
                r.from
            ),
        );
    }
    let target: Option<IpAddr> = r.target_host.as_deref().and_then(|h| h.parse().ok());
    let standby_ip = match (standby, target, r.target_host.as_deref()) {
        (Some(s), _, _) => Some(s),
        (None, Some(t), Some(h)) if vips.contains_key(h) => {
            o.note(Kind::Trap, format!(
                "the {}'s rsync target {h} is the virtual IP of keepalived instance {} (the load balancers), not the standby: replication went to whichever node held that address. Give the standby's address with --standby; the configs say 192.0.2.1 until then",
                r.from, vips[h]
            ));
            let _ = t;
            None
        }
        (None, Some(t), _) => Some(t),
        (None, None, Some(h)) => {
            o.note(Kind::NotCarried, format!("the {}'s rsync target {h} is a host name: syncd needs an address (give it with --standby)", r.from));
            None
        }
        (None, None, None) => None,
    };
    let peer = standby_ip.map_or("192.0.2.1".to_string(), |ip| ip.to_string());
    let peer = if peer.contains(':') {
        format!("[{peer}]:7400")
    } else {
        format!("{peer}:7400")
    };
    let delete = if r.delete {
        String::new()
    } else {
        "# the loop ran rsync without --delete; syncd replicates deletions (set delete = false to keep them)\n".to_string()
    };
    files.push((
        PathBuf::from("nfs-primary/syncd.toml"),
        format!(
            "# syncd --role primary on the NFS primary; written by `syncd migrate`.\n# Keys: syncd keygen --out /etc/syncd; copy the standby's node.crt here as peer.crt.\nexport = {}\npeer = {}\ncert = \"node.crt\"\nkey = \"node.key\"\npeer_cert = \"peer.crt\"\nadmin = \"127.0.0.1:7401\"\n\n[sync]\n{delete}delete = true\n",
            q(&export),
            q(&peer)
        ),
    ));
    files.push((
        PathBuf::from("nfs-standby/syncd.toml"),
        format!(
            "# syncd --role standby on the NFS standby; written by `syncd migrate`.\n# Keys: syncd keygen --out /etc/syncd; copy the primary's node.crt here as peer.crt.\nexport = {}\nlisten = \"0.0.0.0:7400\"\ncert = \"node.crt\"\nkey = \"node.key\"\npeer_cert = \"peer.crt\"\nadmin = \"127.0.0.1:7401\"\n",
            q(&export)
        ),
    ));
    o.note(Kind::Carried, format!(
        "the {}: {export} → {} replicated by `syncd --role primary` to `--role standby` at {peer} (the standby's export is {export}; a module path on the rsync daemon is not known here — change it if it differs)",
        r.from,
        r.target_host.as_deref().unwrap_or("?")
    ));
    o.note(Kind::NotCarried, "the NFS service address: the loop had none; for a failover of NFS itself, add a [[vrrp]] table with the NFS address to both nodes and run `syncd --role auto` (see README, the pair as one system)".into());
}
