//! What the fuzz targets share: the wire round-trip property, and a real collector store and
//! HTTP router in a temporary directory, made once per process.
//!
//! A store lives on tmpfs (`/dev/shm`) when there is one, so that the commits every iteration
//! makes (`synchronous=FULL`) cost no disk flush. Targets that write wipe what they wrote at the
//! start of each iteration, so that an input does the same thing however often it runs (a crash
//! reproduces from its input alone).

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use axum::body::Body;
use axum::http::{header, Method, Request};
use rusqlite::Connection;
use tempfile::TempDir;
use tower::ServiceExt;
use vigil_collector::http::{router, HttpState};
use vigil_collector::store::{db_path, Db, NewAgent, Role};
use vigil_shared::codec::{decode_body, encode_body, encode_into, FrameDecoder};
use vigil_shared::inventory::{ci_type, Ci, CiRef, Inventory, OutboundConnection, Relation};
use vigil_shared::proto::{kind, InventorySnapshot, Message};

/// A fixed "now" for the stores' seeds (the HTTP handlers read the clock themselves).
pub const T0: i64 = 1_700_000_000_000;

/// The property every decoded message must have: it encodes, the encoding decodes to an equal
/// message, and that one encodes to the same bytes (the encoding is canonical). Through a whole
/// frame as well as a bare body.
pub fn check_round_trip(m: &Message) {
    let k = m.kind();
    assert!(kind::is_known(k), "a decoded message has a known kind");
    let body = encode_body(m).expect("a decoded message encodes");
    let again = decode_body(k, &body).expect("an encoded message decodes");
    // A NaN sample value is not equal to itself; the bytes below still must be.
    #[allow(clippy::eq_op)]
    if m == m {
        assert_eq!(&again, m, "decode(encode(m)) == m");
    }
    let body2 = encode_body(&again).expect("re-encode");
    assert_eq!(body2, body, "encode(decode(encode(m))) == encode(m)");

    let mut frame = Vec::new();
    encode_into(m, &mut frame, usize::MAX).expect("a decoded message encodes as a frame");
    let mut dec = FrameDecoder::new(body.len());
    dec.push(&frame);
    let got = dec
        .next_message()
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    assert_eq!(encode_body(&got).expect("re-encode"), body);
    assert!(dec.next_frame().expect("nothing after").is_none());
    dec.finish().expect("the frame was consumed whole");
}

/// A directory for a store: under `$VIGIL_FUZZ_TMPDIR` (`bench/fuzz.sh` makes one per run and
/// removes it afterwards: a process-wide store is never dropped, so its directory outlives the
/// process), else on tmpfs when there is one, else in the system's temporary directory.
pub fn temp_dir() -> TempDir {
    let mut places = Vec::new();
    if let Some(dir) = std::env::var_os("VIGIL_FUZZ_TMPDIR") {
        places.push(PathBuf::from(dir));
    }
    places.push(PathBuf::from("/dev/shm"));
    for place in places.iter().filter(|p| p.is_dir()) {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("vigil-fuzz-")
            .tempdir_in(place)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("vigil-fuzz-")
        .tempdir()
        .expect("temporary directory")
}

/// A second connection to a store's file: what a target reads back and wipes through (the
/// store's own connection is the collector's business).
pub fn side_connection(dir: &TempDir) -> Connection {
    let path = db_path(dir.path()).expect("store path");
    let c = Connection::open(path).expect("open the store file");
    c.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    c
}

/// Locks a process-wide value; a panic in an earlier iteration aborted the process anyway.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn register(db: &Db, id: &str, hostname: &str) {
    db.register_agent(
        &NewAgent {
            id: id.to_owned(),
            hostname: hostname.to_owned(),
            version: "0.1.0".into(),
            cert_pin: "00".repeat(32),
            token_id: "tok".into(),
        },
        T0,
    )
    .expect("register agent");
}

fn listener(proto: &str, address: &str, port: u16) -> Ci {
    let key = format!("{proto}:{port}");
    Ci::new(ci_type::LISTENING_SERVICE, key.clone(), key)
        .attr("protocol", proto)
        .attr("address", address)
        .attr("port", port)
}

fn has(from: (&str, &str), kind: &str, to: (&str, &str)) -> Relation {
    Relation {
        from: CiRef::new(from.0, from.1),
        kind: kind.to_owned(),
        to: CiRef::new(to.0, to.1),
    }
}

/// A small host's inventory: what the seeded stores hold for each agent.
pub fn seed_inventory(host: &str, machine_id: &str, ip: &str, remote_ip: &str) -> Inventory {
    let mut inv = Inventory {
        cis: vec![
            Ci::new(ci_type::HOST, ci_type::HOST, host)
                .attr("hostname", host)
                .attr("machine_id", machine_id),
            Ci::new(ci_type::OS, "os", "Debian").attr("version", "13"),
            Ci::new(ci_type::IP_ADDRESS, format!("{ip}/24"), ip)
                .attr("address", ip)
                .attr("family", "inet"),
            Ci::new(ci_type::NETWORK_INTERFACE, "eth0", "eth0").attr("mtu", 1500),
            listener("tcp", "0.0.0.0", 5432),
            listener("tcp", ip, 80),
            Ci::new(ci_type::PACKAGE, "openssl:amd64", "openssl")
                .attr("version", "3.0.1")
                .attr("tags", serde_json::json!(["a", "b"])),
        ],
        relations: vec![
            has(("host", "host"), "runs", ("os", "os")),
            has(("host", "host"), "has", ("network_interface", "eth0")),
            has(
                ("network_interface", "eth0"),
                "has",
                ("ip_address", &format!("{ip}/24")),
            ),
            has(
                ("listening_service", "tcp:5432"),
                "provided_by",
                ("package", "openssl:amd64"),
            ),
        ],
        connections: vec![OutboundConnection {
            proto: "tcp".into(),
            remote_ip: remote_ip.into(),
            remote_port: 5432,
            local_service: Some("tcp:80".into()),
            process: Some("app".into()),
        }],
    };
    inv.canonicalize();
    inv
}

