#!/usr/bin/env bash
# Measurement: one composition reward model per IterComp aspect, trained on an auto-ranked
# world gallery (train-split prompts only), scored on pairs from held-out prompts whose exact-evaluator
# verdicts differ (`pairs --decided-only`). Two held-out sets per aspect:
#   heldout  the last 25 held-out suite prompts per category (2 seeds), in the training gallery's
#            pairs file; the trainer picks its epoch on these, so they are slightly optimistic;
#   test     25 other held-out prompts per category (2 seeds, other noise), never seen in training.
# Then ReNO on world-onestep with the aspect model vs the world CLIP alone (20 held-out prompts x 4
# seeds per category, the first 20 of each suite: disjoint from both pair sets).
#
#   bash scripts/measure_reward_models.sh [OUT=runs/reward-models] [ASPECTS...]
# With EXPORT=1 the head-only models are written into the package as itercomp-attribute / -spatial /
# -nonspatial (how the shipped ones were made).
# ~2 h on one core of the 2-core CPU (galleries ~1 h, ranking ~25 min, training ~25 min, ReNO ~20 min).
set -euo pipefail
OUT=${1:-runs/reward-models}
shift || true
ASPECTS=${*:-spatial_relationship non_spatial_relationship attribute_binding}
MODELS="world-base world-onestep world-small world-t5 world-attr world-short"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

prompts() {  # prompts ASPECT SPLIT FROM TO -> one line per prompt, the list twice (2 seeds)
  python - "$@" <<'PY'
import sys
from compalign.world.suites import list_categories, load_suite
aspect, split, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [p for c in list_categories(aspect) for p in load_suite(c, split)[a:b or None]]
print("\n".join(lines + lines))
PY
}

for a in $ASPECTS; do
  case $a in
    attribute_binding) ntrain=80 ;;  # 5 categories
    *) ntrain=300 ;;
  esac
  { prompts "$a" train 0 "$ntrain"; prompts "$a" heldout -25 0; } > "$OUT/$a.txt"
  prompts "$a" heldout -50 -25 > "$OUT/test_$a.txt"
  for kind in g t; do  # training gallery (seed 2000), test gallery (seed 5000)
    if [ $kind = g ]; then list="$OUT/$a.txt"; seed=2000; else list="$OUT/test_$a.txt"; seed=5000; fi
    compalign gallery generate -o "$OUT/${kind}_$a" -m $MODELS --aspect "$a" --prompts "$list" \
      --seed $seed --device cpu --no-progress
    compalign rank auto "$OUT/${kind}_$a" --no-progress
    compalign pairs "$OUT/${kind}_$a" -o "$OUT/${kind}p_$a.jsonl" --decided-only
  done
  # fine-tuned (top half of the world CLIP trains) and head-only (the world CLIP frozen; shipped)
  compalign reward train --pairs "$OUT/gp_$a.jsonl" --aspect "$a" --backbone world-clip --epochs 3 \
    --lr 1e-4 --freeze-ratio 0.5 -o "$OUT/r_$a" --device cpu --no-progress --seed 0
  short=$(python -c "from compalign.rewards.composition.model import ASPECT_SHORT; print(ASPECT_SHORT['$a'])")
  compalign reward train --pairs "$OUT/gp_$a.jsonl" --aspect "$a" --backbone world-clip --epochs 2 \
    --lr 1e-4 --freeze-ratio 1.0 -o "$OUT/rh_$a" --device cpu --no-progress --seed 0 \
    ${EXPORT:+--export itercomp-$short}
  for r in r rh; do
    compalign reward eval "$OUT/${r}_$a/final" --pairs "$OUT/tp_$a.jsonl" -o "$OUT/test_${r}_$a.json"
  done
  cats=$(python -c "from compalign.world.suites import list_categories as l; print(' '.join(l('$a')))")
  comp="composition:$OUT/rh_$a/final=1"
  for rw in "world-clip=1" "$comp" "$comp world-clip=1"; do
    tag=$(echo "$rw" | sed 's#composition:[^=]*#aspect#; s/ /+/g')
    python scripts/measure_reno.py $(printf -- '--reward %s ' $rw) --categories $cats --per-category 20 \
      --seeds 4 --searches none reno --threads 1 --json "$OUT/reno_${a}_$tag.json"
  done
done
