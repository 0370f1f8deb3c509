//! Enrollment tokens (agents) and API tokens (HTTP clients): creation, checking, revocation.
//!
//! Only `hash_secret(secret)` is ever stored; the full token text exists once, in the return
//! value of the `create_*` call. Checks compare hashes in constant time and a refused check
//! changes nothing in the file.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use vigil_shared::identity::{self, EnrollToken, Pin};

use super::{insert_agent, Db, NewAgent, Role, StoreError};

/// API tokens read `vgl_<id>_<secret>`.
pub const API_TOKEN_PREFIX: &str = "vgl_";
const API_ID_BYTES: usize = 6;
const API_SECRET_LEN: usize = 40;
const MAX_API_FIELD_LEN: usize = 128;
/// `last_used_ms` is refreshed at most this often per token, so reads rarely write.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// Why an enrollment token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    /// The same words as [`TokenRefusal::BadSecret`]: a caller cannot tell a token id that
    /// exists from one that does not.
    #[error("unknown enrollment token or wrong secret")]
    Unknown,
    #[error("unknown enrollment token or wrong secret")]
    BadSecret,
    #[error("enrollment token expired")]
    Expired,
    #[error("enrollment token already used")]
    AlreadyUsed,
    #[error("enrollment token revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for TokenRefusal {
    fn from(e: rusqlite::Error) -> Self {
        TokenRefusal::Store(e.into())
    }
}

/// One row of `enroll_tokens` (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollTokenRow {
    pub id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub single_use: bool,
    pub used_at_ms: Option<i64>,
    pub used_by: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

/// One row of `api_tokens` (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

fn to_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_role(s: String) -> Result<Role, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        column: "api_tokens.role",
        value: s,
    })
}

