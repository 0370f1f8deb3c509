#!/usr/bin/env bash
# Vigil's fuzz targets (fuzz/, cargo-fuzz + libFuzzer): builds them, runs each for a set time and
# prints one line per target with its executions and crashes. Exits non-zero if any crashed.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET]     # default 60
#
# Each target fuzzes with its corpus fuzz/corpus/<target> (kept between runs, not in git) and
# also runs every input of fuzz/seeds/<target> and fuzz/regressions/<target> (the crashes found
# so far: a fixed bug that comes back fails here). A crash leaves its input in
# fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log; reproduce it with
#   fuzz/target/<triple>/release/<target> fuzz/artifacts/<target>/crash-...
#
# Toolchain: cargo-fuzz wants a nightly compiler. The nightly toolchain is used when rustup has
# one; otherwise the default (stable) one with RUSTC_BOOTSTRAP=1, which lets it accept nightly
# flags. FUZZ_TOOLCHAIN=stable (or any rustup toolchain name) forces a choice. cargo-fuzz is
# installed (`cargo install cargo-fuzz --locked`) when missing.
#
# Environment:
#   FUZZ_TARGETS      targets to run, space-separated (default: all of them)
#   FUZZ_SANITIZER    none (default) or address, leak, memory, thread. The targets are Rust with
#                     no unsafe code of the project's own, so AddressSanitizer adds build time and
#                     a 2-3x slower run for little; `address` is there for a deeper local hunt.
#   FUZZ_PROFILE      release (default: cargo-fuzz's optimised build, fastest runs) or dev (a
#                     quicker build at optimisation level 1, for short runs: test.sh uses it)
#   FUZZ_TARGET_DIR   cargo's target directory (default fuzz/target)
#   FUZZ_TIMEOUT      seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB       memory limit of one target process in MiB (default 2048)
#   FUZZ_MAX_LEN      longest input libFuzzer makes (default: libFuzzer's, 4096 bytes)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: bench/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
sanitizer="${FUZZ_SANITIZER:-none}"
profile="${FUZZ_PROFILE:-release}"
case "$profile" in
  release) profile_args=(); profile_dir=release ;;
  dev) profile_args=(--dev); profile_dir=debug ;;
  *) echo "FUZZ_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
target_dir="${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"

# --- toolchain -------------------------------------------------------------------------------
toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
elif command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
fi
rustc_cmd=(rustc)
if [ ${#toolchain[@]} -gt 0 ]; then rustc_cmd=(rustup run "${toolchain[0]#+}" rustc); fi
if ! "${rustc_cmd[@]}" --version | grep -q -- '-nightly'; then
  # A stable or beta compiler: let it take the nightly flags cargo-fuzz passes.
  export RUSTC_BOOTSTRAP=1
fi
triple="$("${rustc_cmd[@]}" -vV | sed -n 's/^host: //p')"
echo "fuzz: $("${rustc_cmd[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, sanitizer $sanitizer, profile $profile, $secs s per target"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz ..."
  cargo install cargo-fuzz --locked
fi

# --- build -----------------------------------------------------------------------------------
build_start=$SECONDS
cargo "${toolchain[@]}" fuzz build "${profile_args[@]}" --sanitizer "$sanitizer" \
  --codegen-units 16 --target "$triple" --target-dir "$target_dir"
echo "fuzz: built in $((SECONDS - build_start)) s"
bin_dir="$target_dir/$triple/$profile_dir"

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

# --- run -------------------------------------------------------------------------------------
mkdir -p fuzz/logs
# The store-backed targets keep their SQLite store in a temporary directory for the whole
# process (on tmpfs when there is one); this run's, removed at the end.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch_parent=/dev/shm; else scratch_parent="${TMPDIR:-/tmp}"; fi
scratch="$(mktemp -d "$scratch_parent/vigil-fuzz-run.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export VIGIL_FUZZ_TMPDIR="$scratch"
failed=0
results=()
for t in "${targets[@]}"; do
  bin="$bin_dir/$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz: no target $t (have: $(cargo "${toolchain[@]}" fuzz list | tr '\n' ' '))" >&2
    exit 2
  fi
  corpus="fuzz/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  log="fuzz/logs/$t.log"
  mkdir -p "$corpus" "$artifacts"
  dirs=("$corpus")
  for extra in "fuzz/seeds/$t" "fuzz/regressions/$t"; do
    if [ -d "$extra" ]; then dirs+=("$extra"); fi
  done
  before=$(find "$artifacts" -maxdepth 1 -type f | wc -l)
  args=(-max_total_time="$secs" -print_final_stats=1 -timeout="${FUZZ_TIMEOUT:-10}"
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -artifact_prefix="$artifacts/")
  if [ -n "${FUZZ_MAX_LEN:-}" ]; then args+=(-max_len="$FUZZ_MAX_LEN"); fi
  rc=0
  "$bin" "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(( $(find "$artifacts" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l) - before ))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    # Died without leaving an input (e.g. the seed corpus itself crashed at startup).
    crashes=1
  fi
  line=$(printf '%-22s executions %10s  crashes %d' "$t" "${execs:-?}" "$crashes")
  if [ "$crashes" -gt 0 ]; then
    failed=1
    line+="  (exit $rc; log $log)"
    grep -m1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" >&2 || true
  fi
  echo "$line"
  results+=("$line")
done

echo
echo "fuzz summary ($secs s per target, sanitizer $sanitizer, profile $profile):"
printf '  %s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz: a target crashed" >&2
  exit 1
fi
