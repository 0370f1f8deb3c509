//! OpenSLO v1: every SLA exported as a `kind: SLO` document (`vigil-collector slo export`), and
//! SLO documents read back through `include` (files ending `.yaml` / `.yml`).
//!
//! An exported SLO is standard OpenSLO (`timeWindow` rolling or calendar with its time zone,
//! `budgetingMethod: Timeslices`, one objective with the target) and keeps everything only
//! Vigil knows (scope, service, down_when, degraded_when, quorum, schedule, incident targets,
//! alerts) in its inline indicator's metric source, `type: Vigil`, whose `spec` OpenSLO leaves
//! to the source. Reading one turns it back into the `[[sla]]` keys and checks it exactly as the
//! configuration is checked; an SLO whose indicator is not a Vigil source has nothing Vigil can
//! measure and is refused with a message.

use std::time::Duration;

use serde_json::{json, Map, Value};
use vigil_shared::config::SlaWindow;

use super::{Combine, Sla};
use crate::incidents::scope::ScopeJson;

/// The `metricSource.type` of exported SLOs.
pub const SOURCE_TYPE: &str = "Vigil";
/// Documents per file at most, and the size of a file's text is capped by the config reader.
const MAX_DOCUMENTS: usize = 1_000;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn duration_text(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.unsigned_abs())).to_string()
}

