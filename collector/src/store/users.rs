//! Console users and their sessions.
//!
//! A user has a name, a role (as API tokens have) and an argon2id password hash (a PHC string:
//! the parameters and salt travel with the hash, so stronger parameters later still verify old
//! hashes). A disabled user keeps its row (the audit log names it) and can neither log in nor
//! use a session it had.
//!
//! A session is `vs1_<id>_<secret>` in an HttpOnly cookie: the store keeps `id` and
//! `hash_secret(secret)` only, so a copy of the file opens no session. It ends at logout, after
//! [`SessionPolicy::idle`] without a request, after [`SessionPolicy::max`] whatever happens, and
//! when its user is disabled or its password changed. Each session has its own CSRF token,
//! which every state-changing request made with the cookie must carry.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension};
use vigil_shared::identity;

use super::{Db, Role, StoreError};

/// Session cookies read `vs1_<id>_<secret>`.
pub const SESSION_PREFIX: &str = "vs1_";
const SESSION_ID_BYTES: usize = 8;
const SESSION_SECRET_LEN: usize = 40;
const CSRF_LEN: usize = 40;
/// `last_seen_ms` is written at most this often per session, so reads rarely write; the idle
/// expiry is exact to within it.
const LAST_SEEN_RESOLUTION_MS: i64 = 30_000;

/// Longest user name: letters, digits and `. _ - @`.
pub const MAX_USER_NAME: usize = 64;
/// Passwords: at least this long (characters) ...
pub const MIN_PASSWORD: usize = 12;
/// ... and at most this many bytes (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD: usize = 1024;

/// How long sessions last (`[http] session_idle`, `session_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session ends after this long without a request.
    pub idle: Duration,
    /// A session ends this long after login, however busy.
    pub max: Duration,
}

impl Default for SessionPolicy {
    fn default() -> SessionPolicy {
        SessionPolicy {
            idle: Duration::from_secs(3600),
            // One shift.
            max: Duration::from_secs(12 * 3600),
        }
    }
}

/// Why a user could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name {0:?}: 1 to {MAX_USER_NAME} letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    #[error("the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")]
    BadPassword,
    #[error("user {0} already exists")]
    Exists(String),
    #[error("unknown user {0}")]
    Unknown(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for UserError {
    fn from(e: rusqlite::Error) -> UserError {
        UserError::Store(e.into())
    }
}

/// A row of `users`, as `GET /api/v1/users` shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub disabled_ms: Option<i64>,
    pub last_login_ms: Option<i64>,
}

/// Why a login was refused. The words shown to the client are the same for all of them, so
/// that no one learns which user names exist; the reason is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No such user, or the wrong password.
    BadCredentials,
    Disabled,
}

/// Whose a session is.
#[derive(Clone, Copy)]
enum Owner<'a> {
    User(&'a str),
    Token(&'a str),
}

/// A live session, as a request made with its cookie sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Who it is, to show: the user's name, or for a pasted API token `token <name>`.
    pub user: String,
    pub role: Role,
    pub csrf: String,
    /// The API token a session was opened with (a pasted token), instead of a user.
    pub token_id: Option<String>,
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_USER_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

fn valid_password(password: &str) -> bool {
    password.chars().count() >= MIN_PASSWORD && password.len() <= MAX_PASSWORD
}

/// argon2id with the crate's defaults (OWASP's: 19 MiB, 2 passes, 1 lane), as a PHC string.
fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, verified for unknown users so that a login for a name that does
/// not exist takes as long as one for a name that does.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password(&identity::random_secret(32)).unwrap_or_else(|_| String::from("-"))
    })
}

fn parse_role(s: String) -> Result<Role, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        column: "users.role",
        value: s,
    })
}

