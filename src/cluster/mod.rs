//! `quelay cluster`: one view of a cluster's traffic, and a kick that reaches every node.
//!
//! Nodes do not talk to each other (see `quic::cid` for how a balancer keeps each
//! connection on one node). This command asks each node's traffic-stats API (the
//! reference's `GET /traffic`, `GET /online` and `POST /kick`, served by
//! [`crate::metrics::traffic`]) from the operator's machine, with the node list of a
//! [`ClusterFile`]. All nodes are asked at once, each request bounded
//! by the file's `timeout`; a node that does not answer is reported, never waited for longer,
//! and the others' figures are still shown.
//!
//! Merging is plain addition: a user's bytes on every node, and their connections on every
//! node (a client's connections may sit on several nodes).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map, Value};
use ureq::Agent;

use crate::config::{self, ClusterFile, ClusterNode};
use crate::metrics::traffic;

/// Largest answer read from a node (a JSON object per user; a big user list is far below).
const MAX_ANSWER: u64 = 64 << 20;

/// Per user: bytes client → target (`tx`) and target → client (`rx`).
pub type Traffic = BTreeMap<String, (u64, u64)>;
/// Per user: authenticated QUIC connections.
pub type Online = BTreeMap<String, u64>;

/// What one node reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub traffic: Traffic,
    pub online: Online,
}

/// The cluster's view: the sums, and each node's own answer or why it has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub traffic: Traffic,
    pub online: Online,
    pub nodes: Vec<(String, Result<NodeStats, String>)>,
}

impl Merged {
    /// Whether every node answered.
    pub fn complete(&self) -> bool {
        self.nodes.iter().all(|(_, r)| r.is_ok())
    }

    /// The sums of the nodes that answered; the others are listed, not counted.
    pub fn of(nodes: Vec<(String, Result<NodeStats, String>)>) -> Merged {
        let mut traffic = Traffic::new();
        let mut online = Online::new();
        for stats in nodes.iter().filter_map(|(_, r)| r.as_ref().ok()) {
            for (user, &(tx, rx)) in &stats.traffic {
                let t = traffic.entry(user.clone()).or_default();
                t.0 = t.0.saturating_add(tx);
                t.1 = t.1.saturating_add(rx);
            }
            for (user, &n) in &stats.online {
                let o = online.entry(user.clone()).or_default();
                *o = o.saturating_add(n);
            }
        }
        Merged {
            traffic,
            online,
            nodes,
        }
    }

    /// `{"traffic": {user: {tx, rx}}, "online": {user: n}, "nodes": {name: {traffic,
    /// online} or {error}}}`: the reference's two answers, summed, and each node's own.
    pub fn to_json(&self) -> Value {
        let nodes: Map<String, Value> = self
            .nodes
            .iter()
            .map(|(name, r)| {
                let v = match r {
                    Ok(s) => json!({"traffic": traffic_json(&s.traffic), "online": s.online}),
                    Err(e) => json!({ "error": e }),
                };
                (name.clone(), v)
            })
            .collect();
        json!({
            "traffic": traffic_json(&self.traffic),
            "online": self.online,
            "nodes": nodes,
        })
    }

    /// A table for a terminal: each node's state, then each user's sums.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let width = self
            .nodes
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!("{:<width$}  state\n", "node"));
        for (name, r) in &self.nodes {
            let state = match r {
                Ok(s) => format!(
                    "ok: {} users with traffic, {} connections",
                    s.traffic.len(),
                    s.online.values().sum::<u64>()
                ),
                Err(e) => format!("no answer: {e}"),
            };
            out.push_str(&format!("{name:<width$}  {state}\n"));
        }
        let users: std::collections::BTreeSet<&String> =
            self.traffic.keys().chain(self.online.keys()).collect();
        let width = users.iter().map(|u| u.len()).max().unwrap_or(4).max(4);
        out.push_str(&format!(
            "\n{:<width$}  {:>16}  {:>16}  {:>11}\n",
            "user", "tx bytes", "rx bytes", "connections"
        ));
        for user in users {
            let (tx, rx) = self.traffic.get(user).copied().unwrap_or_default();
            let online = self.online.get(user).copied().unwrap_or_default();
            out.push_str(&format!(
                "{user:<width$}  {tx:>16}  {rx:>16}  {online:>11}\n"
            ));
        }
        out
    }
}

