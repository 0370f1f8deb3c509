#!/usr/bin/env bash
# Vigil soak test (not in CI): a release collector under a long, changing load, checked for leaks.
#
#   bench/soak.sh [SECONDS]          # default 3600 (1 h) of load after the agents are connected
#
# Load, all on 127.0.0.1 against a real `vigil-collector serve` (ports chosen by the OS):
#   - SOAK_AGENTS (1,000) simulated agents, SOAK_METRICS (30) metrics every SOAK_INTERVAL (2s):
#     15,000 samples/s. Their values are a sawtooth (+0.001 per batch, wrapping at 1.0), so the
#     five threshold rules below (above 0.1 / 0.3 / 0.5 / 0.7 / 0.9 on five metrics, clear 0.05)
#     open five incidents per agent and resolve them at each wrap: incident churn all along.
#   - SOAK_REAL_AGENTS (3) real `vigil-agent run` processes whose discovery root is a copy of
#     tests/fixtures/host-a; every 10 s one package of each root's dpkg status is added, upgraded
#     or removed, and a process appears or goes, so inventory deltas and CMDB history keep coming.
#   - API reads: a viewer reads /api/v1/incidents, /api/v1/cis, /api/v1/changes,
#     /api/v1/agents, /api/v1/cmdb/export and /metrics in turn, one request a second.
#   - store.retention = SOAK_RETENTION (5m): batches are pruned as they would be in a long life.
#
# Measured every 10 s: the collector's VmRSS, the size of vigil.db-wal, open fds. Reported: RSS
# at the end of the warm-up (SOAK_WARMUP_SECS; by default one churn cycle, 1,000 intervals,
# before the end; the median of the minute after it) and at the end (median of the last minute),
# the growth between them, the WAL's largest size after the warm-up and in the last third, ERROR
# and WARN lines of the collector (WARN by message), API failures and latency, incidents opened
# and resolved, simulate's errors. Exits 1 when one of the promises does not hold:
#   RSS growth after warm-up < 5 %; the WAL bounded: its largest size in the last third of the
#   run no more than 10 % (+16 MiB) above its largest in the first third after the warm-up, and
#   never above 512 MiB (the store checkpoints at once past 128 MiB of uncopied WAL, a writer in
#   its own commit past 256 MiB; the file is cut back to 64 MiB after each reset); no ERROR line,
#   no failed API read, no simulate error.
#
# Environment: SOAK_AGENTS, SOAK_METRICS, SOAK_INTERVAL, SOAK_REAL_AGENTS, SOAK_WARMUP_SECS,
# SOAK_RETENTION as above; SOAK_KEEP=1 keeps the temp dir (logs, store, samples.tsv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-3600}"
[[ "$SECS" =~ ^[0-9]+$ ]] && [[ "$SECS" -ge 60 ]] || { echo "usage: bench/soak.sh [SECONDS >= 60]" >&2; exit 2; }
AGENTS="${SOAK_AGENTS:-1000}"
METRICS="${SOAK_METRICS:-30}"
INTERVAL="${SOAK_INTERVAL:-2s}"
REAL="${SOAK_REAL_AGENTS:-3}"
# The sawtooth repeats every 1,000 batches; by default the warm-up ends one such cycle before the
# end, so that the two RSS figures compared are taken at the same point of the incident churn
# (the same number of incidents open), not at different ones.
INTERVAL_SECS=$(awk -v i="$INTERVAL" 'BEGIN { v = i + 0; if (i ~ /ms$/) v /= 1000; else if (i ~ /m$/) v *= 60; print int(v) }')
CYCLE=$((1000 * INTERVAL_SECS))
if [[ -z "${SOAK_WARMUP_SECS:-}" ]]; then
    if [[ $((SECS - CYCLE)) -ge 300 ]]; then WARMUP=$((SECS - CYCLE)); else WARMUP=$((SECS / 3)); fi
else
    WARMUP="$SOAK_WARMUP_SECS"
fi
RETENTION="${SOAK_RETENTION:-5m}"
[[ "$WARMUP" -lt "$SECS" ]] || { echo "soak: the warm-up ($WARMUP s) must be shorter than the run ($SECS s)" >&2; exit 2; }
WAL_LIMIT_KB=$((512 * 1024))
START=$(date +%s)

for tool in cargo curl awk sed sort; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is required" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vigil-soak.XXXXXX")"
PIDS=()
REAL_PIDS=()
cleanup() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ "${SOAK_KEEP:-}" == 1 ]]; then echo "soak: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '[%5ds] %s\n' $(($(date +%s) - START)) "$*" >&2; }