/// `(id, secret)` of a session cookie's value, if it has the shape of one.
pub fn parse_session(value: &str) -> Option<(&str, &str)> {
    let (id, secret) = value.strip_prefix(SESSION_PREFIX)?.split_once('_')?;
    let ok = |s: &str, max: usize| {
        (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    (ok(id, 2 * SESSION_ID_BYTES) && ok(secret, SESSION_SECRET_LEN)).then_some((id, secret))
}

impl Db {
    /// Adds a user. The password is hashed here (argon2id: tens of milliseconds of CPU).
    pub fn create_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        now_ms: i64,
    ) -> Result<(), UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName(name.to_owned()));
        }
        if !valid_password(password) {
            return Err(UserError::BadPassword);
        }
        let hash = hash_password(password)?;
        let n = self.conn.execute(
            "INSERT INTO users (name, role, password_hash, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (name) DO NOTHING",
            params![name, role.as_str(), hash, now_ms],
        )?;
        if n == 0 {
            return Err(UserError::Exists(name.to_owned()));
        }
        Ok(())
    }

    /// Sets a user's password (and its role, if given) and ends every session it has: whoever
    /// knew the old password is logged out. A disabled user stays disabled.
    pub fn set_password(
        &self,
        name: &str,
        password: &str,
        role: Option<Role>,
        now_ms: i64,
    ) -> Result<(), UserError> {
        if !valid_password(password) {
            return Err(UserError::BadPassword);
        }
        let hash = hash_password(password)?;
        let tx = self.conn.unchecked_transaction()?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2, role = COALESCE(?3, role), updated_ms = ?4
             WHERE name = ?1",
            params![name, hash, role.map(Role::as_str), now_ms],
        )?;
        if n == 0 {
            return Err(UserError::Unknown(name.to_owned()));
        }
        end_sessions_of(&tx, name, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Disables a user and ends its sessions. Returns whether it was enabled.
    pub fn disable_user(&self, name: &str, now_ms: i64) -> Result<bool, UserError> {
        let tx = self.conn.unchecked_transaction()?;
        let exists: bool = tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if !exists {
            return Err(UserError::Unknown(name.to_owned()));
        }
        let n = tx.execute(
            "UPDATE users SET disabled_ms = ?2, updated_ms = ?2
             WHERE name = ?1 AND disabled_ms IS NULL",
            params![name, now_ms],
        )?;
        end_sessions_of(&tx, name, now_ms)?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, role, created_ms, updated_ms, disabled_ms, last_login_ms
             FROM users ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(name, role, created_ms, updated_ms, disabled_ms, last_login_ms)| {
                    Ok(UserRow {
                        name,
                        role: parse_role(role)?,
                        created_ms,
                        updated_ms,
                        disabled_ms,
                        last_login_ms,
                    })
                },
            )
            .collect()
    }

    /// Checks a user's password. Unknown names cost the same argon2 work as known ones.
    pub fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Result<Role, LoginRefusal>, StoreError> {
        let row = if valid_name(name) {
            self.conn
                .prepare_cached(
                    "SELECT role, password_hash, disabled_ms FROM users WHERE name = ?1",
                )?
                .query_row([name], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .optional()?
        } else {
            None
        };
        // Bounded before the hash, so that a huge password costs nothing.
        let password = if password.len() <= MAX_PASSWORD {
            password
        } else {
            ""
        };
        let Some((role, hash, disabled)) = row else {
            let _ = password_matches(decoy_hash(), password);
            return Ok(Err(LoginRefusal::BadCredentials));
        };
        if !password_matches(&hash, password) {
            return Ok(Err(LoginRefusal::BadCredentials));
        }
        if disabled.is_some() {
            return Ok(Err(LoginRefusal::Disabled));
        }
        Ok(Ok(parse_role(role)?))
    }

    /// Opens a session for `user` (whose password was just checked): returns it and the
    /// cookie value, which exists only here.
    pub fn create_session(
        &self,
        user: &str,
        role: Role,
        remote: Option<&str>,
        now_ms: i64,
    ) -> Result<(Session, String), StoreError> {
        self.open_session(Owner::User(user), role, remote, now_ms)
    }

    /// Opens a session for the API token `token_id` (a token pasted into the login form, just
    /// authenticated): it lasts while the token is not revoked, with the token's role.
    pub fn create_token_session(
        &self,
        token_id: &str,
        role: Role,
        remote: Option<&str>,
        now_ms: i64,
    ) -> Result<(Session, String), StoreError> {
        self.open_session(Owner::Token(token_id), role, remote, now_ms)
    }

    fn open_session(
        &self,
        owner: Owner<'_>,
        role: Role,
        remote: Option<&str>,
        now_ms: i64,
    ) -> Result<(Session, String), StoreError> {
        let id = hex::encode(rand::random::<[u8; SESSION_ID_BYTES]>());
        let secret = identity::random_secret(SESSION_SECRET_LEN);
        let csrf = identity::random_secret(CSRF_LEN);
        let (user, token) = match owner {
            Owner::User(u) => (Some(u), None),
            Owner::Token(t) => (None, Some(t)),
        };
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO sessions (id, secret_hash, user_name, token_id, csrf, created_ms,
                                   last_seen_ms, remote)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            params![
                id,
                identity::hash_secret(&secret),
                user,
                token,
                csrf,
                now_ms,
                remote
            ],
        )?;
        let shown = match owner {
            Owner::User(u) => {
                tx.execute(
                    "UPDATE users SET last_login_ms = ?2 WHERE name = ?1",
                    params![u, now_ms],
                )?;
                u.to_owned()
            }
            Owner::Token(t) => {
                let name: String =
                    tx.query_row("SELECT name FROM api_tokens WHERE id = ?1", [t], |r| {
                        r.get(0)
                    })?;
                format!("token {name}")
            }
        };
        tx.commit()?;
        let cookie = format!("{SESSION_PREFIX}{id}_{secret}");
        let session = Session {
            id,
            user: shown,
            role,
            csrf,
            token_id: token.map(str::to_owned),
        };
        Ok((session, cookie))
    }

    /// The live session a cookie names, if any: not ended, not idle past `policy.idle`, not
    /// older than `policy.max`, its user enabled (with the user's role now).
    pub fn authenticate_session(
        &self,
        cookie: &str,
        policy: SessionPolicy,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError> {
        let Some((id, secret)) = parse_session(cookie) else {
            return Ok(None);
        };
        let row = self
            .conn
            .prepare_cached(
                "SELECT s.secret_hash, s.csrf, s.created_ms, s.last_seen_ms, s.ended_ms,
                        COALESCE(u.name, 'token ' || t.name), COALESCE(u.role, t.role),
                        COALESCE(u.disabled_ms, t.revoked_at_ms), s.token_id
                 FROM sessions s
                 LEFT JOIN users u ON u.name = s.user_name
                 LEFT JOIN api_tokens t ON t.id = s.token_id
                 WHERE s.id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .optional()?;
        let Some((hash, csrf, created, last_seen, ended, Some(user), Some(role), disabled, token)) =
            row
        else {
            return Ok(None);
        };
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let live = identity::secret_matches(&hash, secret)
            && ended.is_none()
            && disabled.is_none()
            && now_ms.saturating_sub(last_seen) < ms(policy.idle)
            && now_ms.saturating_sub(created) < ms(policy.max);
        if !live {
            return Ok(None);
        }
        if now_ms.saturating_sub(last_seen) >= LAST_SEEN_RESOLUTION_MS {
            self.conn.execute(
                "UPDATE sessions SET last_seen_ms = ?2 WHERE id = ?1",
                params![id, now_ms],
            )?;
        }
        Ok(Some(Session {
            id: id.to_owned(),
            user,
            role: parse_role(role)?,
            csrf,
            token_id: token,
        }))
    }

    /// Ends a session (logout). Returns whether it was live.
    pub fn end_session(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE sessions SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
            params![id, now_ms],
        )?;
        Ok(n > 0)
    }

    /// Deletes the sessions that ended, or that `policy` has expired by `now_ms` (housekeeping).
    pub fn prune_sessions(&self, policy: SessionPolicy, now_ms: i64) -> Result<usize, StoreError> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Ok(self.conn.execute(
            "DELETE FROM sessions WHERE ended_ms IS NOT NULL OR last_seen_ms < ?1
                OR created_ms < ?2",
            params![
                now_ms.saturating_sub(ms(policy.idle)),
                now_ms.saturating_sub(ms(policy.max))
            ],
        )?)
    }
}

