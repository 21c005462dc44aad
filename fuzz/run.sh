#!/usr/bin/env bash
# Runs every fuzz target for a while, from the seed corpora.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, every target)
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly flags.
# Installs cargo-fuzz when it is missing. New corpus entries go to fuzz/corpus/<target>
# (ignored by git); crashes to fuzz/artifacts/<target>, and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Our crates forbid unsafe code, so the fuzzers look for panics, overflows (debug
# assertions on), hangs and memory blow-ups; a sanitizer would only slow them down.
build_flags=(--sanitizer none --debug-assertions --release)
cargo fuzz build "${build_flags[@]}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

seeds_for() {
  case "$1" in
    flow_json) echo ../flowcore/tests/flows ;;
    webhook) echo ../flowcore-meta/tests/fixtures ;;
    server_config) echo seeds/server_config ;;
    *) ;;
  esac
}

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  seed_dirs=()
  # Inputs that once failed stay in the corpus, so every run replays them first.
  for dir in "regressions/$target" $(seeds_for "$target"); do
    [ -d "$dir" ] && seed_dirs+=("$dir")
  done
  echo "==> fuzz $target for ${seconds}s"
  cargo fuzz run "${build_flags[@]}" "$target" "corpus/$target" "${seed_dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|INFO: seed corpus|.*(panicked|ERROR|SUMMARY|Test unit written))' || true
  # grep hides the fuzzer's chatter; a crash still fails the run through the artifact check.
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz $target found a failing input:" >&2
    ls "artifacts/$target" >&2
    exit 1
  fi
done