# --- build -------------------------------------------------------------------------------------
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET_DIR:-$ROOT/target}/release"
log "building --release (vigil-collector, vigil-agent)"
(cd "$ROOT" && cargo build --release --quiet -p vigil-collector -p vigil-agent --bins)
COLLECTOR="$BIN/vigil-collector"
AGENT="$BIN/vigil-agent"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
export NO_COLOR=1 VIGIL_LOG="${VIGIL_LOG:-info,quinn=warn}"

# --- collector ---------------------------------------------------------------------------------
DATA="$WORK/collector"
CONFIG="$WORK/collector.toml"
{
    printf 'data_dir = "%s"\n[quic]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n' "$DATA"
    printf '[store]\nretention = "%s"\n' "$RETENTION"
    i=0
    for metric in cpu_usage_ratio load1 load5 load15 swap_used_bytes; do
        threshold=$(awk -v i=$i 'BEGIN { printf "%.1f", 0.1 + 0.2 * i }')
        printf '[[rule]]\nname = "soak-%s"\nmetric = "%s"\nabove = %s\nclear = 0.05\nurgency = "low"\n' \
            "$metric" "$metric" "$threshold"
        printf '[rule.scope]\ntype = "host"\n'
        i=$((i + 1))
    done
} >"$CONFIG"
"$COLLECTOR" serve --config "$CONFIG" >"$WORK/collector.out" 2>"$WORK/collector.log" &
CPID=$!
PIDS+=("$CPID")
for _ in $(seq 1 100); do
    grep -q "listening" "$WORK/collector.out" 2>/dev/null && break
    kill -0 "$CPID" 2>/dev/null || { cat "$WORK/collector.log" >&2; exit 1; }
    sleep 0.1
done
QUIC="$(sed -n 's/.*QUIC \([0-9.:]*\),.*/\1/p' "$WORK/collector.out")"
HTTP="$(sed -n 's|.*HTTP http://\([0-9.:]*\)/.*|\1|p' "$WORK/collector.out")"
[[ -n "$QUIC" && -n "$HTTP" ]] || { echo "soak: the collector did not start" >&2; cat "$WORK/collector.log" >&2; exit 1; }
log "collector pid $CPID: QUIC $QUIC, HTTP $HTTP, data dir $DATA"
TOKEN="$("$COLLECTOR" token create --data-dir "$DATA" --ttl 2h 2>/dev/null)"
VIEWER="$("$COLLECTOR" api-token create --data-dir "$DATA" --role viewer --name soak 2>/dev/null)"

# --- real agents with changing discovery roots -------------------------------------------------
for n in $(seq 1 "$REAL"); do
    root="$WORK/root-$n"
    cp -a "$ROOT/tests/fixtures/host-a" "$root"
    printf '%032x\n' "$((0x50a4000 + n))" >"$root/etc/machine-id"
    cp "$root/var/lib/dpkg/status" "$root/status.base"
    cat >"$WORK/agent-$n.toml" <<EOF
collector = "$QUIC"
token = "$TOKEN"
data_dir = "$WORK/agent-$n"
hostname = "soak-real-$n"
root = "$root"
tags = { role = "soak" }
[metrics]
interval = "2s"
[discovery]
interval = "5s"
EOF
    "$AGENT" run --config "$WORK/agent-$n.toml" >/dev/null 2>"$WORK/agent-$n.log" &
    PIDS+=("$!")
    REAL_PIDS+=("$!")
done
# One change per root every 10 s: packages soak-pkg-0..7 come, are upgraded and go, and a
# process (pid 300) appears and goes.
mutate() {
    local tick=0 n root pkg
    while :; do
        for n in $(seq 1 "$REAL"); do
            root="$WORK/root-$n"
            {
                cat "$root/status.base"
                for pkg in $(seq 0 7); do
                    # Package p is installed in ticks where bit (p mod 3) of the tick is set;
                    # its version moves every fourth tick.
                    if ((((tick + n) >> (pkg % 3)) & 1)); then
                        printf '\nPackage: soak-pkg-%d\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.%d-%d\nDescription: soak test package\n' \
                            "$pkg" "$pkg" $((tick / 4))
                    fi
                done
            } >"$root/status.tmp"
            mv "$root/status.tmp" "$root/var/lib/dpkg/status"
            if ((tick % 2)); then
                mkdir -p "$root/proc/300"
                printf 'soakd\n' >"$root/proc/300/comm"
                ln -sfn /usr/sbin/soakd "$root/proc/300/exe"
            else
                rm -rf "$root/proc/300"
            fi
        done
        tick=$((tick + 1))
        sleep 10
    done
}
mutate &
PIDS+=("$!")

