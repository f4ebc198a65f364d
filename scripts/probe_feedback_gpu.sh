#!/usr/bin/env bash
# Issue-7 probe on a GPU: ReFL on world-base at ~10x the CPU probes' samples, three settings side
# by side, then held-out accuracy of each against world-base.  bash scripts/probe_feedback_gpu.sh OUTROOT TIME_S (F3 adds the aspect models of
# scripts/measure_reward_expansion.sh runs/s7/gpu at weight 0.3 where they exist)
set -uo pipefail
R=${1:-runs/s7/fb}; T=${2:-150}; DEV=${DEV:-cuda}; W=${WORKERS:-14}; N=${N:-25}; BS=${FBBS:-64}
mkdir -p "$R"; [ -e "$R/_scene_pool" ] || ln -s "$PWD/gpu_carry/_scene_pool" "$R/_scene_pool"
common="--base world-base --aspect attribute_binding --aspect spatial_relationship --aspect non_spatial_relationship --batch-size $BS --max-steps 100000 --time-limit $T --device $DEV --no-progress --seed 0 --checkpoint-every 100000"
comp=""
for a in attribute_binding spatial_relationship non_spatial_relationship; do
  [ -d runs/s7/gpu/r1_$a/final ] && comp="$comp --reward composition:runs/s7/gpu/r1_$a/final=0.3"
done
compalign feedback train $common --reward world-clip=1 --lr 1e-4 -o "$R/F1" > "$R/F1.log" 2>&1 &
compalign feedback train $common --reward world-clip=1 --lr 3e-5 -o "$R/F2" > "$R/F2.log" 2>&1 &
compalign feedback train $common --reward world-clip=1 $comp --lr 1e-4 -o "$R/F3" > "$R/F3.log" 2>&1 &
wait
tail -n 3 "$R"/F?.log
models="world-base"; for f in F1 F2 F3; do [ -d "$R/$f/final" ] && models="$models $R/$f"; done
compalign world quality $models -c single_object -c color -c shape -c texture -c colors -c color_attr -c spatial -c position -c non_spatial \
  --per-category "$N" -n 4 --device "$DEV" --workers "$W" --json "$R/quality.json" --no-progress
