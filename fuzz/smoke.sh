#!/usr/bin/env bash
# CI's fuzzing smoke run: every harness for a fixed budget (SECONDS_EACH, default 20 s) on the seed
# corpus, the committed findings and fresh inputs; any finding (an untyped exception, a crash, a
# timeout over 10 s, RSS over 2 GiB) fails the run and is left in $OUT for the next session.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EACH=${SECONDS_EACH:-20}
OUT=${OUT:-$(mktemp -d /tmp/tilescope-fuzz.XXXXXX)}
status=0
for family in tiff czi dicom dicomweb afi pillow zarr; do
  mkdir -p "$OUT/$family/corpus" "$OUT/$family/findings"
  extra=()
  [ -d "fuzz/regressions/$family" ] && extra+=("fuzz/regressions/$family")
  if PYTHONPATH=. "$PY" -m fuzz.harness "$family" "$OUT/$family/corpus" "${extra[@]}" \
      -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$OUT/$family/findings/" > "$OUT/$family/log" 2>&1; then
    echo "fuzz $family: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$OUT/$family/log" | grep -o '[0-9]*$') inputs, no finding"
  else
    echo "fuzz $family: FINDING (see $OUT/$family/findings, log:)"
    grep -v "^<\|Warning\|warn" "$OUT/$family/log" | tail -30
    status=1
  fi
done
exit $status
