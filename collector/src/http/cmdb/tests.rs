//! The CMDB API over real loopback HTTP against a real SQLite store in a temporary directory,
//! seeded through `cmdb::apply_snapshot` with two agents (web1 -> db1 over the wire).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use vigil_shared::inventory::{
    ci_type, relation, Ci, CiRef, Inventory, OutboundConnection, Relation,
};
use vigil_shared::proto::InventorySnapshot;

use crate::cmdb::{apply_snapshot, metrics_for};
use crate::http::{router, serve, HttpState};
use crate::store::{Db, NewAgent, Role};
use vigil_shared::time::format_rfc3339_ms;

const T0: i64 = 1_700_000_000_000;
const T1: i64 = T0 + 3_600_000;

fn host(name: &str, machine_id: &str, role: &str) -> Ci {
    Ci::new(ci_type::HOST, ci_type::HOST, name)
        .attr("hostname", name)
        .attr("machine_id", machine_id)
        .attr("tags", json!({"role": role, "env": "prod"}))
}

fn pkg(name: &str, version: &str) -> Ci {
    Ci::new(ci_type::PACKAGE, format!("{name}:amd64"), name)
        .attr("version", version)
        .attr("architecture", "amd64")
}

fn listener(port: u16, process: &str) -> Ci {
    let key = format!("tcp:{port}");
    Ci::new(ci_type::LISTENING_SERVICE, key.clone(), key)
        .attr("protocol", "tcp")
        .attr("address", "0.0.0.0")
        .attr("port", port)
        .attr("process", process)
}

fn rel(from: (&str, &str), kind: &str, to: (&str, &str)) -> Relation {
    Relation {
        from: CiRef::new(from.0, from.1),
        kind: kind.to_owned(),
        to: CiRef::new(to.0, to.1),
    }
}

const HOST: (&str, &str) = (ci_type::HOST, ci_type::HOST);
const OS: (&str, &str) = (ci_type::OS, ci_type::OS);
const ETH0: (&str, &str) = (ci_type::NETWORK_INTERFACE, "eth0");

/// web1: 8 CIs; its nginx on tcp:80 talks to db1's tcp:5432. `second` is the next discovery:
/// openssl upgraded, nginx removed.
fn web1(second: bool) -> Inventory {
    let mut cis = vec![
        host("web1", "m-web1", "web"),
        Ci::new(ci_type::OS, ci_type::OS, "Debian 12").attr("version", "12"),
        Ci::new(ci_type::FILESYSTEM, "/", "/").attr("fstype", "ext4"),
        Ci::new(ci_type::NETWORK_INTERFACE, "eth0", "eth0").attr("mtu", 1500),
        Ci::new(ci_type::IP_ADDRESS, "10.0.0.1/24", "10.0.0.1/24"),
        listener(80, "nginx"),
        pkg("openssl", if second { "3.0.2" } else { "3.0.1" }),
    ];
    let mut relations = vec![
        rel(HOST, relation::RUNS, OS),
        rel(HOST, relation::HAS, (ci_type::FILESYSTEM, "/")),
        rel(HOST, relation::HAS, ETH0),
        rel(ETH0, relation::HAS, (ci_type::IP_ADDRESS, "10.0.0.1/24")),
        rel(HOST, relation::RUNS, (ci_type::LISTENING_SERVICE, "tcp:80")),
    ];
    if !second {
        cis.push(pkg("nginx", "1.22.1"));
        relations.push(rel(
            (ci_type::LISTENING_SERVICE, "tcp:80"),
            relation::PROVIDED_BY,
            (ci_type::PACKAGE, "nginx:amd64"),
        ));
    }
    let mut inv = Inventory {
        cis,
        relations,
        connections: vec![OutboundConnection {
            proto: "tcp".into(),
            remote_ip: "10.0.0.2".into(),
            remote_port: 5432,
            local_service: Some("tcp:80".into()),
            process: Some("nginx".into()),
        }],
    };
    inv.canonicalize();
    inv
}

/// db1: 7 CIs.
fn db1() -> Inventory {
    let mut inv = Inventory {
        cis: vec![
            host("db1", "m-db1", "db"),
            Ci::new(ci_type::OS, ci_type::OS, "Debian 12").attr("version", "12"),
            Ci::new(ci_type::NETWORK_INTERFACE, "eth0", "eth0").attr("mtu", 9000),
            Ci::new(ci_type::IP_ADDRESS, "10.0.0.2/24", "10.0.0.2/24"),
            listener(5432, "postgres"),
            pkg("postgresql", "15.4"),
            pkg("openssl", "3.0.1"),
        ],
        relations: vec![
            rel(HOST, relation::RUNS, OS),
            rel(HOST, relation::HAS, ETH0),
            rel(ETH0, relation::HAS, (ci_type::IP_ADDRESS, "10.0.0.2/24")),
            rel(
                HOST,
                relation::RUNS,
                (ci_type::LISTENING_SERVICE, "tcp:5432"),
            ),
            rel(
                (ci_type::LISTENING_SERVICE, "tcp:5432"),
                relation::PROVIDED_BY,
                (ci_type::PACKAGE, "postgresql:amd64"),
            ),
        ],
        connections: vec![],
    };
    inv.canonicalize();
    inv
}

fn snapshot(db: &Db, agent: &str, version: u64, inventory: Inventory, now: i64) {
    let snap = InventorySnapshot {
        version,
        ts_ms: now,
        inventory,
    };
    apply_snapshot(db, agent, &snap, now).expect("apply snapshot");
}

struct Fixture {
    tmp: tempfile::TempDir,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    viewer: String,
    admin: String,
    admin_id: String,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = Db::open(tmp.path()).expect("open");
    let (_, viewer) = db
        .create_api_token(Role::Viewer, "grafana", T0)
        .expect("viewer");
    let (admin_id, admin) = db.create_api_token(Role::Admin, "root", T0).expect("admin");
    for (id, hostname) in [("agent-a", "web1"), ("agent-b", "db1")] {
        db.register_agent(
            &NewAgent {
                id: id.into(),
                hostname: hostname.into(),
                version: "0.1.0".into(),
                cert_pin: "00".repeat(32),
                token_id: "tok".into(),
            },
            T0,
        )
        .expect("register agent");
    }
    snapshot(&db, "agent-a", 1, web1(false), T0);
    snapshot(&db, "agent-b", 1, db1(), T0);
    let (addr, stop, task) = start(tmp.path()).await;
    Fixture {
        tmp,
        addr,
        stop: Some(stop),
        task,
        viewer,
        admin,
        admin_id,
    }
}

type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

