#!/usr/bin/env bash
# Composition reward models trained the IterComp way with gallery expansion, measured as pair
# classifiers and as ReNO rewards.
#
#   shipped-model gallery   the seven shipped world models (train prompts + the held-out prompts
#            that pick the epoch), ranked by the exact evaluator, evaluator-decided pairs, plus clean
#            render pairs (a correct render vs. one with a clause corrupted); reward model r0
#            (world-CLIP backbone frozen, fusion head trained);
#   expanded gallery   the same gallery expanded with the improved model: world-onestep + ReNO on r0
#            (`reno:` generator), re-ranked; reward model r1 on all decided pairs + the clean pairs.
# Then: pair accuracy on a test gallery (other held-out prompts, other seeds), and ReNO on
# world-onestep with the world CLIP alone vs. r1 (alone and next to the world CLIP), on the first
# RENO_N held-out prompts of each category (disjoint from both pair sets).
#
#   bash scripts/measure_reward_expansion.sh OUT [ASPECTS...]
# Environment: DEV (cpu|cuda), WORKERS (evaluator processes), BS (generator batch), NTRAIN (train
# prompts per relation category; attribute categories get NTRAIN_ATTR), SEEDS (seeds per gallery
# prompt), SYN (clean-render variants per train prompt), RENO_N, RENO_SEEDS, RENO_IT, EPOCHS, SYN_ONLY=1
# (only make the clean render pairs). Every step is skipped when its output exists (resume).
set -euo pipefail
OUT=${1:?usage: measure_reward_expansion.sh OUT [ASPECTS...]}
shift
ASPECTS=${*:-non_spatial_relationship spatial_relationship attribute_binding}
DEV=${DEV:-cpu}; WORKERS=${WORKERS:-0}; BS=${BS:-64}; NTRAIN=${NTRAIN:-300}; NTRAIN_ATTR=${NTRAIN_ATTR:-80}
SEEDS=${SEEDS:-2}; SYN=${SYN:-4}; NHELD=${NHELD:-25}; RENO_N=${RENO_N:-50}; RENO_SEEDS=${RENO_SEEDS:-4}
RENO_IT=${RENO_IT:-50}; EPOCHS=${EPOCHS:-2}
MODELS="world-base world-twostep world-onestep world-small world-t5 world-attr world-short"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*"; }

prompts() {  # prompts ASPECT SPLIT FROM TO -> one line per prompt, the list SEEDS times
  python - "$SEEDS" "$@" <<'PY'
import sys
from compalign.world.suites import list_categories, load_suite
k, aspect, split, a, b = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
lines = [p for c in list_categories(aspect) for p in load_suite(c, split)[a:b or None]]
print("\n".join(lines * k))
PY
}

gallery() {  # gallery DIR LIST SEED
  [ -f "$1/gallery_ranks.json" ] && return 0
  compalign gallery generate -o "$1" -m $MODELS --aspect "$a" --prompts "$2" --seed "$3" --device "$DEV" \
    --batch-size "$BS" --no-progress
  compalign rank auto "$1" --workers "$WORKERS" --device "$DEV" --no-progress
}

train() {  # train RUN PAIRS...
  local run=$1; shift
  [ -f "$run/final/composition_reward.json" ] && return 0
  cat "$@" > "$run.pairs.jsonl"
  compalign reward train --pairs "$run.pairs.jsonl" --aspect "$a" --backbone world-clip --epochs "$EPOCHS" \
    --lr 1e-4 --freeze-ratio 1.0 -o "$run" --device "$DEV" --no-progress --seed 0
}

reno() {  # reno TAG REWARD...
  local tag=$1; shift
  [ -f "$OUT/reno_${a}_$tag.json" ] && return 0
  local searches="reno"; [ "$tag" = world-clip ] && searches="none reno"
  python scripts/measure_reno.py $(printf -- '--reward %s ' "$@") --categories $cats --per-category "$RENO_N" \
    --seeds "$RENO_SEEDS" --iterations "$RENO_IT" --searches $searches --device "$DEV" --workers "$WORKERS" \
    --batch-size 512 --json "$OUT/reno_${a}_$tag.json" 2>&1 | grep -v "it/s\]\|s/it\]" | tail -4
}