/// Splits `vgl_<id>_<secret>`; `None` if it is not shaped like one.
fn parse_api_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(API_TOKEN_PREFIX)?.split_once('_')?;
    let ok = |s: &str| {
        (1..=MAX_API_FIELD_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    (ok(id) && ok(secret)).then_some((id, secret))
}

/// Checks the token inside `tx` and marks a single-use token used by `agent_id`.
fn consume_in(
    tx: &Transaction<'_>,
    id: &str,
    secret: &str,
    agent_id: &str,
    now_ms: i64,
) -> Result<(), TokenRefusal> {
    check_in(tx, id, secret, now_ms)?;
    tx.execute(
        "UPDATE enroll_tokens SET used_at_ms = ?2, used_by = ?3 WHERE id = ?1",
        params![id, now_ms, agent_id],
    )?;
    Ok(())
}

/// Whether the token `id` with `secret` may enroll an agent at `now_ms`.
fn check_in(conn: &Connection, id: &str, secret: &str, now_ms: i64) -> Result<(), TokenRefusal> {
    let row = conn
        .prepare_cached(
            "SELECT secret_hash, expires_at_ms, single_use, used_at_ms, revoked_at_ms
             FROM enroll_tokens WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((hash, expires_at_ms, single_use, used_at_ms, revoked_at_ms)) = row else {
        return Err(TokenRefusal::Unknown);
    };
    // The secret first: without it, a caller learns nothing about the token's state.
    if !identity::secret_matches(&hash, secret) {
        return Err(TokenRefusal::BadSecret);
    }
    if revoked_at_ms.is_some() {
        return Err(TokenRefusal::Revoked);
    }
    if now_ms >= expires_at_ms {
        return Err(TokenRefusal::Expired);
    }
    if single_use && used_at_ms.is_some() {
        return Err(TokenRefusal::AlreadyUsed);
    }
    Ok(())
}

impl Db {
    /// Creates an enrollment token valid for `ttl` and returns it (the only time the secret is
    /// available). Print it with `Display`.
    pub fn create_enroll_token(
        &self,
        ttl: Duration,
        single_use: bool,
        ca_pin: Pin,
        now_ms: i64,
    ) -> Result<EnrollToken, StoreError> {
        let token = EnrollToken::generate(ca_pin);
        self.conn.execute(
            "INSERT INTO enroll_tokens (id, secret_hash, created_at_ms, expires_at_ms, single_use)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token.id,
                identity::hash_secret(&token.secret),
                now_ms,
                now_ms.saturating_add(to_ms(ttl)),
                single_use
            ],
        )?;
        Ok(token)
    }

    /// Checks an enrollment token and, for a single-use token, marks it used by `agent_id`, in one
    /// transaction (two enrollments racing for the same token: exactly one wins).
    pub fn consume_enroll_token(
        &self,
        id: &str,
        secret: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<(), TokenRefusal> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        consume_in(&tx, id, secret, agent_id, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// [`Db::consume_enroll_token`] and [`Db::register_agent`] in one transaction: either the
    /// token is spent and the agent recorded, or neither.
    pub fn enroll_agent(
        &self,
        token_id: &str,
        secret: &str,
        agent: &NewAgent,
        now_ms: i64,
    ) -> Result<(), TokenRefusal> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        consume_in(&tx, token_id, secret, &agent.id, now_ms)?;
        insert_agent(&tx, agent, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Undoes an enrollment whose certificate never reached its agent: the agent (which never
    /// connected) is forgotten and the token, if this agent spent it, is unspent. One
    /// transaction; an agent that has connected since is kept.
    pub fn undo_enrollment(&self, token_id: &str, agent_id: &str) -> Result<(), StoreError> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let gone = tx.execute(
            "DELETE FROM agents WHERE id = ?1 AND last_seen_ms IS NULL AND connected = 0",
            [agent_id],
        )?;
        if gone > 0 {
            tx.execute(
                "UPDATE enroll_tokens SET used_at_ms = NULL, used_by = NULL
                 WHERE id = ?1 AND used_by = ?2",
                params![token_id, agent_id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the token may enroll an agent now, without spending it: checked before the
    /// collector signs anything.
    pub fn check_enroll_token(
        &self,
        token_id: &str,
        secret: &str,
        now_ms: i64,
    ) -> Result<(), TokenRefusal> {
        check_in(&self.conn, token_id, secret, now_ms)
    }

    /// Revokes an enrollment token (keeping the first revocation time). Returns whether it exists.
    pub fn revoke_enroll_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE enroll_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(n > 0)
    }

    pub fn list_enroll_tokens(&self) -> Result<Vec<EnrollTokenRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, created_at_ms, expires_at_ms, single_use, used_at_ms, used_by,
                    revoked_at_ms
             FROM enroll_tokens ORDER BY created_at_ms, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EnrollTokenRow {
                    id: r.get(0)?,
                    created_at_ms: r.get(1)?,
                    expires_at_ms: r.get(2)?,
                    single_use: r.get(3)?,
                    used_at_ms: r.get(4)?,
                    used_by: r.get(5)?,
                    revoked_at_ms: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Creates an API token; returns `(id, full token text "vgl_<id>_<secret>")`.
    pub fn create_api_token(
        &self,
        role: Role,
        name: &str,
        now_ms: i64,
    ) -> Result<(String, String), StoreError> {
        let id = hex::encode(rand::random::<[u8; API_ID_BYTES]>());
        let secret = identity::random_secret(API_SECRET_LEN);
        self.conn.execute(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                name,
                role.as_str(),
                identity::hash_secret(&secret),
                now_ms
            ],
        )?;
        let token = format!("{API_TOKEN_PREFIX}{id}_{secret}");
        Ok((id, token))
    }

    /// Revokes an API token. Returns whether it exists.
    pub fn revoke_api_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE api_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(n > 0)
    }

    /// `Some((id, role))` for a valid, unrevoked token; `None` for anything else (malformed,
    /// unknown, wrong secret, revoked).
    pub fn authenticate_api_token(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<(String, Role)>, StoreError> {
        let Some((id, secret)) = parse_api_token(token) else {
            return Ok(None);
        };
        let row = self
            .conn
            .prepare_cached(
                "SELECT role, secret_hash, revoked_at_ms, last_used_ms FROM api_tokens
                 WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .optional()?;
        let Some((role, hash, revoked_at_ms, last_used_ms)) = row else {
            return Ok(None);
        };
        if !identity::secret_matches(&hash, secret) || revoked_at_ms.is_some() {
            return Ok(None);
        }
        let role = parse_role(role)?;
        if last_used_ms.is_none_or(|t| now_ms.saturating_sub(t) >= LAST_USED_RESOLUTION_MS) {
            self.conn.execute(
                "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
        }
        Ok(Some((id.to_owned(), role)))
    }

    pub fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, name, role, created_at_ms, last_used_ms, revoked_at_ms
             FROM api_tokens ORDER BY created_at_ms, id",
        )?;
        let raws = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter()
            .map(
                |(id, name, role, created_at_ms, last_used_ms, revoked_at_ms)| {
                    Ok(ApiTokenRow {
                        id,
                        name,
                        role: parse_role(role)?,
                        created_at_ms,
                        last_used_ms,
                        revoked_at_ms,
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::agent;

    const PIN: Pin = [7u8; 32];
    const HOUR: Duration = Duration::from_secs(3600);

    fn token_row(db: &Db, id: &str) -> EnrollTokenRow {
        db.list_enroll_tokens()
            .expect("list")
            .into_iter()
            .find(|t| t.id == id)
            .expect("token row")
    }

    #[test]
    fn enroll_token_text_and_storage() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        let t = db
            .create_enroll_token(HOUR, true, PIN, 1_000)
            .expect("create");
        let text = t.to_string();
        assert!(
            text.starts_with(&format!("v1.{}.{}.", t.id, t.secret)),
            "{text}"
        );
        let row = token_row(&db, &t.id);
        assert_eq!((row.created_at_ms, row.expires_at_ms), (1_000, 3_601_000));
        assert!(row.single_use && row.used_at_ms.is_none());
        // The secret is nowhere in the file's token table.
        let stored: String = db
            .conn
            .query_row("SELECT secret_hash FROM enroll_tokens", [], |r| r.get(0))
            .expect("hash");
        assert_eq!(stored, identity::hash_secret(&t.secret));
        assert_ne!(stored, t.secret);
    }

    #[test]
    fn enroll_token_refusals_change_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        let single = db.create_enroll_token(HOUR, true, PIN, 0).expect("single");
        let multi = db.create_enroll_token(HOUR, false, PIN, 0).expect("multi");
        let revoked = db
            .create_enroll_token(HOUR, false, PIN, 0)
            .expect("revoked");
        assert!(db.revoke_enroll_token(&revoked.id, 10).expect("revoke"));
        assert!(!db.revoke_enroll_token("nope", 10).expect("revoke unknown"));

        let check = |id: &str, secret: &str, now: i64, expected: Result<(), &str>| {
            let before = db.list_enroll_tokens().expect("list");
            // The check alone gives the same answer and never spends the token.
            let checked = db
                .check_enroll_token(id, secret, now)
                .map_err(|e| e.to_string());
            assert_eq!(
                db.list_enroll_tokens().expect("list"),
                before,
                "check spent it"
            );
            let got = db.consume_enroll_token(id, secret, "agent-x", now);
            assert_eq!(
                checked,
                got.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                "{id} at {now}"
            );
            let got = got.map_err(|e| match e {
                TokenRefusal::Unknown => "unknown",
                TokenRefusal::BadSecret => "bad-secret",
                TokenRefusal::Expired => "expired",
                TokenRefusal::AlreadyUsed => "already-used",
                TokenRefusal::Revoked => "revoked",
                TokenRefusal::Store(_) => "store",
            });
            assert_eq!(got, expected, "{id} at {now}");
            if got.is_err() {
                assert_eq!(db.list_enroll_tokens().expect("list"), before, "changed");
            }
        };
        check("nope", &single.secret, 1, Err("unknown"));
        check(&single.id, "wrong", 1, Err("bad-secret"));
        check(&single.id, &multi.secret, 1, Err("bad-secret"));
        check(&single.id, &single.secret, 3_600_000, Err("expired"));
        check(&revoked.id, &revoked.secret, 1, Err("revoked"));
        // A bad secret is reported as such even for a revoked or expired token.
        check(&revoked.id, "wrong", 1, Err("bad-secret"));
        check(&single.id, &single.secret, 1, Ok(()));
        check(&single.id, &single.secret, 2, Err("already-used"));
        check(&multi.id, &multi.secret, 1, Ok(()));
        check(&multi.id, &multi.secret, 2, Ok(()));
        assert_eq!(
            TokenRefusal::Unknown.to_string(),
            TokenRefusal::BadSecret.to_string(),
            "a caller cannot tell an existing token id from another"
        );

        let row = token_row(&db, &single.id);
        assert_eq!(
            (row.used_at_ms, row.used_by.as_deref()),
            (Some(1), Some("agent-x"))
        );
    }

    #[test]
    fn enroll_agent_is_atomic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        db.register_agent(&agent("taken"), 0).expect("register");
        let t = db.create_enroll_token(HOUR, true, PIN, 0).expect("create");
        // Registering fails (id taken): the token must stay unused.
        let err = db
            .enroll_agent(&t.id, &t.secret, &agent("taken"), 5)
            .expect_err("id taken");
        assert!(matches!(
            err,
            TokenRefusal::Store(StoreError::AgentExists(_))
        ));
        assert!(token_row(&db, &t.id).used_at_ms.is_none());

        let mut new = agent("fresh");
        new.token_id = t.id.clone();
        db.enroll_agent(&t.id, &t.secret, &new, 6).expect("enroll");
        let row = db.agent("fresh").expect("q").expect("row");
        assert_eq!(row.token_id.as_deref(), Some(t.id.as_str()));
        assert!(matches!(
            db.enroll_agent(&t.id, &t.secret, &agent("other"), 7),
            Err(TokenRefusal::AlreadyUsed)
        ));
        assert!(db.agent("other").expect("q").is_none());
    }

    #[test]
    fn api_token_parse() {
        fn check(input: &str, expected: Option<(&str, &str)>) {
            assert_eq!(parse_api_token(input), expected, "{input:?}");
        }
        check("vgl_abc123_S3cret", Some(("abc123", "S3cret")));
        check("vgl_abc_", None);
        check("vgl__secret", None);
        check("vgl_abc_se_cret", None);
        check("abc_secret", None);
        check("Bearer vgl_a_b", None);
        check("vgl_a b_c", None);
        check("", None);
        check(&format!("vgl_a_{}", "x".repeat(129)), None);
    }

    #[test]
    fn api_token_lifecycle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path()).expect("open");
        let (id, token) = db
            .create_api_token(Role::Operator, "ops", 1_000)
            .expect("create");
        assert!(token.starts_with(&format!("vgl_{id}_")), "{token}");
        let (id2, token2) = db
            .create_api_token(Role::Admin, "root", 1_500)
            .expect("create");
        assert_ne!(id, id2);

        let check = |token: &str, expected: Option<(&str, Role)>| {
            let got = db.authenticate_api_token(token, 2_000).expect("auth");
            let got = got.as_ref().map(|(i, r)| (i.as_str(), *r));
            assert_eq!(got, expected, "{token}");
        };
        check(&token, Some((&id, Role::Operator)));
        check(&token2, Some((&id2, Role::Admin)));
        check(&format!("vgl_{id}_wrongsecret"), None);
        check(&format!("vgl_{id}x_{}", &token[token.len() - 40..]), None);
        check("garbage", None);

        let rows = db.list_api_tokens().expect("list");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].last_used_ms, Some(2_000));
        assert_eq!(
            (rows[0].name.as_str(), rows[0].role),
            ("ops", Role::Operator)
        );

        assert!(db.revoke_api_token(&id, 3_000).expect("revoke"));
        assert!(!db.revoke_api_token("nope", 3_000).expect("revoke unknown"));
        check(&token, None);
        check(&token2, Some((&id2, Role::Admin)));
        let rows = db.list_api_tokens().expect("list");
        assert_eq!(rows[0].revoked_at_ms, Some(3_000));
    }
}