async fn start(dir: &Path) -> (SocketAddr, oneshot::Sender<()>, ServerTask) {
    let metrics_text: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(String::new);
    let state = HttpState::new(dir.to_owned(), metrics_text, {
        let s = crate::supervise::Supervisor::new();
        s.set_ready();
        s
    })
    .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router(state), async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// The chunks of a `Transfer-Encoding: chunked` body, checked to end with the zero chunk.
fn dechunk(mut body: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return chunks;
        }
        let (chunk, rest) = rest.split_at(size);
        chunks.push(chunk);
        body = rest.strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}

/// A status and a parsed JSON body.
type Answer = (u16, Value);

impl Fixture {
    fn db(&self) -> Db {
        Db::open(self.tmp.path()).expect("open")
    }

    /// One request over a fresh connection: the head and the body as they came.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let content = body
            .map(|b| {
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                )
            })
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}{content}Connection: close\r\n\r\n{}",
            body.unwrap_or_default()
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("answer within 30 s")
            .expect("read");
        let text = String::from_utf8(raw).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head/body");
        (head.to_owned(), body.to_owned())
    }

    /// One request over a fresh connection; `body` is sent as JSON text as given. The export
    /// is streamed (when it succeeds): its chunks are joined; every other answer must have a
    /// known size.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let (head, body) = self.raw(method, path, token, body).await;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let streamed = path.starts_with("/api/v1/cmdb/export") && head.starts_with("HTTP/1.1 200");
        assert_eq!(chunked, streamed, "{method} {path}: {head}");
        let body = if chunked {
            dechunk(&body).concat()
        } else {
            body
        };
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body)
    }

    async fn json(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        let (status, ct, text) = self.call(method, path, Some(token), body.as_deref()).await;
        assert!(
            ct.starts_with("application/json"),
            "{method} {path}: {ct} {text}"
        );
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (status, v)
    }

    /// GET as the viewer, expecting 200.
    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.json("GET", path, &self.viewer, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Answer {
        self.json(method, path, &self.admin, Some(body)).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("graceful shutdown within 5 s")
            .expect("join")
            .expect("serve");
    }
}

/// Asserts a JSON API error with `status` and `code`.
fn check_error((status, v): Answer, expected: u16, code: &str) {
    assert_eq!(status, expected, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
}

/// Id of `agent`'s CI `(type, key)`.
fn id_of(db: &Db, agent: &str, ty: &str, key: &str) -> i64 {
    db.conn()
        .query_row(
            "SELECT id FROM cis WHERE agent_id = ?1 AND type = ?2 AND key = ?3",
            rusqlite::params![agent, ty, key],
            |r| r.get(0),
        )
        .expect("ci id")
}

/// `host type key` of each item, sorted.
fn labels(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["host"].as_str().unwrap_or("-"),
                c["type"].as_str().unwrap_or_default(),
                c["key"].as_str().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    out
}

/// Edges of a graph answer as `host/key kind host/key @depth`, sorted; checks that every end
/// is among the answer's CIs.
fn edges(v: &Value) -> Vec<String> {
    let names: BTreeMap<i64, String> = v["cis"]
        .as_array()
        .expect("cis")
        .iter()
        .map(|c| {
            let host = c["host"].as_str().unwrap_or("-");
            let key = c["key"].as_str().unwrap_or_default();
            (
                c["id"].as_i64().unwrap_or_default(),
                format!("{host}/{key}"),
            )
        })
        .collect();
    let mut out: Vec<String> = v["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            let end = |k: &str| {
                let id = e[k].as_i64().expect("id");
                names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| panic!("CI {id} missing: {v}"))
            };
            format!(
                "{} {} {} @{}",
                end("from"),
                e["kind"].as_str().unwrap_or_default(),
                end("to"),
                e["depth"]
            )
        })
        .collect();
    out.sort();
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn ids(v: &Value) -> Vec<i64> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

const WEB1: [&str; 8] = [
    "web1 filesystem /",
    "web1 host host",
    "web1 ip_address 10.0.0.1/24",
    "web1 listening_service tcp:80",
    "web1 network_interface eth0",
    "web1 os os",
    "web1 package nginx:amd64",
    "web1 package openssl:amd64",
];

#[tokio::test]
async fn list_filters_paging_and_total() {
    let f = fixture().await;
    let all = f.get("/api/v1/cis").await;
    assert_eq!(
        (&all["total"], &all["limit"], &all["offset"]),
        (&json!(15), &json!(100), &json!(0))
    );
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 15);
    assert!(
        all_ids.windows(2).all(|w| w[0] < w[1]),
        "by id: {all_ids:?}"
    );

    let cases: &[(&str, &[&str])] = &[
        (
            "type=package",
            &[
                "db1 package openssl:amd64",
                "db1 package postgresql:amd64",
                "web1 package nginx:amd64",
                "web1 package openssl:amd64",
            ],
        ),
        (
            "type=package&host=web1",
            &["web1 package nginx:amd64", "web1 package openssl:amd64"],
        ),
        // Comma lists and repeats; host globs ignore case; an agent id works too.
        ("type=os,host&host=WEB*", &["web1 host host", "web1 os os"]),
        (
            "type=os&type=host&host=agent-b",
            &["db1 host host", "db1 os os"],
        ),
        ("host=db?&type=ip_address", &["db1 ip_address 10.0.0.2/24"]),
        ("host=nohost", &[]),
        // A host's tags cover its CIs; every tag must match.
        ("tag=role=db&type=host", &["db1 host host"]),
        (
            "tag=role=web&tag=env=prod&type=listening_service",
            &["web1 listening_service tcp:80"],
        ),
        ("tag=role=web&tag=env=dev", &[]),
        ("tag=role=web", &WEB1),
        // Name, key and attributes (the listener's `process`), any case.
        (
            "q=POSTGRES",
            &[
                "db1 listening_service tcp:5432",
                "db1 package postgresql:amd64",
            ],
        ),
        ("q=9000", &["db1 network_interface eth0"]),
        ("q=10.0.0.2", &["db1 ip_address 10.0.0.2/24"]),
        ("q=%25", &[]),
        ("state=retired", &[]),
        ("state=active,stale&type=os", &["db1 os os", "web1 os os"]),
        ("type=&host=&q=&type=os", &["db1 os os", "web1 os os"]),
    ];
    for (query, expected) in cases {
        let v = f.get(&format!("/api/v1/cis?{query}")).await;
        assert_eq!(labels(&v), strings(expected), "{query}");
        assert_eq!(v["total"], json!(expected.len()), "{query}");
    }

    // Pages of 4 cover the list exactly once; the total stays.
    let mut paged = Vec::new();
    for offset in [0, 4, 8, 12, 16] {
        let v = f.get(&format!("/api/v1/cis?limit=4&offset={offset}")).await;
        assert_eq!(
            (&v["total"], &v["limit"], &v["offset"]),
            (&json!(15), &json!(4), &json!(offset))
        );
        let page = ids(&v);
        assert_eq!(page.len(), [4, 4, 4, 3, 0][offset / 4], "offset {offset}");
        paged.extend(page);
    }
    assert_eq!(paged, all_ids);
    let v = f.get("/api/v1/cis?type=package&limit=1&offset=1").await;
    assert_eq!((labels(&v).len(), &v["total"]), (1, &json!(4)));

    // One item in full.
    let db = f.db();
    let nginx = id_of(&db, "agent-a", ci_type::PACKAGE, "nginx:amd64");
    let v = f.get("/api/v1/cis?q=nginx&type=package").await;
    assert_eq!(
        v["items"][0],
        json!({
            "id": nginx,
            "type": "package",
            "key": "nginx:amd64",
            "name": "nginx",
            "host": "web1",
            "agent_id": "agent-a",
            "attrs": {"architecture": "amd64", "version": "1.22.1"},
            "manual": {"owner": null, "criticality": null, "tags": {}, "vendor": null},
            "source": "discovery",
            "state": "active",
            "first_seen": "2023-11-14T22:13:20.000Z",
            "first_seen_ms": T0,
            "last_seen": "2023-11-14T22:13:20.000Z",
            "last_seen_ms": T0,
            "retired_at": null,
            "retired_at_ms": null,
            "duplicate_of": null,
        })
    );

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "offset=-1",
        "state=gone",
        "type=gpu",
        "tag=role",
        "tag==web",
        "host=%5B",
        "colour=red",
        "limit=5&limit=6",
        "q=a&q=b",
    ] {
        let got = f
            .json("GET", &format!("/api/v1/cis?{bad}"), &f.viewer, None)
            .await;
        check_error(got, 400, "bad_request");
    }
    let (status, _, _) = f.call("GET", "/api/v1/cis", None, None).await;
    assert_eq!(status, 401);
    for (method, path) in [
        ("PUT", "/api/v1/cis"),
        // DELETE /cis/{id} exists (admin: retire a business service); PUT does not.
        ("PUT", "/api/v1/cis/1"),
        ("GET", "/api/v1/relations"),
    ] {
        let got = f.json(method, path, &f.viewer, None).await;
        check_error(got, 405, "method_not_allowed");
    }
    f.stop().await;
}