# --- simulated agents --------------------------------------------------------------------------
log "starting $AGENTS simulated agents ($METRICS metrics every $INTERVAL)"
"$AGENT" simulate --agents "$AGENTS" --collector "$QUIC" --token "$TOKEN" --data-dir "$WORK/sim" \
    --interval "$INTERVAL" --metrics-per-agent "$METRICS" --duration "$((SECS + 600))s" --json \
    >"$WORK/sim.json" 2>"$WORK/sim.log" &
SPID=$!
PIDS+=("$SPID")
while ! grep -q "all simulated agents connected" "$WORK/sim.log"; do
    kill -0 "$SPID" 2>/dev/null || { tail -20 "$WORK/sim.log" >&2; exit 1; }
    sleep 0.5
done
LOAD_START=$(date +%s)
log "all simulated agents connected; soaking for $SECS s (warm-up $WARMUP s)"

# --- API reads ---------------------------------------------------------------------------------
reads() {
    local paths=(/api/v1/incidents /api/v1/cis /api/v1/changes /api/v1/agents /api/v1/cmdb/export /metrics)
    local i=0 path out
    while :; do
        path=${paths[$((i % ${#paths[@]}))]}
        out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 30 \
            -H "Authorization: Bearer $VIEWER" "http://$HTTP$path" || echo "000 30")
        printf '%s %s\n' "$path" "$out" >>"$WORK/reads.tsv"
        i=$((i + 1))
        sleep 1
    done
}
reads &
PIDS+=("$!")

# --- measurement -------------------------------------------------------------------------------
printf 'second\trss_kb\twal_kb\tfds\n' >"$WORK/samples.tsv"
next_report=300
while :; do
    t=$(($(date +%s) - LOAD_START))
    [[ "$t" -le "$SECS" ]] || break
    kill -0 "$CPID" 2>/dev/null || { log "the collector exited"; tail -20 "$WORK/collector.log" >&2; exit 1; }
    kill -0 "$SPID" 2>/dev/null || { log "simulate exited"; tail -20 "$WORK/sim.log" >&2; exit 1; }
    rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$CPID/status")
    wal=$(($(stat -c %s "$DATA/vigil.db-wal" 2>/dev/null || echo 0) / 1024))
    fds=$(find "/proc/$CPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%d\t%d\t%d\t%d\n' "$t" "$rss" "$wal" "$fds" >>"$WORK/samples.tsv"
    if [[ "$t" -ge "$next_report" ]]; then
        log "t=${t}s VmRSS $((rss / 1024)) MiB, WAL $((wal / 1024)) MiB, $fds fds"
        next_report=$((next_report + 300))
    fi
    sleep 10
done

metric_sum() { # metric_sum NAME: the sum of a metric's samples on /metrics
    curl -sf --max-time 60 "http://$HTTP/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f", s }'
}
OPENED=$(metric_sum vigil_incidents_opened_total)
# Every resolution is observed once in the MTTR histogram.
RESOLVED=$(metric_sum vigil_incident_resolve_seconds_count)
DELTAS=$(curl -sf --max-time 60 "http://$HTTP/metrics" | awk '$1 == "vigil_inventory_messages_total{kind=\"delta\"}" { print $2 }')
REJECTED=$(metric_sum vigil_ingest_rejected_total)
SAMPLES=$(metric_sum vigil_ingest_samples_total)
REAL_RSS=""
for pid in "${REAL_PIDS[@]}"; do REAL_RSS+="$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null || echo gone) "; done

kill -INT "$SPID" 2>/dev/null || true
for _ in $(seq 1 300); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.2; done
SIM_ERRORS=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' "$WORK/sim.json")
SIM_ERRORS=${SIM_ERRORS:-unknown}

# --- report ------------------------------------------------------------------------------------
median_rss() { # median_rss FROM TO: median VmRSS (kB) of the samples with FROM <= second < TO
    awk -F'\t' -v a="$1" -v b="$2" 'NR > 1 && $1 >= a && $1 < b { print $2 }' "$WORK/samples.tsv" \
        | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'
}
RSS_WARM=$(median_rss "$WARMUP" $((WARMUP + 60)))
RSS_END=$(median_rss $((SECS - 60)) $((SECS + 1)))
RSS_MAX=$(awk -F'\t' 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$WORK/samples.tsv")
GROWTH=$(awk -v a="$RSS_WARM" -v b="$RSS_END" 'BEGIN { printf "%.2f", a ? (b - a) * 100 / a : 0 }')
WAL_MAX=$(awk -F'\t' 'NR > 1 && $3 > m { m = $3 } END { print m + 0 }' "$WORK/samples.tsv")
wal_max_in() { # wal_max_in FROM TO: the largest WAL (kB) of the samples with FROM <= second < TO
    awk -F'\t' -v a="$1" -v b="$2" 'NR > 1 && $1 >= a && $1 < b && $3 > m { m = $3 } END { print m + 0 }' "$WORK/samples.tsv"
}
THIRD=$(((SECS - WARMUP) / 3))
WAL_EARLY=$(wal_max_in "$WARMUP" $((WARMUP + THIRD)))
WAL_LATE=$(wal_max_in $((SECS - THIRD)) $((SECS + 1)))
WAL_END=$(awk -F"\t" "END { print \$3 + 0 }" "$WORK/samples.tsv")
FDS=$(awk -F'\t' 'NR > 1 { if (!min || $4 < min) min = $4; if ($4 > max) max = $4 } END { print min "-" max }' "$WORK/samples.tsv")
ERRORS=$(grep -c ' ERROR ' "$WORK/collector.log" || true)
WARNS=$(grep -c ' WARN ' "$WORK/collector.log" || true)
READS=$(wc -l <"$WORK/reads.tsv")
READ_FAILS=$(awk '$2 !~ /^2/' "$WORK/reads.tsv" | wc -l)
log "done"

echo
echo "Soak: $AGENTS simulated agents x $METRICS metrics every $INTERVAL, $REAL real agents with changing roots, API reads, retention $RETENTION; $SECS s after the ramp, warm-up $WARMUP s; $(nproc) cores"
echo
echo "| Figure | Measured | Promise |"
echo "|---|---|---|"
echo "| collector VmRSS after warm-up -> end (medians of a minute) | $((RSS_WARM / 1024)) -> $((RSS_END / 1024)) MiB (${GROWTH} %), max $((RSS_MAX / 1024)) MiB | growth < 5 % |"
echo "| largest vigil.db-wal: overall / first third after warm-up / last third; at the end | $((WAL_MAX / 1024)) / $((WAL_EARLY / 1024)) / $((WAL_LATE / 1024)) MiB; $((WAL_END / 1024)) MiB | last third <= first third + 10 % + 16 MiB; never > 512 MiB |"
echo "| ERROR lines / WARN lines in the collector's log | $ERRORS / $WARNS | no ERROR |"
echo "| API reads failed | $READ_FAILS of $READS | 0 |"
echo "| simulate errors | $SIM_ERRORS | 0 |"
echo "| open fds (min-max) | $FDS | |"
echo "| samples stored / rejected | $SAMPLES / $REJECTED | |"
echo "| incidents opened / resolved | $OPENED / $RESOLVED | |"
echo "| inventory deltas reconciled | ${DELTAS:-0} | |"
echo "| real agents' VmRSS at the end (kB) | $REAL_RSS | |"
echo
echo "API read latency (seconds; p50 / p99 / max):"
for path in $(awk '{ print $1 }' "$WORK/reads.tsv" | sort -u); do
    awk -v p="$path" '$1 == p { print $3 }' "$WORK/reads.tsv" | sort -g \
        | awk -v p="$path" '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "  %-22s %s / %s / %s (%d reads)\n", p, v[int((NR + 1) / 2)], v[i], v[NR], NR }'
done
if [[ "$WARNS" -gt 0 ]]; then
    echo
    echo "WARN lines by message (most frequent first):"
    grep ' WARN ' "$WORK/collector.log" | sed 's/^.* WARN //; s/[0-9][0-9]*/N/g' | cut -c1-120 | sort | uniq -c | sort -rn | head -10
fi
if [[ "$ERRORS" -gt 0 ]]; then
    echo
    echo "ERROR lines (first 10):"
    grep ' ERROR ' "$WORK/collector.log" | head -10
fi

ok=1
awk -v g="$GROWTH" 'BEGIN { exit !(g < 5) }' || { echo "soak: RSS grew ${GROWTH} % after the warm-up" >&2; ok=0; }
[[ "$WAL_MAX" -le "$WAL_LIMIT_KB" ]] || { echo "soak: the WAL reached $((WAL_MAX / 1024)) MiB" >&2; ok=0; }
[[ "$WAL_LATE" -le $((WAL_EARLY * 11 / 10 + 16384)) ]] || { echo "soak: the WAL grew: $((WAL_EARLY / 1024)) MiB early, $((WAL_LATE / 1024)) MiB late" >&2; ok=0; }
[[ "$ERRORS" -eq 0 ]] || { echo "soak: $ERRORS ERROR lines" >&2; ok=0; }
[[ "$READ_FAILS" -eq 0 ]] || { echo "soak: $READ_FAILS API reads failed" >&2; ok=0; }
[[ "$SIM_ERRORS" == 0 ]] || { echo "soak: simulate reported $SIM_ERRORS errors" >&2; ok=0; }
[[ "$ok" == 1 ]] || exit 1
echo "soak: every promise held"
