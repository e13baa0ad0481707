#!/usr/bin/env bash
# One short device run: three ResNet18+CBAM ensemble members on ONE shared patient-wise split
# (--split-seed 0, the shipped model's), differing only by --seed (initialisation, data order,
# augmentation draws), trained concurrently on the one GPU until a deadline, then packed for return.
#
#   bash benchmarks/gpu/run_split0.sh       (device machine, repo root, $OUT set)
#
# Carries .gpu/kermany224.tar.xz and .gpu/pylib.tar.xz (see run_device.sh). No CUDA path check here
# (run_device.sh did it). Knobs: BUDGET_S (default 215), SEEDS ("1 2 3"), EPOCHS (12), PATIENCE (6),
# WORKERS (4), SPLIT_SEED (0). Afterwards: python benchmarks/gpu/reassemble.py FILES --dest .gpu/members_split0
set +e
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-215}
SEEDS=${SEEDS:-"1 2 3"}
EPOCHS=${EPOCHS:-12}
PATIENCE=${PATIENCE:-6}
WORKERS=${WORKERS:-4}
SPLIT_SEED=${SPLIT_SEED:-0}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
export PYTHONUNBUFFERED=1
el() { echo "[+$(( $(date +%s) - T0 ))s]"; }
echo "$(el) start $(date -u); budget ${BUDGET_S}s; seeds $SEEDS, split seed $SPLIT_SEED, $EPOCHS epochs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
SITE=${SITE:-/tmp/site}
[ -z "$NO_PYLIB" ] && mkdir -p $SITE && tar xJf .gpu/pylib.tar.xz -C $SITE
export PYTHONPATH="$PWD:$SITE"
DATA=.gpu/data/kermany224
[ -d $DATA ] || { mkdir -p .gpu/data && tar xJf .gpu/kermany224.tar.xz -C .gpu/data; }
echo "$(el) data: $(find $DATA -type f | wc -l) files; plotly: $(python3 -c 'import importlib.util as u; print(u.find_spec("plotly") is not None)')"

DEADLINE=$(( T0 + BUDGET_S - 30 ))      # 30 s left for packing
( while true; do echo "[+$(( $(date +%s) - T0 ))s] $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1)"; sleep 30; done ) > /tmp/gpu_util.txt 2>&1 &
UTIL_PID=$!
python3 benchmarks/gpu/members.py --deadline $DEADLINE --runs /tmp/runs --stage /tmp/stage --seeds $SEEDS --threads 4 -- \
    --data-dir $DATA --arch resnet18_cbam --half-weights --epochs $EPOCHS --patience $PATIENCE \
    --batch-size 64 --workers $WORKERS --augment-border 0.3 --augment-equalize 0.3 --split-seed $SPLIT_SEED
kill $UTIL_PID 2>/dev/null
cat /tmp/gpu_util.txt

echo "$(el) ==== pack ===="
set -o pipefail
tar -C /tmp/stage -cf - . | xz -6 -T0 | split -b 15M -d -a 1 - "$OUT/members.tar.xz.part"
echo "pack rc=$?"
set +o pipefail
ls -l "$OUT"
cat "$OUT"/members.tar.xz.part* | sha256sum | sed 's/-$/members.tar.xz/'
echo "$(el) end"