fn end_sessions_of(c: &rusqlite::Connection, user: &str, now_ms: i64) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE sessions SET ended_ms = ?2 WHERE user_name = ?1 AND ended_ms IS NULL",
        params![user, now_ms],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "correct horse battery";

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        (dir, db)
    }

    #[test]
    fn users_are_created_checked_and_listed_without_their_hash() {
        let (_d, db) = db();
        db.create_user("alice", Role::Operator, PW, 1_000)
            .expect("create");
        assert!(matches!(
            db.create_user("alice", Role::Admin, PW, 2_000),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            db.create_user("bob", Role::Admin, "short", 2_000),
            Err(UserError::BadPassword)
        ));
        for bad in ["", "a b", "x/y", &"n".repeat(65), "é"] {
            assert!(
                matches!(
                    db.create_user(bad, Role::Admin, PW, 2_000),
                    Err(UserError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            db.check_password("alice", PW).expect("check"),
            Ok(Role::Operator)
        );
        assert_eq!(
            db.check_password("alice", "wrong password!")
                .expect("check"),
            Err(LoginRefusal::BadCredentials)
        );
        assert_eq!(
            db.check_password("nobody", PW).expect("check"),
            Err(LoginRefusal::BadCredentials)
        );
        assert_eq!(
            db.check_password("alice", &"x".repeat(MAX_PASSWORD + 1))
                .expect("check"),
            Err(LoginRefusal::BadCredentials)
        );
        let hash: String = db
            .conn()
            .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
            .expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(PW));
        let users = db.list_users().expect("list");
        assert_eq!(users.len(), 1);
        assert_eq!(
            (users[0].name.as_str(), users[0].role),
            ("alice", Role::Operator)
        );
    }

    #[test]
    fn sessions_end_at_logout_idle_max_disable_and_password_change() {
        let (_d, db) = db();
        let policy = SessionPolicy {
            idle: Duration::from_secs(600),
            max: Duration::from_secs(3600),
        };
        db.create_user("op", Role::Operator, PW, 0).expect("create");
        let open = |at| db.create_session("op", Role::Operator, Some("127.0.0.1"), at);
        let auth = |cookie: &str, at| db.authenticate_session(cookie, policy, at).expect("auth");

        let (s, cookie) = open(0).expect("session");
        assert_eq!(auth(&cookie, 1_000).as_ref(), Some(&s));
        // A wrong secret for a real id, and things that are not cookies at all.
        let (id, _) = parse_session(&cookie).expect("shape");
        assert_eq!(
            auth(&format!("{SESSION_PREFIX}{id}_{}", "A".repeat(40)), 1_000),
            None
        );
        assert_eq!(auth("vs1_", 1_000), None);
        assert_eq!(auth(&"x".repeat(10_000), 1_000), None);

        // Busy: each request within the idle time keeps it, until the absolute maximum.
        let mut t = 0;
        while t + 500_000 < 3_600_000 {
            t += 500_000;
            assert!(auth(&cookie, t).is_some(), "at {t}");
        }
        assert_eq!(auth(&cookie, 3_600_000), None, "past the maximum");

        // Idle past the idle time.
        let (_, idle) = open(10_000_000).expect("session");
        assert!(auth(&idle, 10_000_000 + 599_000).is_some());
        assert_eq!(auth(&idle, 10_000_000 + 599_000 + 600_000), None);

        // Logout.
        let (s2, c2) = open(20_000_000).expect("session");
        assert!(db.end_session(&s2.id, 20_000_001).expect("end"));
        assert_eq!(auth(&c2, 20_000_002), None);

        // A password change ends every session; the new password works, the old does not.
        let (_, c3) = open(30_000_000).expect("session");
        db.set_password("op", "another long password", Some(Role::Admin), 30_000_001)
            .expect("passwd");
        assert_eq!(auth(&c3, 30_000_002), None);
        assert_eq!(
            db.check_password("op", "another long password")
                .expect("check"),
            Ok(Role::Admin)
        );
        assert_eq!(
            db.check_password("op", PW).expect("check"),
            Err(LoginRefusal::BadCredentials)
        );

        // Disabling ends sessions and refuses logins, with the same words as a bad password
        // for the client (the reason is for the collector's counters).
        let (_, c4) = open(40_000_000).expect("session");
        assert!(db.disable_user("op", 40_000_001).expect("disable"));
        assert!(!db.disable_user("op", 40_000_002).expect("again"));
        assert_eq!(auth(&c4, 40_000_003), None);
        assert_eq!(
            db.check_password("op", "another long password")
                .expect("check"),
            Err(LoginRefusal::Disabled)
        );
        assert!(matches!(
            db.disable_user("ghost", 0),
            Err(UserError::Unknown(_))
        ));

        // Housekeeping deletes what ended.
        assert!(db.prune_sessions(policy, 50_000_000).expect("prune") >= 5);
        let left: i64 = db
            .conn()
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .expect("count");
        assert_eq!(left, 0);
    }

    #[test]
    fn the_cookie_value_is_not_stored() {
        let (_d, db) = db();
        db.create_user("v", Role::Viewer, PW, 0).expect("create");
        let (_, cookie) = db
            .create_session("v", Role::Viewer, None, 0)
            .expect("session");
        let (_, secret) = parse_session(&cookie).expect("shape");
        let stored: String = db
            .conn()
            .query_row("SELECT secret_hash || csrf FROM sessions", [], |r| r.get(0))
            .expect("row");
        assert!(!stored.contains(secret));
    }
}
