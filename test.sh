#!/usr/bin/env bash
# The whole test gate, as README.md says: install what the tests need when it is missing, then
# formatting, lints and every test (unit and end-to-end) of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

need=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
# Debian installs Alertmanager as prometheus-alertmanager.
{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null 2>&1 \
  || need+=(prometheus-alertmanager)
# The packet-loss test runs the agent in a network namespace (ip) behind nftables loss rules (nft),
# both in sbin, which a non-root PATH may not hold.
sbin() { command -v "$1" || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; } >/dev/null 2>&1
sbin ip || need+=(iproute2)
sbin nft || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} ..."
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# tests/grafana_check.py (the dashboards' check against Grafana's own types) needs the pinned SDK.
python3 -c 'import grafana_foundation_sdk' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements-grafana.txt

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests in tests/ run the real binaries: build them first.
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# A short run of every fuzz target (fuzz/, libFuzzer), which also replays every input that ever
# made one fail (fuzz/regressions/). The quicker dev-profile build (see fuzz/Cargo.toml) keeps
# this under 5 minutes on two cores from a cold start; FUZZ_CI_SECONDS=0 skips it.
if [ "${FUZZ_CI_SECONDS:-10}" -gt 0 ]; then
  FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" bench/fuzz.sh "${FUZZ_CI_SECONDS:-10}"
fi
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test
# binary with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
