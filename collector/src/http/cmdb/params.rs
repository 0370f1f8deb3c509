//! Query parameters of the CMDB endpoints: strict names (an unknown or repeated one is a 400),
//! numbers in range, times as RFC 3339 or Unix ms, and the `GET /cis` filters.
//!
//! Never panics on what a client sends; every refusal is an [`ApiError::BadRequest`] naming the
//! parameter.

use std::ops::RangeInclusive;

use super::super::ApiError;
use crate::cmdb::query::manual::valid_tag_key;
use crate::cmdb::query::{CiFilter, HistoryPage, DEFAULT_LIMIT, MAX_LIMIT};
use crate::cmdb::CiState;
use crate::metrics::cmdb_types;

pub(super) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

pub use vigil_shared::time::parse_time_ms;

/// Query parameters as given, checked against the names an endpoint takes.
#[derive(Debug)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses unknown names and repeats of names not in `repeatable`.
    pub(super) fn new(
        pairs: Vec<(String, String)>,
        allowed: &[&str],
        repeatable: &[&str],
    ) -> Result<Params, ApiError> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown query parameter {k:?} (this endpoint takes {})",
                    allowed.join(", ")
                )));
            }
            if !repeatable.contains(&k.as_str()) && pairs[..i].iter().any(|(p, _)| p == k) {
                return Err(bad(format!("query parameter {k:?} is given twice")));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`; an empty value counts as not given.
    pub(super) fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    /// Every value of `name` (repeats and comma lists), empty items dropped.
    pub(super) fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Every value of `name` as given (repeats only).
    pub(super) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn number<T>(
        &self,
        name: &str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, ApiError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.one(name) else {
            return Ok(default);
        };
        match v.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(bad(format!(
                "{name} must be an integer from {} to {}, got {v:?}",
                range.start(),
                range.end()
            ))),
        }
    }

    pub(super) fn limit(&self) -> Result<u32, ApiError> {
        self.number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)
    }

    pub(super) fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.one(name)
            .map(|v| parse_time_ms(v).map_err(|e| bad(format!("{name}: {e}"))))
            .transpose()
    }

    pub(super) fn history_page(&self) -> Result<HistoryPage, ApiError> {
        Ok(HistoryPage {
            since_ms: self.time("since")?,
            before: self
                .one("before")
                .map(|_| self.number("before", 0i64, 1..=i64::MAX))
                .transpose()?,
            limit: self.limit()?,
        })
    }

    pub(super) fn types(&self) -> Result<Vec<String>, ApiError> {
        self.list("type")
            .into_iter()
            .map(|t| match cmdb_types().find(|k| *k == t) {
                Some(k) => Ok(k.to_owned()),
                None => Err(bad(format!(
                    "unknown CI type {t:?} (known: {})",
                    cmdb_types().collect::<Vec<_>>().join(", ")
                ))),
            })
            .collect()
    }

    pub(super) fn host(&self) -> Result<Option<glob::Pattern>, ApiError> {
        self.one("host")
            .map(|h| {
                glob::Pattern::new(h)
                    .map_err(|e| bad(format!("invalid host glob {h:?}: {}", e.msg)))
            })
            .transpose()
    }
}

/// `GET /cis` filters from the query.
pub(super) fn ci_filter(p: &Params) -> Result<CiFilter, ApiError> {
    let tags = p
        .all("tag")
        .map(|t| match t.split_once('=') {
            Some((k, v)) if valid_tag_key(k.trim()) => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(bad(format!("tag filter {t:?} is not key=value"))),
        })
        .collect::<Result<_, _>>()?;
    let states = p
        .list("state")
        .into_iter()
        .map(|s| {
            CiState::parse(s)
                .map_err(|_| bad(format!("unknown state {s:?} (active, stale or retired)")))
        })
        .collect::<Result<_, _>>()?;
    Ok(CiFilter {
        types: p.types()?,
        tags,
        host: p.host()?,
        states,
        text: p.one("q").map(str::to_owned),
    })
}
