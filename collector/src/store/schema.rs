//! The store's schema as migrations, oldest first (`rusqlite_migration`). Every connection the
//! store opens runs them ([`super::open_connection`]); a released entry is never edited, a new
//! one is appended.

use rusqlite_migration::{Migrations, M};

/// Schema, oldest first. Never edit a released entry: append a new one.
///
/// `batches` is a rowid table with a `UNIQUE (agent_id, seq)` constraint rather than a
/// `WITHOUT ROWID` table: payloads are kilobytes, and SQLite advises against WITHOUT ROWID for rows
/// larger than ~1/20 of a page (each leaf would hold a handful of rows, every insert would split
/// pages). Measured with 200 agents, 2,000-row transactions, WAL + synchronous=FULL: 66k vs 28k
/// rows/s with 300-byte payloads, 16.5k vs 8.4k with 4 KB. The unique key is still the duplicate
/// filter (`ON CONFLICT DO NOTHING` -> Duplicate).
const MIGRATION_STEPS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE agents (
        id             TEXT PRIMARY KEY NOT NULL,
        hostname       TEXT NOT NULL,
        version        TEXT NOT NULL,
        cert_pin       TEXT NOT NULL,
        enrolled_at_ms INTEGER NOT NULL,
        token_id       TEXT,
        last_seen_ms   INTEGER,
        last_addr      TEXT,
        last_seq       INTEGER,
        connected      INTEGER NOT NULL DEFAULT 0,
        revoked_at_ms  INTEGER
    ) STRICT;
    CREATE TABLE enroll_tokens (
        id            TEXT PRIMARY KEY NOT NULL,
        secret_hash   TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        single_use    INTEGER NOT NULL,
        used_at_ms    INTEGER,
        used_by       TEXT,
        revoked_at_ms INTEGER
    ) STRICT;
    CREATE TABLE api_tokens (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        secret_hash   TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_used_ms  INTEGER,
        revoked_at_ms INTEGER
    ) STRICT;
    CREATE TABLE batches (
        agent_id    TEXT NOT NULL REFERENCES agents(id),
        seq         INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        first_ts_ms INTEGER NOT NULL,
        last_ts_ms  INTEGER NOT NULL,
        samples     INTEGER NOT NULL,
        payload     BLOB NOT NULL,
        UNIQUE (agent_id, seq)
    ) STRICT;
    CREATE INDEX batches_received ON batches(received_ms);",
    ),
    // The CMDB (issue 3): see `crate::cmdb` for identity rules and lifecycle.
    // `relations` is WITHOUT ROWID (small rows, looked up by their key); every index on `cis`
    // and `ci_history` grows at its right edge or within one agent's range, so a snapshot
    // touches few pages. `ci_view` is what readers should query: a non-retired discovered CI was
    // last seen when its agent last reported (`inventory_state.ts_ms`), which deltas do not
    // write into every row.
    M::up(
        "CREATE TABLE cis (
        id            INTEGER PRIMARY KEY,
        agent_id      TEXT,
        type          TEXT NOT NULL,
        key           TEXT NOT NULL,
        name          TEXT NOT NULL,
        attrs         TEXT NOT NULL DEFAULT '{}',
        manual_attrs  TEXT,
        source        TEXT NOT NULL CHECK (source IN ('discovery', 'api')),
        state         TEXT NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'stale', 'retired')),
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        retired_at_ms INTEGER,
        UNIQUE (agent_id, type, key)
    ) STRICT;
    CREATE UNIQUE INDEX cis_api_identity ON cis(type, key) WHERE agent_id IS NULL;
    CREATE INDEX cis_type_state ON cis(type, state);
    CREATE INDEX cis_ip_address ON cis(key) WHERE type = 'ip_address';
    CREATE TABLE ci_history (
        id        INTEGER PRIMARY KEY,
        ci_id     INTEGER NOT NULL REFERENCES cis(id),
        ts_ms     INTEGER NOT NULL,
        attribute TEXT NOT NULL,
        change    TEXT NOT NULL CHECK (change IN ('added', 'changed', 'removed', 'state')),
        old_value TEXT,
        new_value TEXT,
        source    TEXT NOT NULL
    ) STRICT;
    CREATE INDEX ci_history_ci ON ci_history(ci_id, ts_ms);
    CREATE INDEX ci_history_ts ON ci_history(ts_ms);
    CREATE TABLE relations (
        from_ci       INTEGER NOT NULL REFERENCES cis(id),
        kind          TEXT NOT NULL,
        to_ci         INTEGER NOT NULL REFERENCES cis(id),
        source        TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        PRIMARY KEY (from_ci, kind, to_ci)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX relations_to ON relations(to_ci);
    CREATE INDEX relations_source ON relations(source);
    CREATE TABLE inventory_state (
        agent_id     TEXT PRIMARY KEY NOT NULL REFERENCES agents(id),
        version      INTEGER NOT NULL,
        ts_ms        INTEGER NOT NULL,
        reported_ms  INTEGER NOT NULL,
        machine_id   TEXT,
        dmi_uuid     TEXT,
        duplicate_of TEXT,
        stale        INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX inventory_state_machine ON inventory_state(machine_id)
        WHERE machine_id IS NOT NULL;
    CREATE TABLE connections (
        agent_id      TEXT NOT NULL REFERENCES agents(id),
        proto         TEXT NOT NULL,
        remote_ip     TEXT NOT NULL,
        remote_port   INTEGER NOT NULL,
        local_service TEXT,
        process       TEXT
    ) STRICT;
    CREATE INDEX connections_agent ON connections(agent_id);
    CREATE INDEX connections_remote ON connections(remote_ip, remote_port);
    CREATE VIEW ci_view AS
    SELECT c.id, c.agent_id, c.type, c.key, c.name, c.attrs, c.manual_attrs, c.source, c.state,
           c.first_seen_ms,
           CASE WHEN c.state != 'retired' AND s.ts_ms > c.last_seen_ms THEN s.ts_ms
                ELSE c.last_seen_ms END AS last_seen_ms,
           c.retired_at_ms, s.duplicate_of
    FROM cis c LEFT JOIN inventory_state s ON s.agent_id = c.agent_id;",
    ),
    // CMDB: type-filtered CI lists page by id (`WHERE type = ? AND id > ? ORDER BY id`).
    M::up("CREATE INDEX cis_type_id ON cis(type, id);"),
    // Incidents (issue 4): see `crate::incidents` for the lifecycle and `crate::notify` for the
    // outbox. At most one active (open or acknowledged) incident per dedup key.
    M::up(
        "CREATE TABLE incidents (
        id                INTEGER PRIMARY KEY,
        dedup_key         TEXT NOT NULL,
        rule              TEXT NOT NULL,
        origin            TEXT NOT NULL CHECK (origin IN ('rule', 'alertmanager')),
        agent_id          TEXT,
        ci_id             INTEGER REFERENCES cis(id),
        ci_type           TEXT NOT NULL,
        ci_key            TEXT NOT NULL,
        title             TEXT NOT NULL,
        state             TEXT NOT NULL
                          CHECK (state IN ('open', 'acknowledged', 'resolved', 'closed')),
        impact            TEXT NOT NULL CHECK (impact IN ('high', 'medium', 'low')),
        urgency           TEXT NOT NULL CHECK (urgency IN ('high', 'medium', 'low')),
        priority          INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
        metric            TEXT,
        op                TEXT CHECK (op IN ('>', '<')),
        threshold         REAL,
        trigger_value     REAL,
        peak_value        REAL,
        last_value        REAL,
        first_breach_ms   INTEGER NOT NULL,
        last_breach_ms    INTEGER NOT NULL,
        started_ms        INTEGER NOT NULL,
        created_ms        INTEGER NOT NULL,
        acknowledged_ms   INTEGER,
        resolved_ms       INTEGER,
        closed_ms         INTEGER,
        assignee          TEXT,
        resolution_code   TEXT,
        resolution_note   TEXT,
        resolved_by       TEXT,
        flapping          INTEGER NOT NULL DEFAULT 0,
        suppressed        TEXT CHECK (suppressed IN ('parent', 'maintenance')),
        parent_id         INTEGER REFERENCES incidents(id),
        probable_cause_id INTEGER REFERENCES incidents(id),
        maintenance       TEXT,
        reopen_count      INTEGER NOT NULL DEFAULT 0,
        announced         INTEGER NOT NULL DEFAULT 0,
        labels            TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE UNIQUE INDEX incidents_active_key ON incidents(dedup_key)
        WHERE state IN ('open', 'acknowledged');
    CREATE INDEX incidents_key ON incidents(dedup_key, id);
    CREATE INDEX incidents_state ON incidents(state, priority);
    CREATE INDEX incidents_agent ON incidents(agent_id, state);
    CREATE INDEX incidents_ci ON incidents(ci_id);
    CREATE INDEX incidents_parent ON incidents(parent_id) WHERE parent_id IS NOT NULL;
    CREATE TABLE incident_events (
        id          INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents(id),
        ts_ms       INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE INDEX incident_events_incident ON incident_events(incident_id, id);
    CREATE TABLE notifications (
        id              INTEGER PRIMARY KEY,
        webhook         TEXT NOT NULL,
        incident_id     INTEGER NOT NULL REFERENCES incidents(id),
        event           TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        body            TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT,
        delivered_ms    INTEGER,
        failed_ms       INTEGER
    ) STRICT;
    CREATE INDEX notifications_due ON notifications(next_attempt_ms)
        WHERE delivered_ms IS NULL AND failed_ms IS NULL;
    CREATE TABLE maintenance_windows (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        scope       TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        every       TEXT CHECK (every IN ('day', 'week')),
        origin      TEXT NOT NULL CHECK (origin IN ('config', 'api')),
        created_ms  INTEGER NOT NULL,
        deleted_ms  INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX maintenance_live_name ON maintenance_windows(name)
        WHERE deleted_ms IS NULL;",
    ),
    // Rules made through the API (`crate::incidents::api_rules`): the request body as JSON, checked
    // by the same validation as `[[rule]]` in collector.toml.
    M::up(
        "CREATE TABLE api_rules (
        name       TEXT PRIMARY KEY NOT NULL,
        definition TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL
    ) STRICT;",
    ),
    // A CI's history as a chain instead of an index: `cis.last_history_id` is its newest
    // `ci_history` row and each row's `prev_id` the one before (by id). The `(ci_id, ts_ms)`
    // index made every delta rewrite about ten leaves per host (a host's entries span them
    // all, and a 1 % delta lands in nearly every one); a chained row is only appended. See
    // `cmdb::history` for writes and reads.
    M::up(
        "ALTER TABLE cis ADD COLUMN last_history_id INTEGER;
    ALTER TABLE ci_history ADD COLUMN prev_id INTEGER;
    UPDATE ci_history SET prev_id = p.prev
        FROM (SELECT id, LAG(id) OVER (PARTITION BY ci_id ORDER BY id) AS prev
              FROM ci_history) AS p
        WHERE p.id = ci_history.id AND p.prev IS NOT NULL;
    UPDATE cis SET last_history_id = (SELECT MAX(h.id) FROM ci_history h WHERE h.ci_id = cis.id);
    DROP INDEX ci_history_ci;",
    ),
    // Liveness across restarts: the interval an agent last said hello with, and when it last
    // said goodbye (NULL once it connects again), so a restarted collector knows a clean stop
    // from an outage (`crate::presence`).
    M::up(
        "ALTER TABLE agents ADD COLUMN interval_ms INTEGER;
    ALTER TABLE agents ADD COLUMN stopped_ms INTEGER;",
    ),
    // Incident service levels (`crate::sla::targets`): when the response (acknowledgement) and
    // the resolution fall due, the highest warning level (0, 50, 75, 100 %) each clock reached,
    // and the SLA whose targets apply (NULL: the defaults). Kept by the engine's clockwork.
    M::up(
        "ALTER TABLE incidents ADD COLUMN response_due_ms INTEGER;
    ALTER TABLE incidents ADD COLUMN resolution_due_ms INTEGER;
    ALTER TABLE incidents ADD COLUMN response_level INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE incidents ADD COLUMN resolution_level INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE incidents ADD COLUMN targets_sla TEXT;
    CREATE INDEX incidents_clocks ON incidents(resolved_ms) WHERE resolution_level < 100;",
    ),
    // SLAs made through the API (`crate::sla::api`): the request body as JSON, checked by the
    // same validation as `[[sla]]` in collector.toml.
    M::up(
        "CREATE TABLE api_slas (
        name       TEXT PRIMARY KEY NOT NULL,
        definition TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        updated_by TEXT NOT NULL
    ) STRICT;",
    ),
    // Check executions per (agent, check, UTC day): how many runs and how many passed, counted
    // as batches are stored (`crate::sla::occurrences`), kept `sla::MAX_DAYS` days.
    M::up(
        "CREATE TABLE check_runs (
        agent_id   TEXT NOT NULL,
        check_name TEXT NOT NULL,
        day_ms     INTEGER NOT NULL,
        ok         INTEGER NOT NULL,
        total      INTEGER NOT NULL,
        PRIMARY KEY (agent_id, check_name, day_ms)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX check_runs_day ON check_runs(day_ms);",
    ),
    // When each agent sent data (`store::writer::DataSpans`): an SLA's coverage. What came
    // before this table is taken as known from enrollment to the upgrade, as it was reported.
    M::up(
        "CREATE TABLE agent_data (
        agent_id TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms   INTEGER NOT NULL,
        PRIMARY KEY (agent_id, start_ms)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO agent_data (agent_id, start_ms, end_ms)
        SELECT id, enrolled_at_ms, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM agents
        WHERE enrolled_at_ms <= CAST(strftime('%s', 'now') AS INTEGER) * 1000;",
    ),
    // The audit log (`crate::http::audit`): every state-changing API request, who, what, when,
    // from where and its status.
    M::up(
        "CREATE TABLE audit_log (
        id       INTEGER PRIMARY KEY,
        ts_ms    INTEGER NOT NULL,
        token_id TEXT,
        role     TEXT,
        method   TEXT NOT NULL,
        path     TEXT NOT NULL,
        status   INTEGER NOT NULL,
        remote   TEXT
    ) STRICT;
    CREATE INDEX audit_log_ts ON audit_log(ts_ms);",
    ),
    // Check executions by day with their counts (`sla::occurrences::read`): a report reads a
    // period's days from the index alone, in order, without looking up rows or sorting.
    M::up(
        "DROP INDEX check_runs_day;
    CREATE INDEX check_runs_by_day ON check_runs(day_ms, agent_id, ok, total);",
    ),
    // What changed since an SLA read last looked (`crate::sla::cache`): the version of each
    // UTC day of `check_runs`, raised by every write to it, and a log of the incidents whose
    // rows an SLA figure depends on were written. Kept by triggers, so that every writer (the
    // ingest writer, the incident engine, a tool on the same file) is seen. (No `OR IGNORE` in
    // them: under the writer's upsert it would take the upsert's conflict policy and fail.)
    M::up(
        "CREATE TABLE check_days (
        day_ms  INTEGER PRIMARY KEY,
        version INTEGER NOT NULL
    ) STRICT;
    INSERT INTO check_days (day_ms, version) SELECT DISTINCT day_ms, 1 FROM check_runs;
    CREATE TRIGGER check_runs_inserted AFTER INSERT ON check_runs BEGIN
        INSERT INTO check_days (day_ms, version) SELECT NEW.day_ms, 0
            WHERE NOT EXISTS (SELECT 1 FROM check_days WHERE day_ms = NEW.day_ms);
        UPDATE check_days SET version = version + 1 WHERE day_ms = NEW.day_ms;
    END;
    CREATE TRIGGER check_runs_updated AFTER UPDATE ON check_runs BEGIN
        INSERT INTO check_days (day_ms, version) SELECT NEW.day_ms, 0
            WHERE NOT EXISTS (SELECT 1 FROM check_days WHERE day_ms = NEW.day_ms);
        UPDATE check_days SET version = version + 1 WHERE day_ms = NEW.day_ms;
    END;
    CREATE TABLE incident_changes (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id INTEGER NOT NULL
    ) STRICT;
    CREATE TRIGGER incidents_inserted AFTER INSERT ON incidents BEGIN
        INSERT INTO incident_changes (incident_id) VALUES (NEW.id);
    END;
    CREATE TRIGGER incidents_changed AFTER UPDATE OF agent_id, ci_id, ci_type, ci_key, rule,
        priority, first_breach_ms, resolved_ms, reopen_count ON incidents BEGIN
        INSERT INTO incident_changes (incident_id) VALUES (NEW.id);
    END;",
    ),
    // Console users and their sessions (`store::users`); the audit log names the user of a
    // request made with a session.
    M::up(
        "CREATE TABLE users (
        name          TEXT PRIMARY KEY,
        role          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        updated_ms    INTEGER NOT NULL,
        disabled_ms   INTEGER,
        last_login_ms INTEGER
    ) STRICT;
    CREATE TABLE sessions (
        id           TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL,
        user_name    TEXT NOT NULL REFERENCES users(name),
        csrf         TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        remote       TEXT,
        ended_ms     INTEGER
    ) STRICT;
    CREATE INDEX sessions_user ON sessions(user_name);
    ALTER TABLE audit_log ADD COLUMN user_name TEXT;",
    ),
    // A console session belongs to a user (a password login) or to an API token (a pasted
    // token): exactly one of the two.
    M::up(
        "CREATE TABLE sessions_new (
        id           TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL,
        user_name    TEXT REFERENCES users(name),
        token_id     TEXT REFERENCES api_tokens(id),
        csrf         TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        remote       TEXT,
        ended_ms     INTEGER,
        CHECK ((user_name IS NULL) <> (token_id IS NULL))
    ) STRICT;
    INSERT INTO sessions_new (id, secret_hash, user_name, csrf, created_ms, last_seen_ms, remote,
                              ended_ms)
        SELECT id, secret_hash, user_name, csrf, created_ms, last_seen_ms, remote, ended_ms
        FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_new RENAME TO sessions;
    CREATE INDEX sessions_user ON sessions(user_name);
    CREATE INDEX sessions_token ON sessions(token_id);",
    ),
];

/// The migrations applied by every [`Db::open`] and [`Writer::spawn`].
pub const MIGRATIONS: Migrations<'static> = Migrations::from_slice(MIGRATION_STEPS);