/// What `quelay cluster` was asked to do.
pub enum Command {
    /// Print the merged traffic and online users (`json`: as JSON; `clear`: reset each
    /// node's counters after reading them).
    Stats { json: bool, clear: bool },
    /// Close these users' connections on every node.
    Kick { users: Vec<String> },
}

/// Runs `command` over the nodes of the file at `path`. Exits 1 when the file is wrong or a
/// node did not answer (the others' answers are printed all the same).
pub fn run(path: &Path, command: Command) -> ExitCode {
    let file = match config::load_cluster(path) {
        Ok((file, warnings)) => {
            for w in warnings {
                eprintln!("quelay: warning: {w}");
            }
            file
        }
        Err(e) => {
            eprintln!("quelay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let complete = match command {
        Command::Stats { json, clear } => {
            let merged = stats(&file, clear);
            if json {
                println!("{}", merged.to_json());
            } else {
                print!("{}", merged.to_text());
            }
            merged.complete()
        }
        Command::Kick { users } => {
            let mut complete = true;
            for (name, r) in kick(&file, &users) {
                match r {
                    Ok(()) => println!("{name}: kicked"),
                    Err(e) => {
                        complete = false;
                        println!("{name}: no answer: {e}");
                    }
                }
            }
            complete
        }
    };
    if complete {
        ExitCode::SUCCESS
    } else {
        eprintln!("quelay: not every node answered");
        ExitCode::FAILURE
    }
}

fn traffic_json(t: &Traffic) -> Value {
    traffic::traffic_json(t.iter().map(|(u, &(tx, rx))| (u.clone(), tx, rx)))
}

/// The JSON object keyed by user that `endpoint` answers.
fn users_object(body: &[u8], endpoint: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(users)) => Ok(users),
        Ok(_) => Err(format!("{endpoint}: not a JSON object")),
        Err(e) => Err(format!("{endpoint}: {e}")),
    }
}

/// Reads `/traffic`'s answer: `{user: {"tx": n, "rx": n}}`.
pub fn parse_traffic(body: &[u8]) -> Result<Traffic, String> {
    users_object(body, "/traffic")?
        .into_iter()
        .map(|(user, counts)| {
            let n = |k: &str| {
                counts[k]
                    .as_u64()
                    .ok_or_else(|| format!("/traffic: {user}.{k} is not a count"))
            };
            Ok((user.clone(), (n("tx")?, n("rx")?)))
        })
        .collect()
}

/// Reads `/online`'s answer: `{user: n}`.
pub fn parse_online(body: &[u8]) -> Result<Online, String> {
    users_object(body, "/online")?
        .into_iter()
        .map(|(user, n)| match n.as_u64() {
            Some(n) => Ok((user, n)),
            None => Err(format!("/online: {user} is not a count")),
        })
        .collect()
}

/// Asks every node for its traffic (reset on each node after reading with `clear`, as the
/// reference's `?clear=1`) and its online users.
pub fn stats(file: &ClusterFile, clear: bool) -> Merged {
    let answers = each_node(file, |agent, node| {
        let path = if clear {
            "/traffic?clear=1"
        } else {
            "/traffic"
        };
        let traffic = parse_traffic(&request(agent, node, "GET", path, None)?)?;
        let online = parse_online(&request(agent, node, "GET", "/online", None)?)?;
        Ok(NodeStats { traffic, online })
    });
    Merged::of(answers)
}

/// Closes the connections of `users` on every node; each node's outcome.
pub fn kick(file: &ClusterFile, users: &[String]) -> Vec<(String, Result<(), String>)> {
    let body = Value::from(users.to_vec()).to_string();
    each_node(file, |agent, node| {
        request(agent, node, "POST", "/kick", Some(&body)).map(drop)
    })
}

