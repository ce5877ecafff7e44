#!/usr/bin/env bash
# The GPU check of issue 22 on one GPU (sized for an H200), at most 8 minutes: the FLAIR recipe
# step against the published FLAIR training loop (samples/s, MFU), WSC's queue cost at K = 65,536,
# gradient-cache memory at batch 4,096 and 512 px, and one-process DDP and FSDP smoke steps.
# It prints a table and writes benchmarks/results/gpu_check.json (or --out FILE); the exit status
# is 0 only when every section ran (goals are reported, not enforced). See benchmarks/gpu_check.py.
#
# On the GPU machine (torch, lightning, timm and transformers preinstalled, no network), install
# the package WITHOUT its dependencies, so pip neither downloads nor replaces anything:
#   pip install --no-deps -e . && bash benchmarks/gpu_check.sh
# With no network at all add --no-build-isolation (else pip fetches setuptools to build with):
#   python3 -m pip install --no-deps --no-build-isolation -e . && bash benchmarks/gpu_check.sh
# (The repository root is also put on PYTHONPATH below, so the check runs even uninstalled.)
# Nothing downloads at run time (towers and tokenizer are built locally; faiss is not imported).
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/check.json   # CPU, tiny shapes, < 1 min
# PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
elif command -v python3 >/dev/null; then py=python3
else py=python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# At most 8 minutes: TERM at the limit (450 s), KILL 20 s later if a handler kept it alive. The
# JSON is rewritten after every section, so a run stopped here keeps every finished section.
limit=${GPU_CHECK_LIMIT_S:-450}
timeout --signal=TERM --kill-after=20 "$limit" "$py" benchmarks/gpu_check.py "$@"
status=$?
if [ $status -eq 124 ] || [ $status -eq 137 ]; then
  echo "gpu_check: stopped at the $limit s limit (exit $status)" >&2
fi
exit $status
