#!/usr/bin/env bash
# The long fuzzing campaign (outside CI): every harness for MINUTES_EACH minutes (default 60), one
# after another, corpora kept in $OUT/FAMILY/corpus between runs (libFuzzer's -fork mode does not
# work with a harness started as ``python -m``: its jobs re-run argv[0] as a script; run several
# campaigns on other $OUT folders for more cores). Prints inputs executed and findings per family; a finding
# (crash-*, timeout-*, oom-* in $OUT/FAMILY/findings) gets fixed, minimized (-minimize_crash=1)
# and committed to fuzz/regressions/FAMILY/. RUNS=N stops each family after N inputs (to top up a
# count run before on the same corpora).
# Each harness process runs at most SEGMENT inputs (default 100000), then a fresh one goes on from
# the corpus: under atheris a process's RSS creeps up by 2-4 KB per input on some families (CZI
# reached the 2 GB limit after 530,000 inputs; the same inputs replayed without atheris stay flat
# at ~220 MB), which would end a long run with a false out-of-memory finding.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MINUTES=${MINUTES_EACH:-60}
OUT=${OUT:-fuzz-campaign}
SEGMENT=${SEGMENT:-100000}
for family in ${FAMILIES:-tiff czi dicom dicomweb afi pillow zarr}; do
  mkdir -p "$OUT/$family/corpus" "$OUT/$family/findings"
  extra=()
  [ -d "fuzz/regressions/$family" ] && extra+=("fuzz/regressions/$family")
  total=0 part=0 end=$(($(date +%s) + MINUTES * 60))
  while :; do
    left=$((end - $(date +%s)))
    want=$SEGMENT
    [ -n "${RUNS:-}" ] && want=$((RUNS - total < SEGMENT ? RUNS - total : SEGMENT))
    [ "$left" -le 0 ] || [ "$want" -le 0 ] && break
    log="$OUT/$family/log.$part"
    PYTHONPATH=src:. "$PY" -m fuzz.harness "$family" "$OUT/$family/corpus" "${extra[@]}" \
      -max_total_time="$left" -runs="$want" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$OUT/$family/findings/" > "$log" 2>&1
    runs=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
    total=$((total + ${runs:-0})) part=$((part + 1))
    # a finding, or a run that stopped short of its inputs (time up, or a harness error), ends the family
    [ -n "$(ls "$OUT/$family/findings")" ] || [ "${runs:-0}" -lt "$want" ] && break
  done
  echo "$family: $total inputs in $part runs, $(ls "$OUT/$family/findings" | wc -l) findings," \
       "corpus $(ls "$OUT/$family/corpus" | wc -l)"
done
