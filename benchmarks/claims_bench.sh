#!/usr/bin/env bash
# The claims bench (issue 19): the four studies of recipes/studies/, one after another, resumable
# across machines and days. Checkpoints stay in bench_logs/ (not committed); each finished run's
# small files (eval.json, config.yaml, accuracy curve, done markers, commands.log) are mirrored
# into benchmarks/results/studies/<study>/runs/, which is committed, and restored from there
# before a study starts, so a fresh clone skips every run a previous machine finished.
#   bash benchmarks/claims_bench.sh [study ...]      (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(flair_knowledge vilref_wsc g2d_dense keepfit_expert)
mirror() {  # copy the small files of every run from $1 to $2
  (cd "$1" && find . \( -name eval.json -o -name config.yaml -o -name 'accuracy_curve.json' \
      -o -name '*.done' -o -name commands.log -o -name hparams.yaml \) -print0 |
    while IFS= read -r -d '' f; do mkdir -p "$2/$(dirname "$f")"; cp -p "$f" "$2/$f"; done)
}
for s in "${studies[@]}"; do
  runs=bench_logs/studies/$s results=benchmarks/results/studies/$s
  mkdir -p "$runs" "$results/runs"
  mirror "$results/runs" "$(realpath "$runs")"
  status=0
  .venv/bin/fundus-lit ablate --study "recipes/studies/$s.yaml" --out "$runs" \
    --report_dir "$results" || status=$?
  mirror "$runs" "$(realpath "$results/runs")"
  [ $status -eq 0 ] || exit $status
done