/// Runs `ask` for every node at once (a thread each), in the file's order.
fn each_node<T: Send>(
    file: &ClusterFile,
    ask: impl Fn(&Agent, &ClusterNode) -> Result<T, String> + Sync,
) -> Vec<(String, Result<T, String>)> {
    let agent = agent(file.timeout);
    std::thread::scope(|s| {
        let asks: Vec<_> = file
            .nodes
            .iter()
            .map(|node| (node, s.spawn(|| ask(&agent, node))))
            .collect();
        asks.into_iter()
            .map(|(node, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err("the request panicked".into()));
                (node.name.clone(), r)
            })
            .collect()
    })
}

fn agent(timeout: Duration) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        // The nodes' APIs are reached directly, as the operator listed them.
        .proxy(None)
        .build()
        .new_agent()
}

/// One request to `node`'s API; the body of a 200 answer.
fn request(
    agent: &Agent,
    node: &ClusterNode,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Vec<u8>, String> {
    let url = format!("http://{}{path}", node.api);
    let auth = (!node.secret.is_empty()).then_some(node.secret.as_str());
    let sent = match (method, body) {
        ("POST", body) => {
            let mut req = agent.post(&url).header("content-type", "application/json");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send(body.unwrap_or_default().as_bytes())
        }
        _ => {
            let mut req = agent.get(&url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.call()
        }
    };
    let mut reply = sent.map_err(|e| format!("{method} {path}: {e}"))?;
    let status = reply.status().as_u16();
    let body = reply
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
    match status {
        200 => Ok(body),
        401 => Err(format!("{method} {path}: 401, the secret is wrong")),
        _ => Err(format!(
            "{method} {path}: status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(traffic: &[(&str, u64, u64)], online: &[(&str, u64)]) -> NodeStats {
        NodeStats {
            traffic: traffic
                .iter()
                .map(|&(u, tx, rx)| (u.to_owned(), (tx, rx)))
                .collect(),
            online: online.iter().map(|&(u, n)| (u.to_owned(), n)).collect(),
        }
    }

    #[test]
    fn sums_the_nodes_that_answered_and_lists_the_others() {
        let m = Merged::of(vec![
            (
                "a".into(),
                Ok(node(&[("alice", 1, 2), ("bob", 5, 0)], &[("alice", 1)])),
            ),
            ("b".into(), Err("connection refused".into())),
            (
                "c".into(),
                Ok(node(&[("alice", 10, 20)], &[("alice", 2), ("carol", 1)])),
            ),
        ]);
        assert!(!m.complete());
        assert_eq!(m.traffic["alice"], (11, 22));
        assert_eq!(m.traffic["bob"], (5, 0));
        assert_eq!((m.online["alice"], m.online["carol"]), (3, 1));
        let j = m.to_json();
        assert_eq!(j["traffic"]["alice"], json!({"tx": 11, "rx": 22}));
        assert_eq!(j["online"]["alice"], 3);
        assert_eq!(j["nodes"]["b"]["error"], "connection refused");
        assert_eq!(j["nodes"]["c"]["online"]["carol"], 1);
        let text = m.to_text();
        assert!(text.contains("no answer: connection refused"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("carol")), "{text}");
    }

    #[test]
    fn reads_the_reference_answers_and_refuses_others() {
        let t = parse_traffic(br#"{"alice":{"tx":514,"rx":4017},"bob":{"tx":1,"rx":0}}"#);
        assert_eq!(t.unwrap()["alice"], (514, 4017));
        assert_eq!(parse_online(br#"{"alice":2}"#).unwrap()["alice"], 2);
        assert_eq!(parse_traffic(b"{}").unwrap(), Traffic::new());
        for bad in [
            &b"[]"[..],
            b"{\"a\":{\"tx\":-1,\"rx\":0}}",
            b"{\"a\":1}",
            b"not json",
        ] {
            assert!(
                parse_traffic(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_online(br#"{"alice":"2"}"#).is_err());
    }
}
