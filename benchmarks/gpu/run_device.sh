#!/usr/bin/env bash
# One device run: CUDA path check, then ensemble members trained until a deadline, packed for return.
#
#   bash benchmarks/gpu/run_device.sh            (on the device machine, repo root, $OUT set)
#
# Needs the ignored folder .gpu/ carried along: .gpu/pylib.tar.xz (pydicom + captum, pure Python)
# and .gpu/kermany224.tar.xz (SPLIT/CLASS/*.jpeg, unpacked to .gpu/data/kermany224). Writes $OUT/device.log and
# $OUT/members.tar.xz.part-* (split at 15 MiB; `cat` them and untar; see reassemble.py).
# Environment knobs: BUDGET_S (seconds from start by which everything ends, default 525),
# SEEDS ("1 2 3"), EPOCHS (20), PATIENCE (6), WORKERS (4 per member), CHECK_LIMIT (256),
# CHECK_ARGS, MEMBER_EXTRA, SITE, NO_PYLIB (below).
set +e
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-525}
SEEDS=${SEEDS:-"1 2 3"}
EPOCHS=${EPOCHS:-20}
PATIENCE=${PATIENCE:-6}
WORKERS=${WORKERS:-4}
CHECK_LIMIT=${CHECK_LIMIT:-256}
CHECK_ARGS=${CHECK_ARGS:-}          # e.g. --skip-timing for a CPU try-out
MEMBER_EXTRA=${MEMBER_EXTRA:-}      # e.g. "--limit 64" for a CPU try-out
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/device.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
el() { echo "[+$(( $(date +%s) - T0 ))s]"; }
result() { echo "RESULT $1: $2"; echo "$1: $2" >> "$OUT/.results"; }

echo "$(el) start $(date -u) on $(hostname); budget ${BUDGET_S}s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | head -3
nproc; free -g | head -2

SITE=${SITE:-/tmp/site}
# NO_PYLIB=1 for a try-out where the Python packages are installed (its simplejpeg is for CPython 3.12)
[ -z "$NO_PYLIB" ] && mkdir -p $SITE && tar xJf .gpu/pylib.tar.xz -C $SITE
export PYTHONPATH="$PWD:$SITE"
python3 -c "import torch, pydicom, captum, cv2, simplejpeg; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pydicom', pydicom.__version__, 'captum', captum.__version__, 'cv2', cv2.__version__, 'simplejpeg', simplejpeg.__version__)"
python3 -c "import PIL.features as f; print('Pillow JPEG2000 support:', f.check('jpg_2000'))"
# training.report.write_curves imports plotly, which the device image lacks (run of 2026-11-30): every
# training.train there then exits 1 after writing best/ and last/; members.py keeps the safe copy.
python3 -c "import importlib.util as u; print('plotly available:', u.find_spec('plotly') is not None)"

# ---- 1. CUDA path check --------------------------------------------------------------------
echo "$(el) ==== 1a. inference, Grad-CAM, kernels on CUDA ===="
timeout -k 5 150 python3 benchmarks/gpu/cuda_check.py $CHECK_ARGS
rc=$?; [ $rc -eq 0 ] && result cuda_check "ran (see STEP lines)" || result cuda_check "FAIL rc=$rc"

DATA=.gpu/data/kermany224
# the data travels as one archive (5,232 small files would count more than their bytes)
[ -d $DATA ] || { mkdir -p .gpu/data && tar xJf .gpu/kermany224.tar.xz -C .gpu/data; }
echo "data: $(find $DATA -type f | wc -l) files, $(du -sb $DATA | cut -f1) bytes in $DATA"
for variant in fused plain; do
  extra=""; [ $variant = plain ] && extra="--plain-kernels"
  echo "$(el) ==== 1b. training.train 1 epoch --limit $CHECK_LIMIT on CUDA, $variant kernels ===="
  timeout -k 5 100 python3 -m training.train --data-dir $DATA --out /tmp/check_$variant --arch resnet18_cbam \
      --epochs 1 --limit $CHECK_LIMIT --workers 4 --half-weights $extra 2> /tmp/check_$variant.err
  rc=$?
  tr '\r' '\n' < /tmp/check_$variant.err | grep -v '^epoch 1/1:' | grep -v '^ *$'
  if [ $rc -eq 0 ] && [ -f /tmp/check_$variant/best/model.safetensors ] && [ -f /tmp/check_$variant/last/model_card.json ]; then
    ips=$(python3 -c "import json;r=[json.loads(l) for l in open('/tmp/check_$variant/metrics.jsonl')][-1];print(f\"{r['train_images_per_s']:.0f} img/s ({r['train_seconds']:.2f}s, loss {r['train_loss']:.3f}, val AUC {r['val_auc']:.3f})\")")
    result "train_1epoch_$variant" "PASS rc=0, $ips"
  else
    result "train_1epoch_$variant" "FAIL rc=$rc"
  fi
done

# ---- 2. ensemble members until the deadline ---------------------------------------------------
DEADLINE=$(( T0 + BUDGET_S - 40 ))      # 40 s left for packing
echo "$(el) ==== 2. members: seeds $SEEDS, until +$(( DEADLINE - T0 ))s ===="
( while true; do echo "[+$(( $(date +%s) - T0 ))s] $(nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv,noheader 2>&1)"; sleep 20; done ) > /tmp/gpu_util.txt 2>&1 &
UTIL_PID=$!
python3 benchmarks/gpu/members.py --deadline $DEADLINE --runs /tmp/runs --stage /tmp/stage \
    --seeds $SEEDS --threads 4 -- \
    --data-dir $DATA --arch resnet18_cbam --half-weights --epochs $EPOCHS --patience $PATIENCE \
    --batch-size 64 --workers $WORKERS --augment-border 0.3 --augment-equalize 0.3 $MEMBER_EXTRA
result members "launcher rc=$?"
kill $UTIL_PID 2>/dev/null
echo "GPU utilisation, memory, power while the members trained (every 20 s):"; cat /tmp/gpu_util.txt

# ---- 3. pack -------------------------------------------------------------------------------
echo "$(el) ==== 3. pack ===="
cp /tmp/check_fused/metrics.jsonl /tmp/stage/check_fused_metrics.jsonl 2>/dev/null
cp /tmp/check_plain/metrics.jsonl /tmp/stage/check_plain_metrics.jsonl 2>/dev/null
du -ab /tmp/stage | sort -n | tail -30
set -o pipefail
tar -C /tmp/stage -cf - . | xz -6 -T0 | split -b 15M -d -a 1 - "$OUT/members.tar.xz.part"
result pack "rc=$?"
set +o pipefail
ls -l "$OUT"
cat "$OUT"/members.tar.xz.part* | sha256sum | sed 's/-$/members.tar.xz/'
du -cb "$OUT"/* | tail -1
echo "$(el) ==== results ===="
cat "$OUT/.results"; rm -f "$OUT/.results"
echo "$(el) end"
sleep 1
