#!/usr/bin/env bash
# The long fuzzing campaign (outside CI): every harness for MINUTES_EACH minutes (default 60), one
# after another, corpora kept in $OUT/FAMILY/corpus between runs (libFuzzer's -fork mode does not
# work with a harness started as ``python -m``: its jobs re-run argv[0] as a script; run several
# campaigns on other $OUT folders for more cores). Prints inputs executed and findings per family; a finding
# (crash-*, timeout-*, oom-* in $OUT/FAMILY/findings) gets fixed, minimized (-minimize_crash=1)
# and committed to fuzz/regressions/FAMILY/. RUNS=N stops each family after N inputs (to top up a
# count run before on the same corpora).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES_EACH:-60}
OUT=${OUT:-fuzz-campaign}
for family in ${FAMILIES:-tiff czi dicom dicomweb afi pillow}; do
  mkdir -p "$OUT/$family/corpus" "$OUT/$family/findings"
  extra=()
  [ -d "fuzz/regressions/$family" ] && extra+=("fuzz/regressions/$family")
  PYTHONPATH=src:. "$PY" -m fuzz.harness "$family" "$OUT/$family/corpus" "${extra[@]}" \
    -max_total_time=$((MINUTES * 60)) -runs=${RUNS:--1} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$OUT/$family/findings/" > "$OUT/$family/log" 2>&1
  runs=$(grep -o 'number_of_executed_units: [0-9]*' "$OUT/$family/log" | grep -o '[0-9]*$')
  echo "$family: ${runs:-0} inputs in $MINUTES min, $(ls "$OUT/$family/findings" | wc -l) findings," \
       "corpus $(ls "$OUT/$family/corpus" | wc -l)"
done