for a in $ASPECTS; do
  log "== $a"
  n=$NTRAIN; [ "$a" = attribute_binding ] && n=$NTRAIN_ATTR
  cats=$(python -c "from compalign.world.suites import list_categories as l; print(' '.join(l('$a')))")
  { prompts "$a" train 0 "$n"; prompts "$a" heldout "-$NHELD" 0; } > "$OUT/$a.txt"
  prompts "$a" heldout "-$((2 * NHELD))" "-$NHELD" > "$OUT/test_$a.txt"
  if true; then  # clean render pairs of train prompts (absolute image paths: written on every run)
    python - "$OUT/syn_$a" "$a" "$n" "$SYN" "$OUT/sp_$a.jsonl" <<'PY'
import json, sys
from pathlib import Path
from compalign.rewards.composition.synthetic import make_world_pairs
folder, aspect, n, variants, out = Path(sys.argv[1]).resolve(), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
n_train = n * {"attribute_binding": 5, "spatial_relationship": 2}.get(aspect, 1)
path = folder / "pairs.jsonl"  # made earlier (e.g. on another machine): only the paths change
if not path.is_file():
    path = make_world_pairs(folder, aspect, n_train=n_train, n_heldout=0, seed=0, variants=variants)
rows = [json.loads(line) for line in path.read_text().splitlines()]
for r in rows:
    r["better"], r["worse"] = str(folder / r["better"]), str(folder / r["worse"])
Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"{len(rows)} clean render pairs")
PY
  fi
  [ -n "${SYN_ONLY:-}" ] && continue
  log "galleries"; gallery "$OUT/g_$a" "$OUT/$a.txt" 2000; gallery "$OUT/t_$a" "$OUT/test_$a.txt" 5000
  [ -f "$OUT/tp_$a.jsonl" ] || compalign pairs "$OUT/t_$a" -o "$OUT/tp_$a.jsonl" --decided-only
  [ -f "$OUT/gp_$a.jsonl" ] || compalign pairs "$OUT/g_$a" -o "$OUT/gp_$a.jsonl" --decided-only
  log "reward r0"; train "$OUT/r0_$a" "$OUT/gp_$a.jsonl" "$OUT/sp_$a.jsonl"
  if [ ! -f "$OUT/g1_$a/gallery_ranks.json" ]; then
    log "expansion: world-onestep + ReNO on r0"
    rm -rf "$OUT/g1_$a.tmp"; cp -r "$OUT/g_$a" "$OUT/g1_$a.tmp"
    compalign gallery expand "$OUT/g1_$a.tmp" --add-model "reno-r0=reno:world-onestep,composition:$OUT/r0_$a=1,iterations=$RENO_IT" \
      --rank auto --workers "$WORKERS" --device "$DEV" --batch-size "$BS" --no-progress
    mv "$OUT/g1_$a.tmp" "$OUT/g1_$a"
  fi
  [ -f "$OUT/g1p_$a.jsonl" ] || compalign pairs "$OUT/g1_$a" -o "$OUT/g1p_$a.jsonl" --decided-only
  log "reward r1"; train "$OUT/r1_$a" "$OUT/g1p_$a.jsonl" "$OUT/sp_$a.jsonl"
  for r in r0 r1; do
    [ -f "$OUT/test_${r}_$a.json" ] || compalign reward eval "$OUT/${r}_$a/final" --pairs "$OUT/tp_$a.jsonl" \
      --device "$DEV" -o "$OUT/test_${r}_$a.json" | tail -3
  done
  log "ReNO"
  r1="composition:$OUT/r1_$a/final"
  reno world-clip world-clip=1
  reno r1 "$r1=1"
  reno r1+world-clip "$r1=1" world-clip=1
  reno r1x0.3+world-clip "$r1=0.3" world-clip=1
  reno r0x0.3+world-clip "composition:$OUT/r0_$a/final=0.3" world-clip=1
  log "done $a"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("test_r*_*.json")):
    d = json.loads(f.read_text())
    print(f.name, {k: d[k] for k in d if "accuracy" in k})
for f in sorted(out.glob("reno_*.json")):
    for r in json.loads(f.read_text())["results"]:
        cats = r["categories"]
        mean = sum(c["accuracy"] for c in cats.values()) / len(cats)
        print(f"{f.stem:60s} {r['model']:28s} {100 * mean:5.1f}  " + " ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in cats.items()))
PY
