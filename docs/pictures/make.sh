#!/usr/bin/env bash
# Regenerates the README's pictures (docs/pictures/*.png) and docs/pictures/README.md:
#   docs/pictures/make.sh                 # runs `make demo` into runs/pictures/demo first
#   docs/pictures/make.sh DEMO_RUN        # reuses a finished demo run (e.g. demo_runs/flair/version_0)
#   docs/pictures/make.sh DEMO_RUN G2D_RUN   # and a finished G2D run with pseudo_seg/overlay images
# 1. the demo, exactly as `make demo` runs it (fit, evaluate, evaluate --tag 6class, summary);
#    a reused run evaluated before the pictures existed is evaluated again (default evaluation);
# 2. a short G2D fit (recipes/g2d.yaml + tiny overlay, 60 steps, an overlay every 20 steps);
# 3. small copies (at most 700 px wide) of one picture of each kind, by docs/pictures/render.py.
# Scratch runs go to $PICTURES_WORK (default runs/pictures, git-ignored). Needs .venv (make install).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=docs/pictures
WORK=${PICTURES_WORK:-runs/pictures}
PY=.venv/bin/python
FL=.venv/bin/fundus-lit
mkdir -p "$WORK"
timings=()
started=$SECONDS
commit=$(git rev-parse --short HEAD)
load=$(cut -d' ' -f1-3 /proc/loadavg)

if [ $# -ge 1 ]; then
    run=${1%/}
    if [ ! -e "$run/retrieval_examples.png" ]; then
        t=$SECONDS
        "$FL" evaluate --ckpt "$run/checkpoints/last.ckpt" --config recipes/eval/synthetic.yaml
        timings+=("evaluate (reused run): $((SECONDS - t)) s")
    fi
    demo_cmd="(reused run $run)"
else
    t=$SECONDS
    make_opts=()  # -o: an installed .venv is not checked against pyproject.toml again
    [ -e .venv/.installed ] && make_opts=(-o .venv/.installed)
    make "${make_opts[@]}" demo DEMO_DIR="$WORK/demo"
    run=$(ls -td "$WORK"/demo/flair/version_* | head -1)
    timings+=("make demo (fit, 2 evaluations, summary): $((SECONDS - t)) s")
    demo_cmd="make demo DEMO_DIR=$WORK/demo"
fi

# G2D: a recipe on top of recipes/g2d.yaml that only draws the overlay more often (a plain
# --config overlay cannot change an objective the recipe's base adds)
if [ $# -ge 2 ]; then
    g2d_run=${2%/}
    g2d_cmd="(reused run $g2d_run)"
else
    t=$SECONDS
    cat >"$WORK/g2d_pictures.yaml" <<EOF
base: $ROOT/recipes/g2d.yaml
description: recipes/g2d.yaml drawing pseudo_seg/overlay every 20 steps (docs/pictures/make.sh)
model:
  init_args:
    objectives:
      pseudo_seg:
        init_args:
          image_every: 20
EOF
    "$FL" fit --config "$WORK/g2d_pictures.yaml" --config recipes/overlays/tiny.yaml \
        --trainer.logger.init_args.save_dir="$WORK/g2d" --trainer.max_steps=60 \
        --trainer.enable_progress_bar=false
    g2d_run=$(ls -td "$WORK"/g2d/g2d/version_* | head -1)
    timings+=("G2D fit (60 steps): $((SECONDS - t)) s")
    g2d_cmd="fundus-lit fit --config $WORK/g2d_pictures.yaml --config recipes/overlays/tiny.yaml --trainer.max_steps=60"
fi

t=$SECONDS
projector=$(ls -td "$run"/projector/evaluate_test_step* | head -1)
"$PY" $OUT/render.py retrieval "$run/retrieval_examples.png" $OUT/retrieval_examples.png
"$PY" $OUT/render.py shrink "$run/recall_zeroshot.png" $OUT/recall_zeroshot.png
"$PY" $OUT/render.py shrink "$run/confusion_zeroshot.png" $OUT/confusion_zeroshot.png
"$PY" $OUT/render.py overlay "$g2d_run" $OUT/pseudo_seg_overlay.png
"$PY" $OUT/render.py projector "$projector" $OUT/projector_pca.png
timings+=("pictures: $((SECONDS - t)) s")

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
now=$(git rev-parse --short HEAD)
[ "$now" = "$commit" ] || commit="$commit (HEAD was $now when it ended)"
cat >$OUT/README.md <<EOF
# Pictures in the README

Made by \`docs/pictures/make.sh${1:+ $1}${2:+ $2}\` at commit $commit (working tree
$(git diff --quiet HEAD -- && echo clean || echo "with uncommitted changes")), on $(date -u +%Y-%m-%d),
$cpu, $(nproc) cores, load average $load at the start. Demo: \`$demo_cmd\`; G2D: \`$g2d_cmd\`.

| file | from |
|---|---|
| retrieval_examples.png | \`$run/retrieval_examples.png\`: the query, its first two image hits and its first two text hits (the file has 5 of each) |
| recall_zeroshot.png | \`$run/recall_zeroshot.png\` |
| confusion_zeroshot.png | \`$run/confusion_zeroshot.png\` |
| pseudo_seg_overlay.png | TensorBoard image \`pseudo_seg/overlay\` of \`$g2d_run\`, its last step, one image per row |
| projector_pca.png | 2-D PCA of \`$projector/tensors.tsv\`, coloured by \`metadata.tsv\`, thumbnails from \`sprite.png\` |

Timings: $(printf '%s; ' "${timings[@]}")total $((SECONDS - started)) s.
EOF
ls -l $OUT/*.png
echo "wrote $OUT/README.md"
