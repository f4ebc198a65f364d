#!/bin/bash
set -euo pipefail
cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S=runs/s11/attr; a=attribute_binding
MODELS="world-base world-twostep world-onestep world-small world-t5 world-attr world-short"
log() { echo "[$(date +%T)] $*"; }
python - > $S/$a.txt <<'PY'
from compalign.world.suites import list_categories, load_suite
lines = [p for c in list_categories("attribute_binding") for p in load_suite(c, "train")[:60]]
lines += [p for c in list_categories("attribute_binding") for p in load_suite(c, "heldout")[-25:]]
print("\n".join(lines * 2))
PY
log gallery
[ -f $S/g/gallery_ranks.json ] || { compalign gallery generate -o $S/g -m $MODELS --aspect $a --prompts $S/$a.txt --seed 2000 --device cpu --batch-size 64 --no-progress && compalign rank auto $S/g --device cpu --no-progress; }
[ -f $S/gp.jsonl ] || compalign pairs $S/g -o $S/gp.jsonl --decided-only
log clean pairs
python - $S/syn $S/sp.jsonl <<'PY'
import json, sys
from pathlib import Path
from compalign.rewards.composition.synthetic import make_world_pairs
folder, out = Path(sys.argv[1]).resolve(), sys.argv[2]
path = folder / "pairs.jsonl"
if not path.is_file():
    path = make_world_pairs(folder, "attribute_binding", n_train=300, n_heldout=0, seed=0, variants=4)
rows = [json.loads(line) for line in path.read_text().splitlines()]
for r in rows:
    r["better"], r["worse"] = str(folder / r["better"]), str(folder / r["worse"])
Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"{len(rows)} clean render pairs")
PY
log trajectory pairs
[ -f $S/tj/pairs.jsonl ] || python scripts/reno_trajectory_pairs.py $S/tj --aspect $a --n 60 --seeds 3 --threads 1 2>&1 | grep -v "it/s\]\|s/it\]" | tail -3
wc -l $S/gp.jsonl $S/sp.jsonl $S/tj/pairs.jsonl
log DONE