/// The SLO document of one SLA.
pub fn slo(sla: &Sla) -> Value {
    let mut vigil = Map::new();
    vigil.insert("scope".into(), json!(ScopeJson::from_scope(&sla.scope)));
    if let Some(s) = &sla.service {
        vigil.insert("service".into(), json!(s));
    }
    vigil.insert(
        "down_when".into(),
        json!(sla
            .down_when
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()),
    );
    if !sla.degraded_when.is_empty() {
        vigil.insert(
            "degraded_when".into(),
            json!(sla
                .degraded_when
                .iter()
                .map(|(c, w)| json!({"when": c.to_string(), "weight": w}))
                .collect::<Vec<_>>()),
        );
    }
    if let Combine::Quorum(n) = sla.combine {
        vigil.insert("quorum".into(), json!(n));
    }
    if let Some(s) = &sla.schedule {
        let fmt = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        vigil.insert(
            "schedule".into(),
            json!({
                "days": DAYS.iter().zip(s.days).filter(|(_, on)| *on).map(|(d, _)| *d).collect::<Vec<_>>(),
                "hours": format!("{}-{}", fmt(s.start_min), fmt(s.end_min)),
                "holidays": s.holidays.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
    }
    if let Some(t) = &sla.incident_targets {
        let mut targets = Map::new();
        for p in 0..5 {
            targets.insert(
                format!("P{}", p + 1),
                json!({
                    "response": duration_text(t.response_ms[p]),
                    "resolution": duration_text(t.resolution_ms[p]),
                }),
            );
        }
        vigil.insert("incident_targets".into(), Value::Object(targets));
    }
    vigil.insert("alerts".into(), json!(sla.alerts));

    let zone = sla.timezone.iana_name().unwrap_or("UTC");
    let time_window = match sla.window {
        SlaWindow::Rolling(d) => json!({
            "duration": SlaWindow::Rolling(d).to_string(),
            "isRolling": true,
        }),
        calendar => json!({
            "duration": match calendar {
                SlaWindow::CalendarWeek => "1w",
                SlaWindow::CalendarMonth => "1M",
                SlaWindow::CalendarQuarter => "1Q",
                _ => "1Y",
            },
            "isRolling": false,
            // OpenSLO anchors a calendar window at a start time; Vigil's begin at the calendar's
            // own boundaries (Monday, the 1st, ...) in the zone, which this start lines up with.
            "calendar": {"startTime": "2024-01-01 00:00:00", "timeZone": zone},
        }),
    };
    json!({
        "apiVersion": "openslo/v1",
        "kind": "SLO",
        "metadata": {
            "name": sla.name,
            "annotations": {"vigil.dev/timezone": zone},
        },
        "spec": {
            "description": format!(
                "Availability of {}: up time over up and down time, computed by Vigil from its incidents",
                sla.service.as_deref().unwrap_or(&sla.name)
            ),
            "service": sla.service.as_deref().unwrap_or(&sla.name),
            "indicator": {
                "metadata": {"name": format!("{}-availability", sla.name)},
                "spec": {
                    "thresholdMetric": {
                        "metricSource": {"type": SOURCE_TYPE, "spec": Value::Object(vigil)},
                    },
                },
            },
            "timeWindow": [time_window],
            "budgetingMethod": "Timeslices",
            "objectives": [{
                "displayName": "availability",
                "op": "gte",
                "value": 1,
                "target": sla.target,
                // Vigil measures time exactly; a minute counts as good when the service was up
                // for at least half of it.
                "timeSliceTarget": 0.5,
                "timeSliceWindow": "1m",
            }],
        },
    })
}

/// Every SLA as one multi-document OpenSLO YAML text.
pub fn export(slas: &[Sla]) -> Result<String, String> {
    let mut out = String::new();
    for sla in slas {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&slo(sla)).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The `[[sla]]` tables (as TOML text, one per SLO) of an OpenSLO YAML file; each with the
/// name of its SLO for messages. Errors say what is not an SLO Vigil can read.
pub fn to_toml(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        if i >= MAX_DOCUMENTS {
            return Err(format!("more than {MAX_DOCUMENTS} documents"));
        }
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        if v.is_null() {
            continue; // an empty document (`---` at the end)
        }
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        let table = sla_table(&v).map_err(|e| {
            if name.is_empty() {
                format!("document {}: {e}", i + 1)
            } else {
                format!("SLO {name:?}: {e}")
            }
        })?;
        let text = toml::to_string(&json!({"sla": [table]})).map_err(|e| e.to_string())?;
        out.push((name, text));
    }
    Ok(out)
}

fn sla_table(v: &Value) -> Result<Value, String> {
    if v["apiVersion"] != "openslo/v1" {
        return Err(format!(
            "`apiVersion` must be \"openslo/v1\", got {}",
            v["apiVersion"]
        ));
    }
    if v["kind"] != "SLO" {
        return Err(format!(
            "only `kind: SLO` documents are read, got {}",
            v["kind"]
        ));
    }
    let spec = &v["spec"];
    let name = v["metadata"]["name"]
        .as_str()
        .ok_or("`metadata.name` is required")?;
    let source = &spec["indicator"]["spec"]["thresholdMetric"]["metricSource"];
    if source["type"] != SOURCE_TYPE {
        return Err(format!(
            "its indicator must be an inline `thresholdMetric` with `metricSource.type: {SOURCE_TYPE}` \
             (Vigil measures availability from its own incidents; got {})",
            source["type"]
        ));
    }
    let objectives = spec["objectives"]
        .as_array()
        .ok_or("`spec.objectives` is required")?;
    let [objective] = objectives.as_slice() else {
        return Err(format!(
            "exactly one objective is read, got {}",
            objectives.len()
        ));
    };
    let method = spec["budgetingMethod"].as_str().unwrap_or("");
    if !matches!(method, "Timeslices" | "Occurrences" | "RatioTimeslices") {
        return Err(format!(
            "`budgetingMethod` must be Timeslices, Occurrences or RatioTimeslices, got {:?}",
            method
        ));
    }
    let windows = spec["timeWindow"]
        .as_array()
        .ok_or("`spec.timeWindow` is required")?;
    let [window] = windows.as_slice() else {
        return Err(format!(
            "exactly one time window is read, got {}",
            windows.len()
        ));
    };
    let duration = window["duration"]
        .as_str()
        .ok_or("`timeWindow[0].duration` is required")?;
    let mut table = Map::new();
    table.insert("name".into(), json!(name));
    table.insert("target".into(), objective["target"].clone());
    let zone = window["calendar"]["timeZone"]
        .as_str()
        .or_else(|| v["metadata"]["annotations"]["vigil.dev/timezone"].as_str());
    if window["isRolling"] == true {
        table.insert("window".into(), json!(duration));
    } else {
        let calendar = match duration {
            "1w" | "7d" => "week",
            "1M" => "month",
            "1Q" => "quarter",
            "1Y" => "year",
            other => {
                return Err(format!(
                    "a calendar window must be 1w, 1M, 1Q or 1Y, got {other:?}"
                ))
            }
        };
        table.insert("window".into(), json!(calendar));
    }
    if let Some(z) = zone {
        table.insert("timezone".into(), json!(z));
    }
    let Some(vigil) = source["spec"].as_object() else {
        return Ok(Value::Object(table));
    };
    for (key, value) in vigil {
        match key.as_str() {
            // An empty scope is everything; leave it out.
            "scope" if value.as_object().is_some_and(Map::is_empty) => {}
            "scope" | "service" | "down_when" | "degraded_when" | "quorum" | "schedule"
            | "incident_targets" | "alerts" => {
                table.insert(key.clone(), value.clone());
            }
            other => return Err(format!("unknown key `{other}` in the Vigil metric source")),
        }
    }
    Ok(Value::Object(table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, MemFiles};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn load(main: &str, files: &[(&str, &str)]) -> Result<crate::config::CollectorConfig, String> {
        let mem = MemFiles(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), (*t).to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        parse("/etc/vigil/collector.toml", main, &mem).map_err(|e| e.to_string())
    }

    const EVERY_KEY: &str = "data_dir = \"/x\"\n\
        [[sla]]\nname = \"web\"\ntarget = 0.9995\nwindow = \"quarter\"\ntimezone = \"Europe/Berlin\"\n\
        service = \"shop\"\nquorum = 2\ndown_when = [\"host-unreachable\", \"priority<=P1\"]\n\
        degraded_when = [{ when = \"priority=P3\", weight = 0.5 }]\nalerts = false\n\
        [sla.scope]\ntag = \"role=web\"\nhost = \"web-*\"\n\
        [sla.schedule]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nhours = \"08:00-18:30\"\n\
        holidays = [\"2026-12-25\", \"2027-01-01\"]\n\
        [sla.incident_targets]\nP1 = { response = \"10m\", resolution = \"2h\" }\n\
        [[sla]]\nname = \"api\"\ntarget = 0.99\nwindow = \"28d\"\n\
        [[sla]]\nname = \"batch\"\ntarget = 0.95\nwindow = \"month\"\n";

    #[test]
    fn every_sla_round_trips_through_openslo() {
        let original = load(EVERY_KEY, &[]).expect("config");
        let yaml = export(&original.slas).expect("export");
        assert_eq!(yaml.matches("kind: SLO").count(), 3, "{yaml}");
        assert!(yaml.contains("budgetingMethod: Timeslices"), "{yaml}");
        assert!(yaml.contains("isRolling: false"), "{yaml}");
        assert!(yaml.contains("timeZone: Europe/Berlin"), "{yaml}");
        let back = load(
            "data_dir = \"/x\"\ninclude = [\"slo/*.yaml\"]\n",
            &[("/etc/vigil/slo/all.yaml", &yaml)],
        )
        .expect("import");
        assert_eq!(back.slas, original.slas);
        // And once more: the export of the import is the same text.
        assert_eq!(export(&back.slas).expect("export"), yaml);
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_the_file_and_the_slo() {
        let prometheus = "apiVersion: openslo/v1\nkind: SLO\nmetadata:\n  name: latency\nspec:\n  \
            service: web\n  indicator:\n    spec:\n      thresholdMetric:\n        metricSource:\n          \
            type: Prometheus\n  timeWindow:\n    - duration: 7d\n      isRolling: true\n  \
            budgetingMethod: Occurrences\n  objectives:\n    - target: 0.99\n";
        let err = load(
            "data_dir = \"/x\"\ninclude = [\"slo.yml\"]\n",
            &[("/etc/vigil/slo.yml", prometheus)],
        )
        .expect_err("refused");
        assert!(
            err.contains("/etc/vigil/slo.yml")
                && err.contains("SLO \"latency\"")
                && err.contains("metricSource.type: Vigil"),
            "{err}"
        );
        let service = "apiVersion: openslo/v1\nkind: Service\nmetadata:\n  name: web\n";
        let err = load(
            "data_dir = \"/x\"\ninclude = [\"s.yaml\"]\n",
            &[("/etc/vigil/s.yaml", service)],
        )
        .expect_err("refused");
        assert!(err.contains("only `kind: SLO`"), "{err}");
        // A value the configuration refuses is refused here too, naming the SLO.
        let original = load(EVERY_KEY, &[]).expect("config");
        let bad = export(&original.slas[1..2])
            .expect("export")
            .replace("target: 0.99", "target: 1.5");
        let err = load(
            "data_dir = \"/x\"\ninclude = [\"b.yaml\"]\n",
            &[("/etc/vigil/b.yaml", &bad)],
        )
        .expect_err("refused");
        assert!(
            err.contains("b.yaml")
                && err.contains("api")
                && err.contains("strictly between 0 and 1"),
            "{err}"
        );
        let err = load(
            "data_dir = \"/x\"\ninclude = [\"c.yaml\"]\n",
            &[("/etc/vigil/c.yaml", "a: [")],
        )
        .expect_err("refused");
        assert!(err.contains("not valid YAML"), "{err}");
    }
}
