//! The file `quelay cluster` reads: the nodes of a cluster and how to reach their
//! traffic-stats APIs (`trafficStats.listen` and `.secret` of each node's server config).
//!
//! ```yaml
//! nodes:
//!   - name: node1            # optional; the API address by default
//!     api: 10.0.0.1:9999     # the node's trafficStats.listen, as reachable from here
//!     secret: s3cret         # its trafficStats.secret (default: the top-level secret)
//!   - api: node2.example.com:9999
//! secret: s3cret
//! timeout: 5s                # per request (default 5s)
//! ```

use std::time::Duration;

use serde_norway::Value;

use super::error::{fault, Fault, Warning};
use super::reader::Section;

/// How long one request to a node's API may take, unless `timeout` says otherwise.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every node of a cluster, as `quelay cluster` reaches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    pub nodes: Vec<ClusterNode>,
    /// Per request to a node.
    pub timeout: Duration,
}

/// One node's traffic-stats API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    /// `host:port` (a name or an address), plain HTTP as the reference server serves it.
    pub api: String,
    /// Sent as `Authorization`; empty sends none.
    pub secret: String,
}

pub(crate) fn cluster_file(root: &Value, w: &mut Vec<Warning>) -> Result<ClusterFile, Fault> {
    let mut top = Section::new(String::new(), root)?;
    let secret = top.string("secret", w)?.unwrap_or_default();
    let timeout = match top.duration("timeout")? {
        Some((d, _)) if d.is_zero() => DEFAULT_NODE_TIMEOUT,
        Some((d, _)) => d,
        None => DEFAULT_NODE_TIMEOUT,
    };
    let nodes_key = top.key("nodes");
    let mut nodes = Vec::new();
    for mut s in top.list_of_sections("nodes")? {
        let Some(api) = s.nonempty_string("api", w)? else {
            return Err(fault(
                s.key("api"),
                "missing: the node's trafficStats.listen",
            ));
        };
        if !api.contains(':') || api.contains('/') {
            return Err(fault(
                s.key("api"),
                format!("{api:?}: expected host:port (the node's trafficStats.listen)"),
            ));
        }
        let name = s.nonempty_string("name", w)?.unwrap_or_else(|| api.clone());
        if nodes.iter().any(|n: &ClusterNode| n.name == name) {
            return Err(fault(s.key("name"), format!("{name:?} names two nodes")));
        }
        let secret = s.string("secret", w)?.unwrap_or_else(|| secret.clone());
        s.finish(w);
        nodes.push(ClusterNode { name, api, secret });
    }
    if nodes.is_empty() {
        return Err(fault(nodes_key, "missing: list the cluster's nodes"));
    }
    top.finish(w);
    Ok(ClusterFile { nodes, timeout })
}

#[cfg(test)]
mod tests {
    use crate::config::parse_cluster;

    use super::*;

    #[test]
    fn nodes_take_the_shared_secret_unless_they_have_their_own() {
        let (f, w) = parse_cluster(
            "nodes:\n  - {name: a, api: 10.0.0.1:9999}\n  - {api: 'b.example:9999', secret: own}\n\
             secret: shared\ntimeout: 2s\n",
            "cluster.yaml",
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(f.timeout, Duration::from_secs(2));
        assert_eq!(
            f.nodes,
            [
                ClusterNode {
                    name: "a".into(),
                    api: "10.0.0.1:9999".into(),
                    secret: "shared".into()
                },
                ClusterNode {
                    name: "b.example:9999".into(),
                    api: "b.example:9999".into(),
                    secret: "own".into()
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (text, key) in [
            ("secret: s\n", "nodes"),
            ("nodes:\n  - {name: a}\n", "nodes[0].api"),
            ("nodes:\n  - {api: 'http://a:1/'}\n", "nodes[0].api"),
            (
                "nodes:\n  - {api: 'a:1'}\n  - {api: 'a:1'}\n",
                "nodes[1].name",
            ),
            ("nodes:\n  - {api: 'a:1'}\ntimeout: soon\n", "timeout"),
        ] {
            let e = parse_cluster(text, "cluster.yaml").unwrap_err().to_string();
            assert!(
                e.contains("cluster.yaml") && e.contains(key),
                "{text:?}: {e}"
            );
        }
    }
}