/// A collector's HTTP surface over a seeded store, driven in-process (no socket).
pub struct Api {
    pub dir: TempDir,
    pub runtime: tokio::runtime::Runtime,
    pub router: axum::Router,
    pub viewer: String,
    pub operator: String,
    /// Ids of the seeded CIs.
    pub ci_ids: Vec<i64>,
    pub side: Mutex<Connection>,
}

/// One answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Api {
    fn new() -> Api {
        let dir = temp_dir();
        let db = Db::open(dir.path()).expect("open store");
        register(&db, "agent-a", "web1");
        register(&db, "agent-b", "db1.example.com");
        register(&db, "agent-c", "web1.example.com");
        db.revoke_agent("agent-c", T0).expect("revoke");
        let a = seed_inventory("web1", "m-a", "10.1.0.1", "10.1.0.2");
        let b = seed_inventory("db1", "m-b", "10.1.0.2", "10.1.0.1");
        for (i, (agent, inv)) in [("agent-a", &a), ("agent-b", &b)].into_iter().enumerate() {
            let snap = InventorySnapshot {
                version: 1,
                ts_ms: T0,
                inventory: inv.clone(),
            };
            vigil_collector::cmdb::apply_snapshot(&db, agent, &snap, T0 + i as i64)
                .expect("seed snapshot");
        }
        // A second snapshot: changes, a removal, history rows.
        let mut a2 = a.clone();
        a2.cis.retain(|c| c.ci_type != ci_type::OS);
        if let Some(p) = a2.cis.iter_mut().find(|c| c.ci_type == ci_type::PACKAGE) {
            p.attrs.insert("version".into(), "3.0.2".into());
        }
        let snap = InventorySnapshot {
            version: 2,
            ts_ms: T0 + 60_000,
            inventory: a2,
        };
        vigil_collector::cmdb::apply_snapshot(&db, "agent-a", &snap, T0 + 60_000)
            .expect("seed snapshot");
        let (_, viewer) = db
            .create_api_token(Role::Viewer, "fuzz viewer", T0)
            .expect("token");
        let (_, operator) = db
            .create_api_token(Role::Operator, "fuzz operator", T0)
            .expect("token");
        drop(db);
        let side = side_connection(&dir);
        let ci_ids = side
            .prepare("SELECT id FROM cis ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()
            })
            .expect("CI ids");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metrics_text: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(String::new);
        let state = HttpState::new(
            dir.path().to_owned(),
            metrics_text,
            vigil_collector::supervise::Supervisor::new(),
        )
        .expect("HTTP state");
        let api = Api {
            router: router(state),
            dir,
            runtime,
            viewer,
            operator,
            ci_ids,
            side: Mutex::new(side),
        };
        // Incidents for the list endpoints: an Alertmanager payload (one attached to a host,
        // one resolved, one on no known host).
        let seeded = api.request(
            Method::POST,
            "/api/v1/alertmanager",
            &api.operator,
            SEED_ALERTS.as_bytes().to_vec(),
        );
        assert_eq!(
            seeded.status,
            200,
            "seed alerts: {}",
            String::from_utf8_lossy(&seeded.body)
        );
        let resolved = api.request(
            Method::POST,
            "/api/v1/alertmanager",
            &api.operator,
            SEED_RESOLVE.as_bytes().to_vec(),
        );
        assert_eq!(resolved.status, 200, "seed resolve");
        api
    }

    /// Sends one request through the router and reads the whole answer.
    pub fn request(&self, method: Method, uri: &str, token: &str, body: Vec<u8>) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request");
        self.runtime.block_on(async {
            let res = self
                .router
                .clone()
                .oneshot(req)
                .await
                .expect("the router is infallible");
            let status = res.status().as_u16();
            let body = axum::body::to_bytes(res.into_body(), 64 << 20)
                .await
                .expect("answer body");
            Answer {
                status,
                body: body.to_vec(),
            }
        })
    }
}

const SEED_ALERTS: &str = r#"{
  "version": "4", "status": "firing", "receiver": "vigil", "groupKey": "{}",
  "alerts": [
    {"status": "firing", "fingerprint": "f1", "startsAt": "2024-05-01T12:00:00Z",
     "labels": {"alertname": "HighLoad", "instance": "web1:9100", "severity": "critical"},
     "annotations": {"summary": "load"}},
    {"status": "firing", "fingerprint": "f2", "startsAt": "2024-05-01T12:00:00Z",
     "labels": {"alertname": "DiskFull", "host": "db1", "severity": "warning"}},
    {"status": "firing", "fingerprint": "f3",
     "labels": {"alertname": "Elsewhere", "instance": "10.9.9.9:9100"}}
  ]
}"#;

const SEED_RESOLVE: &str = r#"{"version": "4", "alerts": [
    {"status": "resolved", "fingerprint": "f2", "endsAt": "2024-05-01T13:00:00Z"}]}"#;

/// The seeded API, made on first use.
pub static API: LazyLock<Api> = LazyLock::new(Api::new);