#[tokio::test]
async fn detail_and_relation_graphs() {
    let f = fixture().await;
    let db = f.db();
    let host_a = id_of(&db, "agent-a", ci_type::HOST, "host");
    let web_80 = id_of(&db, "agent-a", ci_type::LISTENING_SERVICE, "tcp:80");
    let db_5432 = id_of(&db, "agent-b", ci_type::LISTENING_SERVICE, "tcp:5432");
    let host_b = id_of(&db, "agent-b", ci_type::HOST, "host");

    let v = f.get(&format!("/api/v1/cis/{host_a}")).await;
    assert_eq!(
        (&v["id"], &v["type"], &v["host"]),
        (&json!(host_a), &json!("host"), &json!("web1"))
    );
    assert_eq!(v["attrs"]["tags"], json!({"role": "web", "env": "prod"}));
    assert_eq!(v["relations"], json!({"out": 4, "in": 0}));
    let v = f.get(&format!("/api/v1/cis/{web_80}")).await;
    assert_eq!(v["relations"], json!({"out": 2, "in": 1}));
    check_error(
        f.json("GET", "/api/v1/cis/999999", &f.viewer, None).await,
        404,
        "not_found",
    );
    check_error(
        f.json("GET", "/api/v1/cis/abc", &f.viewer, None).await,
        400,
        "bad_request",
    );

    // Both directions, two hops, across hosts through the wire dependency.
    let v = f
        .get(&format!("/api/v1/cis/{web_80}/relations?depth=2"))
        .await;
    assert_eq!(
        (&v["root"], &v["direction"], &v["depth"], &v["truncated"]),
        (&json!(web_80), &json!("both"), &json!(2), &json!(false))
    );
    assert_eq!(
        edges(&v),
        strings(&[
            "web1/host runs web1/tcp:80 @1",
            "web1/tcp:80 provided_by web1/nginx:amd64 @1",
            "web1/tcp:80 depends_on db1/tcp:5432 @1",
            "web1/host runs web1/os @2",
            "web1/host has web1// @2",
            "web1/host has web1/eth0 @2",
            "db1/host runs db1/tcp:5432 @2",
            "db1/tcp:5432 provided_by db1/postgresql:amd64 @2",
        ])
    );
    assert_eq!(v["cis"].as_array().map(Vec::len), Some(9), "{v}");
    let wire = v["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["kind"] == "depends_on")
        .expect("depends_on edge");
    assert_eq!(
        wire,
        &json!({"from": web_80, "kind": "depends_on", "to": db_5432, "depth": 1, "source": "wire:agent-a"})
    );

    let v = f
        .get(&format!(
            "/api/v1/cis/{host_a}/relations?depth=2&direction=out"
        ))
        .await;
    assert_eq!(
        edges(&v),
        strings(&[
            "web1/host runs web1/os @1",
            "web1/host has web1// @1",
            "web1/host has web1/eth0 @1",
            "web1/host runs web1/tcp:80 @1",
            "web1/eth0 has web1/10.0.0.1/24 @2",
            "web1/tcp:80 provided_by web1/nginx:amd64 @2",
            "web1/tcp:80 depends_on db1/tcp:5432 @2",
        ])
    );
    let v = f
        .get(&format!(
            "/api/v1/cis/{db_5432}/relations?depth=5&direction=in"
        ))
        .await;
    assert_eq!(
        edges(&v),
        strings(&[
            "db1/host runs db1/tcp:5432 @1",
            "web1/tcp:80 depends_on db1/tcp:5432 @1",
            "web1/host runs web1/tcp:80 @2",
        ])
    );
    // Default: depth 1, both directions.
    let v = f.get(&format!("/api/v1/cis/{host_b}/relations")).await;
    assert_eq!(
        edges(&v),
        strings(&[
            "db1/host runs db1/os @1",
            "db1/host has db1/eth0 @1",
            "db1/host runs db1/tcp:5432 @1",
        ])
    );
    assert_eq!((&v["depth"], &v["direction"]), (&json!(1), &json!("both")));

    for bad in ["depth=0", "depth=6", "depth=x", "direction=up", "deep=2"] {
        let got = f
            .json(
                "GET",
                &format!("/api/v1/cis/{host_a}/relations?{bad}"),
                &f.viewer,
                None,
            )
            .await;
        check_error(got, 400, "bad_request");
    }
    check_error(
        f.json("GET", "/api/v1/cis/999999/relations", &f.viewer, None)
            .await,
        404,
        "not_found",
    );
    f.stop().await;
}

#[tokio::test]
async fn history_and_changes_feed() {
    let f = fixture().await;
    let db = f.db();
    let openssl = id_of(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64");
    let path = format!("/api/v1/cis/{openssl}/history");
    let v = f.get(&path).await;
    let added = json!({
        "id": v["items"][0]["id"],
        "ts": "2023-11-14T22:13:20.000Z",
        "ts_ms": T0,
        "attribute": "*",
        "change": "added",
        "old_value": null,
        "new_value": null,
        "source": "agent-a",
    });
    assert_eq!(
        v,
        json!({"items": [added], "limit": 100, "next_before": null})
    );

    // The next discovery: openssl upgraded, nginx gone.
    snapshot(&db, "agent-a", 2, web1(true), T1);
    let v = f.get(&path).await;
    let changed = json!({
        "id": v["items"][0]["id"],
        "ts": format_rfc3339_ms(T1),
        "ts_ms": T1,
        "attribute": "version",
        "change": "changed",
        "old_value": "3.0.1",
        "new_value": "3.0.2",
        "source": "agent-a",
    });
    assert_eq!(v["items"], json!([changed, added]));

    // Paging with the cursor, and `since` as ms, RFC 3339 and with an offset.
    let v = f.get(&format!("{path}?limit=1")).await;
    assert_eq!(
        (&v["items"], &v["next_before"]),
        (&json!([changed]), &changed["id"])
    );
    let v = f
        .get(&format!("{path}?limit=1&before={}", changed["id"]))
        .await;
    assert_eq!(
        (&v["items"], &v["next_before"]),
        (&json!([added]), &Value::Null)
    );
    let t1 = format_rfc3339_ms(T1).expect("rfc3339");
    assert_eq!(t1, "2023-11-14T23:13:20.000Z");
    // `+` must be sent as %2B in a query string (a bare `+` means a space).
    for since in [
        T1.to_string(),
        t1.clone(),
        "2023-11-15T00:13:20%2B01:00".into(),
        "2023-11-14T22:13:20.000-01:00".into(),
    ] {
        let v = f.get(&format!("{path}?since={since}")).await;
        assert_eq!(v["items"], json!([changed]), "{since}");
    }
    let v = f.get(&format!("{path}?since={}", (T1 + 1))).await;
    assert_eq!(v["items"], json!([]));
    for bad in ["since=yesterday", "limit=0", "before=abc", "until=1"] {
        let got = f
            .json("GET", &format!("{path}?{bad}"), &f.viewer, None)
            .await;
        check_error(got, 400, "bad_request");
    }
    check_error(
        f.json("GET", "/api/v1/cis/999999/history", &f.viewer, None)
            .await,
        404,
        "not_found",
    );

    // The feed across the CMDB since the second discovery: newest first, with the CIs.
    let v = f.get(&format!("/api/v1/changes?since={t1}")).await;
    let items = v["items"].as_array().expect("items");
    let got: BTreeSet<(String, String, String, String)> = items
        .iter()
        .map(|c| {
            (
                c["ci"]["host"].as_str().unwrap_or_default().to_owned(),
                c["ci"]["key"].as_str().unwrap_or_default().to_owned(),
                c["attribute"].as_str().unwrap_or_default().to_owned(),
                c["change"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String, String)> = [
        ("web1", "nginx:amd64", "*", "removed"),
        ("web1", "openssl:amd64", "version", "changed"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(got, want, "{v}");
    assert_eq!(items.len(), 2);
    let feed_ids: Vec<i64> = items
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert!(feed_ids[0] > feed_ids[1], "newest first: {feed_ids:?}");
    let upgrade = items
        .iter()
        .find(|c| c["attribute"] == "version")
        .expect("upgrade");
    assert_eq!(
        upgrade["ci"],
        json!({"id": openssl, "type": "package", "key": "openssl:amd64", "name": "openssl",
               "host": "web1", "agent_id": "agent-a", "state": "active"})
    );
    assert_eq!(
        (&upgrade["old_value"], &upgrade["new_value"], &upgrade["ts"]),
        (&json!("3.0.1"), &json!("3.0.2"), &json!(t1))
    );
    let cases: &[(&str, usize)] = &[
        ("type=package&host=web1", 2),
        ("type=package&host=db1", 0),
        ("type=host", 0),
        ("type=package,host&host=web*", 2),
    ];
    for (q, n) in cases {
        let v = f.get(&format!("/api/v1/changes?since={T1}&{q}")).await;
        assert_eq!(v["items"].as_array().map(Vec::len), Some(*n), "{q}: {v}");
    }
    // Without `since`: the newest rows, with a cursor to the older ones.
    let v = f.get("/api/v1/changes?limit=3").await;
    let first: Vec<i64> = ids(&v);
    assert_eq!(first.len(), 3);
    assert_eq!(v["next_before"], json!(first[2]));
    let v = f
        .get(&format!("/api/v1/changes?limit=1000&before={}", first[2]))
        .await;
    let rest = ids(&v);
    assert_eq!(v["next_before"], Value::Null);
    // 15 added at T0, then 2 changes at T1; nothing is missed or repeated across pages.
    assert_eq!(first.len() + rest.len(), 17);
    assert!(rest.iter().all(|id| !first.contains(id)));
    for bad in ["type=gpu", "since=soon", "host=%5B", "ci=1"] {
        let got = f
            .json("GET", &format!("/api/v1/changes?{bad}"), &f.viewer, None)
            .await;
        check_error(got, 400, "bad_request");
    }

    // The retired CI keeps its id and says when it went.
    let v = f.get("/api/v1/cis?state=retired").await;
    assert_eq!(labels(&v), strings(&["web1 package nginx:amd64"]));
    assert_eq!(
        (
            &v["items"][0]["retired_at"],
            &v["items"][0]["retired_at_ms"]
        ),
        (&json!(t1), &json!(T1))
    );
    f.stop().await;
}

#[tokio::test]
async fn export_is_the_whole_cmdb() {
    let f = fixture().await;
    let (status, ct, body) = f
        .call("GET", "/api/v1/cmdb/export", Some(&f.viewer), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&body).expect("export is JSON");
    assert!(
        v["exported_at"].is_string() && v["exported_at_ms"].is_i64(),
        "{v}"
    );
    let listed = f.get("/api/v1/cis?limit=1000").await;
    assert_eq!(v["cis"], listed["items"]);
    let rels = v["relations"].as_array().expect("relations");
    let stored: i64 = f
        .db()
        .conn()
        .query_row("SELECT count(*) FROM relations", [], |r| r.get(0))
        .expect("count");
    // 6 + 5 reported by the agents, 1 from the wire.
    assert_eq!((rels.len(), stored), (12, 12));
    let ci_ids: BTreeSet<i64> = ids(&listed).into_iter().collect();
    for r in rels {
        for end in ["from", "to"] {
            assert!(ci_ids.contains(&r[end].as_i64().expect("id")), "{r}");
        }
        assert_eq!(r["first_seen_ms"], json!(T0), "{r}");
    }
    assert_eq!(
        rels.iter()
            .filter(|r| r["source"] == "wire:agent-a")
            .count(),
        1
    );
    let (status, _, _) = f.call("GET", "/api/v1/cmdb/export", None, None).await;
    assert_eq!(status, 401);
    f.stop().await;
}

#[tokio::test]
async fn business_services_manual_attributes_and_relations() {
    let f = fixture().await;
    let db = f.db();
    let host_a = id_of(&db, "agent-a", ci_type::HOST, "host");
    let host_b = id_of(&db, "agent-b", ci_type::HOST, "host");
    let web_80 = id_of(&db, "agent-a", ci_type::LISTENING_SERVICE, "tcp:80");
    let os_a = id_of(&db, "agent-a", ci_type::OS, "os");
    let openssl = id_of(&db, "agent-a", ci_type::PACKAGE, "openssl:amd64");
    let source = format!("api:{}", f.admin_id);
    let shop = json!({"type": "business_service", "name": "Webshop",
                      "manual": {"owner": "team-web", "criticality": 2, "tags": {"tier": "gold"}}});

    // Viewers read but never write.
    for (method, path, body) in [
        ("POST", "/api/v1/cis".to_owned(), shop.clone()),
        (
            "PATCH",
            format!("/api/v1/cis/{host_a}"),
            json!({"manual": {"owner": "x"}}),
        ),
        (
            "POST",
            "/api/v1/relations".to_owned(),
            json!({"from": 1, "kind": "uses", "to": 2}),
        ),
        (
            "DELETE",
            "/api/v1/relations".to_owned(),
            json!({"from": 1, "kind": "uses", "to": 2}),
        ),
    ] {
        let got = f.json(method, &path, &f.viewer, Some(body)).await;
        check_error(got, 403, "forbidden");
    }

    let (status, v) = f.admin("POST", "/api/v1/cis", shop.clone()).await;
    assert_eq!(status, 201, "{v}");
    let svc = v["id"].as_i64().expect("id");
    let mut expected = json!({
        "id": svc, "type": "business_service", "key": "Webshop", "name": "Webshop",
        "host": null, "agent_id": null, "attrs": {},
        "manual": {"owner": "team-web", "criticality": 2, "tags": {"tier": "gold"}, "vendor": null},
        "source": "api", "state": "active",
        "first_seen": v["first_seen"], "first_seen_ms": v["first_seen_ms"],
        "last_seen": v["last_seen"], "last_seen_ms": v["last_seen_ms"],
        "retired_at": null, "retired_at_ms": null, "duplicate_of": null,
    });
    assert_eq!(v, expected);
    assert!(v["first_seen_ms"].as_i64().unwrap_or_default() > T1, "{v}");
    check_error(
        f.admin("POST", "/api/v1/cis", shop.clone()).await,
        409,
        "conflict",
    );
    for bad in [
        json!({"type": "host", "name": "x"}),
        json!({"type": "business_service", "name": "  "}),
        json!({"type": "business_service", "name": "x", "owner": "y"}),
        json!({"type": "business_service", "name": "x", "manual": {"criticality": 7}}),
        json!({"type": "business_service"}),
    ] {
        check_error(
            f.admin("POST", "/api/v1/cis", bad).await,
            422,
            "unprocessable",
        );
    }
    let (status, _, body) = f
        .call("POST", "/api/v1/cis", Some(&f.admin), Some("{not json"))
        .await;
    assert_eq!(status, 400, "{body}");

    // Manual attributes of the business service, then its own name and attrs.
    let (status, v) = f
        .admin(
            "PATCH",
            &format!("/api/v1/cis/{svc}"),
            json!({"manual": {"vendor": "ACME", "criticality": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    expected["manual"] =
        json!({"owner": "team-web", "criticality": 1, "tags": {"tier": "gold"}, "vendor": "ACME"});
    assert_eq!(v["manual"], expected["manual"]);
    let (status, v) = f
        .admin("PATCH", &format!("/api/v1/cis/{svc}"),
               json!({"name": "Web shop", "attrs": {"url": "https://shop.example"}, "type": "business_service"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["name"], &v["key"], &v["attrs"]),
        (
            &json!("Web shop"),
            &json!("Web shop"),
            &json!({"url": "https://shop.example"})
        )
    );
    check_error(
        f.admin(
            "PATCH",
            &format!("/api/v1/cis/{svc}"),
            json!({"type": "host"}),
        )
        .await,
        422,
        "unprocessable",
    );

    // Manual attributes of a discovered CI; its discovered attributes stay discovery's.
    let before = f.get(&format!("/api/v1/cis/{host_a}")).await;
    let (status, v) = f
        .admin(
            "PATCH",
            &format!("/api/v1/cis/{host_a}"),
            json!({"manual": {"owner": "ops", "tags": {"rack": "r1"}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["manual"],
        json!({"owner": "ops", "criticality": null, "tags": {"rack": "r1"}, "vendor": null})
    );
    assert_eq!(
        (&v["attrs"], &v["source"], &v["last_seen_ms"]),
        (
            &before["attrs"],
            &json!("discovery"),
            &before["last_seen_ms"]
        )
    );
    for body in [
        json!({"attrs": {"x": 1}}),
        json!({"name": "renamed"}),
        json!({"type": "host"}),
        json!({"manual": {"owner": "someone"}, "key": "other"}),
        json!({"attrs": null}),
    ] {
        let got = f
            .admin("PATCH", &format!("/api/v1/cis/{host_a}"), body.clone())
            .await;
        assert!(
            got.1["error"]
                .as_str()
                .unwrap_or_default()
                .contains("owned by discovery"),
            "{body}: {}",
            got.1
        );
        check_error(got, 409, "conflict");
    }
    for body in [
        json!({"manual": {"criticality": 9}}),
        json!({"manual": {"criticality": 0}}),
        json!({"manual": {"criticality": "high"}}),
        json!({"manual": {"colour": "red"}}),
        json!({"state": "retired"}),
    ] {
        let got = f
            .admin("PATCH", &format!("/api/v1/cis/{host_a}"), body.clone())
            .await;
        check_error(got, 422, "unprocessable");
    }
    check_error(
        f.admin(
            "PATCH",
            "/api/v1/cis/999999",
            json!({"manual": {"owner": "x"}}),
        )
        .await,
        404,
        "not_found",
    );
    let v = f.get(&format!("/api/v1/cis/{host_a}")).await;
    assert_eq!(
        v["manual"]["owner"], "ops",
        "refused writes changed nothing"
    );
    let v = f
        .get(&format!("/api/v1/cis/{host_a}/history?limit=2"))
        .await;
    let rows: BTreeSet<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| {
            assert_eq!(h["source"], json!(source), "{h}");
            format!("{} {} {}", h["attribute"], h["old_value"], h["new_value"])
        })
        .collect();
    let want: BTreeSet<String> = [
        "\"manual.owner\" null \"ops\"".to_owned(),
        "\"manual.tags\" null {\"rack\":\"r1\"}".to_owned(),
    ]
    .into();
    assert_eq!(rows, want);

    // Relations from the business service to a host and a listening service.
    let depends = json!({"from": svc, "kind": "depends_on", "to": host_a});
    let (status, v) = f.admin("POST", "/api/v1/relations", depends.clone()).await;
    assert_eq!(
        (status, &v),
        (
            201,
            &json!({"from": svc, "kind": "depends_on", "to": host_a, "created": true})
        )
    );
    let (status, v) = f.admin("POST", "/api/v1/relations", depends.clone()).await;
    assert_eq!((status, &v["created"]), (200, &json!(false)));
    let (status, v) = f
        .admin(
            "POST",
            "/api/v1/relations",
            json!({"from": svc, "kind": "runs_on", "to": web_80}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    for bad in [
        json!({"from": host_a, "kind": "depends_on", "to": host_b}),
        json!({"from": svc, "kind": "depends_on", "to": openssl}),
        json!({"from": svc, "kind": "eats", "to": host_a}),
        json!({"from": svc, "kind": "uses", "to": svc}),
        json!({"from": svc, "kind": "uses", "to": host_a, "note": "x"}),
    ] {
        check_error(
            f.admin("POST", "/api/v1/relations", bad).await,
            422,
            "unprocessable",
        );
    }
    check_error(
        f.admin(
            "POST",
            "/api/v1/relations",
            json!({"from": svc, "kind": "uses", "to": 999999}),
        )
        .await,
        404,
        "not_found",
    );
    let v = f
        .get(&format!(
            "/api/v1/cis/{svc}/relations?direction=out&depth=2"
        ))
        .await;
    let got = edges(&v);
    for edge in [
        "-/Web shop depends_on web1/host @1",
        "-/Web shop runs_on web1/tcp:80 @1",
        "web1/host runs web1/os @2",
        "web1/tcp:80 depends_on db1/tcp:5432 @2",
    ] {
        assert!(got.contains(&edge.to_owned()), "{edge} missing in {got:?}");
    }
    assert_eq!(
        got.iter().filter(|e| e.ends_with("@1")).count(),
        2,
        "{got:?}"
    );
    let v = f.get(&format!("/api/v1/cis/{host_a}")).await;
    assert_eq!(v["relations"], json!({"out": 4, "in": 1}));

    // Tags: the service's own, and a host's manual tags covering the host's CIs.
    let cases: &[(&str, &[&str])] = &[
        ("tag=tier=gold", &["- business_service Web shop"]),
        ("tag=rack=r1", &WEB1),
        (
            "tag=rack=r1&type=package",
            &["web1 package nginx:amd64", "web1 package openssl:amd64"],
        ),
        ("type=business_service", &["- business_service Web shop"]),
        ("q=shop.example", &["- business_service Web shop"]),
    ];
    for (q, want) in cases {
        assert_eq!(
            labels(&f.get(&format!("/api/v1/cis?{q}")).await),
            strings(want),
            "{q}"
        );
    }

    // Deleting: only what the API made, once.
    let (status, v) = f
        .admin("DELETE", "/api/v1/relations", depends.clone())
        .await;
    assert_eq!(
        (status, &v),
        (
            200,
            &json!({"from": svc, "kind": "depends_on", "to": host_a, "deleted": true})
        )
    );
    check_error(
        f.admin("DELETE", "/api/v1/relations", depends.clone())
            .await,
        404,
        "not_found",
    );
    check_error(
        f.admin(
            "DELETE",
            "/api/v1/relations",
            json!({"from": host_a, "kind": "runs", "to": os_a}),
        )
        .await,
        422,
        "unprocessable",
    );
    let v = f.get(&format!("/api/v1/cis/{host_a}")).await;
    assert_eq!(v["relations"], json!({"out": 4, "in": 0}));

    // The service's whole story, newest first, all by this token.
    let v = f.get(&format!("/api/v1/cis/{svc}/history")).await;
    let story: Vec<(String, Value, Value)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| {
            assert_eq!(h["source"], json!(source), "{h}");
            (
                h["attribute"].as_str().unwrap_or_default().to_owned(),
                h["old_value"].clone(),
                h["new_value"].clone(),
            )
        })
        .collect();
    let row = |a: &str, old: Value, new: Value| (a.to_owned(), old, new);
    assert_eq!(
        story,
        vec![
            row("relation.depends_on", json!(host_a), Value::Null),
            row("relation.runs_on", Value::Null, json!(web_80)),
            row("relation.depends_on", Value::Null, json!(host_a)),
            row("url", Value::Null, json!("https://shop.example")),
            row("_name", json!("Webshop"), json!("Web shop")),
            row("manual.vendor", Value::Null, json!("ACME")),
            row("manual.criticality", json!(2), json!(1)),
            row("*", Value::Null, Value::Null),
        ]
    );
    // Metrics: one business service, eight history rows.
    let m = metrics_for(&db).expect("metrics");
    assert_eq!(m.get(ci_type::BUSINESS_SERVICE), (1, 8));
    // A name taken by another business service.
    let (status, _) = f
        .admin(
            "POST",
            "/api/v1/cis",
            json!({"type": "business_service", "name": "Billing"}),
        )
        .await;
    assert_eq!(status, 201);
    check_error(
        f.admin(
            "PATCH",
            &format!("/api/v1/cis/{svc}"),
            json!({"name": "Billing"}),
        )
        .await,
        409,
        "conflict",
    );
    f.stop().await;
}

#[test]
fn times_in_query_parameters() {
    fn check(s: &str, expected: Option<i64>) {
        assert_eq!(super::params::parse_time_ms(s).ok(), expected, "{s:?}");
    }
    check("0", Some(0));
    check("1700000000000", Some(T0));
    check(" 1700000000000 ", Some(T0));
    check("2023-11-14T22:13:20Z", Some(T0));
    check("2023-11-14T22:13:20.250Z", Some(T0 + 250));
    check("2023-11-15T00:13:20+02:00", Some(T0));
    check("2023-11-14T21:13:20.000-01:00", Some(T0));
    check("2023-11-14T22:13:20+24:00", None);
    check("2023-11-14T22:13:20+0100", None);
    check("2023-11-14", None);
    check("yesterday", None);
    check("", None);
    check("-5", None);
    check("99999999999999999999999", None);
    check("xxxxxéé", None);
    check("é:00", None);
}

#[test]
fn query_parameters_are_strict() {
    use super::params::Params;
    use crate::http::ApiError;
    fn params(pairs: &[(&str, &str)]) -> Result<Params, ApiError> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::new(pairs, &["type", "limit", "since"], &["type"])
    }
    let bad = |r: Result<Params, ApiError>| matches!(r, Err(ApiError::BadRequest(_)));
    assert!(bad(params(&[("limit", "1"), ("limit", "2")])));
    assert!(bad(params(&[("Type", "os")])));
    let p = params(&[("type", " os, host "), ("type", ""), ("type", "cpu,,")]).expect("ok");
    assert_eq!(p.list("type"), ["os", "host", "cpu"]);
    assert_eq!(
        p.types().expect("known types"),
        ["os", "host", "cpu"].map(String::from)
    );
    assert_eq!(p.limit().expect("default"), 100);
    assert_eq!(p.time("since").expect("absent"), None);
    for (limit, expected) in [
        ("1", Some(1)),
        ("1000", Some(1000)),
        ("0", None),
        ("1001", None),
        ("-1", None),
        ("1.5", None),
        ("", Some(100)),
    ] {
        let p = params(&[("limit", limit)]).expect("ok");
        assert_eq!(p.limit().ok(), expected, "{limit}");
    }
    let p = params(&[("type", "os,gpu")]).expect("ok");
    assert!(matches!(p.types(), Err(ApiError::BadRequest(m)) if m.contains("\"gpu\"")));
}

/// Registers `agent` (hostname `big1`) with a host CI and `packages` packages.
fn seed_big_host(db: &Db, agent: &str, packages: usize) {
    db.register_agent(
        &NewAgent {
            id: agent.into(),
            hostname: "big1".into(),
            version: "0.1.0".into(),
            cert_pin: "00".repeat(32),
            token_id: "tok".into(),
        },
        T0,
    )
    .expect("register agent");
    let mut cis = vec![host("big1", "m-big1", "batch")];
    let mut relations = Vec::new();
    for p in 0..packages {
        let ci = pkg(&format!("package-{p:05}"), "1.0.0-1").attr("source", "a".repeat(200));
        relations.push(rel(HOST, relation::HAS, (ci_type::PACKAGE, &ci.key)));
        cis.push(ci);
    }
    let mut inv = Inventory {
        cis,
        relations,
        connections: vec![],
    };
    inv.canonicalize();
    snapshot(db, agent, 1, inv, T0);
}

/// An export larger than a chunk arrives in several chunks, none much larger than
/// `EXPORT_CHUNK` (the reader's memory bound), and parses to exactly what the store holds.
#[tokio::test]
async fn export_streams_in_bounded_chunks() {
    let f = fixture().await;
    seed_big_host(&f.db(), "agent-c", 3000);
    let (head, raw) = f
        .raw("GET", "/api/v1/cmdb/export", Some(&f.viewer), None)
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("transfer-encoding: chunked") && lower.contains("application/json"),
        "{head}"
    );
    let chunks = dechunk(&raw);
    let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
    let total: usize = sizes.iter().sum();
    assert!(total > 10 * super::EXPORT_CHUNK, "{total} bytes");
    // Every chunk but the last was cut after the row that took it past EXPORT_CHUNK.
    let (last, full) = sizes.split_last().expect("chunks");
    assert!(*last <= super::EXPORT_CHUNK + 4096, "{sizes:?}");
    for s in full {
        assert!(
            (super::EXPORT_CHUNK..super::EXPORT_CHUNK + 4096).contains(s),
            "{sizes:?}"
        );
    }
    let v: Value = serde_json::from_str(&chunks.concat()).expect("export is JSON");
    let db = f.db();
    let stored = |sql: &str| -> Vec<i64> {
        let mut stmt = db.conn().prepare(sql).expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<rusqlite::Result<_>>().expect("rows")
    };
    let exported: Vec<i64> = v["cis"]
        .as_array()
        .expect("cis")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(exported, stored("SELECT id FROM cis ORDER BY id"));
    assert_eq!(exported.len(), 15 + 3001);
    let relations = v["relations"].as_array().expect("relations");
    assert_eq!(
        relations
            .iter()
            .map(|r| r["from"].as_i64().expect("from"))
            .collect::<Vec<_>>(),
        stored("SELECT from_ci FROM relations ORDER BY from_ci, kind, to_ci")
    );
    f.stop().await;
}

/// Clients that stop reading an export hold no read transaction (a WAL checkpoint completes
/// while they stall) and no more than `max_exports` permits: one more export is a 429, the
/// rest of the API answers, and once the stalled clients are gone an export runs again.
#[tokio::test]
async fn stalled_exports_hold_no_transaction_and_past_the_cap_get_429() {
    let f = fixture().await;
    // ~7 MB of JSON: more than loopback's socket buffers take from a client that reads nothing.
    seed_big_host(&f.db(), "agent-c", 15_000);
    let mut stalled = Vec::new();
    for _ in 0..super::super::serve::HttpLimits::default().max_exports {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = sock.connect(f.addr).await.expect("connect");
        let req = format!(
            "GET /api/v1/cmdb/export HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            f.viewer
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut head))
            .await
            .expect("a head within 30 s")
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 200");
        stalled.push(s); // and never read again
    }
    let (status, _, body) = f
        .call("GET", "/api/v1/cmdb/export", Some(&f.viewer), None)
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_requests"), "{body}");
    let (status, _, _) = f
        .call("GET", "/api/v1/cis?limit=1", Some(&f.viewer), None)
        .await;
    assert_eq!(status, 200);
    // Writes go on while they stall, and a checkpoint that must copy them all and wait for every
    // reader completes: nobody holds a read transaction on an older snapshot.
    let db = f.db();
    let mut done = false;
    for _ in 0..200 {
        db.conn()
            .execute(
                "UPDATE agents SET version = version || '' WHERE id = 'agent-c'",
                [],
            )
            .expect("write");
        let (busy, _, _): (i64, i64, i64) = db
            .conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        if busy == 0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        done,
        "a stalled export keeps the WAL checkpoint from completing"
    );
    drop(stalled);
    // Their tasks end at their next chunk and give their permits back.
    let mut status = 0;
    for _ in 0..200 {
        let (head, _) = f
            .raw("GET", "/api/v1/cmdb/export", Some(&f.viewer), None)
            .await;
        status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    f.stop().await;
}

/// Keyset paging: `next_after` leads through every CI exactly once, whatever the filter, and
/// the total is the whole match.
#[tokio::test]
async fn list_pages_by_after() {
    let f = fixture().await;
    for query in ["", "type=package&", "type=package&state=active&"] {
        let all = ids(&f.get(&format!("/api/v1/cis?{query}limit=1000")).await);
        let mut paged = Vec::new();
        let mut url = format!("/api/v1/cis?{query}limit=3");
        let mut pages = 0;
        loop {
            let v = f.get(&url).await;
            assert_eq!(v["total"], json!(all.len()), "{url}");
            paged.extend(ids(&v));
            pages += 1;
            match v["next_after"].as_i64() {
                Some(next) => {
                    assert_eq!(Some(next), paged.last().copied(), "{url}: {v}");
                    url = format!("/api/v1/cis?{query}limit=3&after={next}");
                }
                None => break,
            }
            assert!(pages <= all.len(), "{url}: no end");
        }
        assert_eq!(paged, all, "{query}");
        assert_eq!(pages, all.len().div_ceil(3), "{query}");
    }
    let v = f.get("/api/v1/cis?limit=2&after=0").await;
    assert_eq!((&v["after"], &v["offset"]), (&json!(0), &json!(0)));
    let v = f.get("/api/v1/cis?limit=1000").await;
    assert_eq!(
        (&v["after"], &v["next_after"]),
        (&Value::Null, &Value::Null)
    );
    for bad in ["after=-1", "after=x", "after=1&offset=0", "after=1&after=2"] {
        let got = f
            .json("GET", &format!("/api/v1/cis?{bad}"), &f.viewer, None)
            .await;
        check_error(got, 400, "bad_request");
    }
    f.stop().await;
}

/// An admin retires a business service: its relations go (each with a history row), the CI
/// stays with state `retired`; discovered CIs are discovery's to retire (409). Creating the
/// name again brings the same CI back.
#[tokio::test]
async fn retiring_a_business_service() {
    let f = fixture().await;
    let db = f.db();
    let host_a = id_of(&db, "agent-a", ci_type::HOST, "host");
    let web_80 = id_of(&db, "agent-a", ci_type::LISTENING_SERVICE, "tcp:80");
    let source = format!("api:{}", f.admin_id);
    let (status, v) = f
        .admin(
            "POST",
            "/api/v1/cis",
            json!({"type": "business_service", "name": "Webshop"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let svc = v["id"].as_i64().expect("id");
    for (kind, to) in [("depends_on", host_a), ("runs_on", web_80)] {
        let (status, v) = f
            .admin(
                "POST",
                "/api/v1/relations",
                json!({"from": svc, "kind": kind, "to": to}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let metrics = metrics_for(&db).expect("metrics");
    let before = metrics.get(ci_type::BUSINESS_SERVICE);
    let path = format!("/api/v1/cis/{svc}");

    let check = |got: Answer, status: u16, code: &str| check_error(got, status, code);
    check(
        f.json("DELETE", &path, &f.viewer, None).await,
        403,
        "forbidden",
    );
    for (id, status, code) in [
        (host_a, 409, "conflict"),
        (web_80, 409, "conflict"),
        (999_999, 404, "not_found"),
    ] {
        let got = f
            .json("DELETE", &format!("/api/v1/cis/{id}"), &f.admin, None)
            .await;
        check(got, status, code);
    }
    assert_eq!(
        f.get(&format!("/api/v1/cis/{host_a}")).await["state"],
        "active"
    );

    let (status, v) = f.json("DELETE", &path, &f.admin, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["id"], &v["state"]), (&json!(svc), &json!("retired")));
    let retired_at = v["retired_at_ms"].as_i64().expect("retired_at_ms");
    assert!(retired_at > T1, "{v}");
    assert_eq!(v["last_seen_ms"], json!(retired_at));
    let graph = f.get(&format!("{path}/relations?direction=both")).await;
    assert_eq!(graph["edges"], json!([]), "{graph}");
    let history = f.get(&format!("{path}/history")).await;
    let rows: Vec<(String, String, Value, Value, String)> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| {
            (
                h["attribute"].as_str().unwrap_or_default().to_owned(),
                h["change"].as_str().unwrap_or_default().to_owned(),
                h["old_value"].clone(),
                h["new_value"].clone(),
                h["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let row = |a: &str, c: &str, old: Value, new: Value| {
        (a.to_owned(), c.to_owned(), old, new, source.clone())
    };
    // Newest first: the retirement after its relations, then the creation's rows.
    assert_eq!(
        rows,
        [
            row("*", "removed", Value::Null, Value::Null),
            row("relation.runs_on", "changed", json!(web_80), Value::Null),
            row("relation.depends_on", "changed", json!(host_a), Value::Null),
            row("relation.runs_on", "changed", Value::Null, json!(web_80)),
            row("relation.depends_on", "changed", Value::Null, json!(host_a)),
            row("*", "added", Value::Null, Value::Null),
        ],
        "{history}"
    );
    assert_eq!(
        metrics.get(ci_type::BUSINESS_SERVICE),
        (before.0 - 1, before.1 + 3)
    );

    // Again: nothing more happens.
    let (status, v) = f.json("DELETE", &path, &f.admin, None).await;
    assert_eq!((status, &v["retired_at_ms"]), (200, &json!(retired_at)));
    assert_eq!(f.get(&format!("{path}/history")).await, history);
    // A retired service takes no new relations.
    check(
        f.admin(
            "POST",
            "/api/v1/relations",
            json!({"from": svc, "kind": "uses", "to": host_a}),
        )
        .await,
        422,
        "unprocessable",
    );

    // The same name again: the same CI, active, without its old relations.
    let (status, v) = f
        .admin(
            "POST",
            "/api/v1/cis",
            json!({"type": "business_service", "name": "Webshop", "manual": {"owner": "team-b"}}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (
            &v["id"],
            &v["state"],
            &v["retired_at_ms"],
            &v["manual"]["owner"]
        ),
        (
            &json!(svc),
            &json!("active"),
            &Value::Null,
            &json!("team-b")
        )
    );
    let history = f.get(&format!("{path}/history?limit=1")).await;
    assert_eq!(
        (
            &history["items"][0]["attribute"],
            &history["items"][0]["change"],
            &history["items"][0]["old_value"]
        ),
        (&json!("*"), &json!("added"), &json!("retired"))
    );
    assert_eq!(f.get(&path).await["relations"], json!({"out": 0, "in": 0}));
    assert_eq!(metrics.get(ci_type::BUSINESS_SERVICE).0, before.0);
    f.stop().await;
}
