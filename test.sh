#!/usr/bin/env bash
# The whole test gate, as README.md says: install what the tests need when it is missing, then
# formatting, lints and every test (unit and end-to-end) of the workspace.
set -euo pipefail
cd "$(dirname "$0")"

need=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} ..."
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests in tests/ run the real binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
