#!/usr/bin/env bash
# What a lent GPU runs, by hand (CI has no GPU): the CUDA tests, the per-step benchmark
# (with trainer.compile) and the large-data benchmark on the GPU, then the whole suite on a
# machine where trainer.device=auto means cuda. Each part has its own time limit, so one
# that hangs does not take the others with it. Logs go to $OUT, or ./cuda-logs.
#
#   bash benchmarks/cuda.sh     # PYTHON=... picks the interpreter; SKIP=step,large,ddp,whole,sweep,suite skips those
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
xdist=$($py -c "import xdist" 2>/dev/null && echo "-n 8")

if ! $py -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "No CUDA device here: benchmarks/cuda.sh is for a machine with one" >&2
    exit 1
fi
out=${OUT:-cuda-logs}
mkdir -p "$out"
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 150 $py -m pytest -q -p no:cacheprovider -m cuda -rs 2>&1 | tee "$out/cuda_tests.log"
[[ ${SKIP:-} == *step* ]] || (cd benchmarks && timeout 200 $py per_step.py --device cuda --compile --wide --epochs 600 \
    --repeats 3) 2>&1 | tee "$out/per_step.log"
[[ ${SKIP:-} == *large* ]] ||
    (cd benchmarks && timeout 100 $py large_data.py --device cuda --repeats 2) 2>&1 \
        | tee "$out/large_data.log"
[[ ${SKIP:-} == *ddp* ]] || (cd benchmarks && timeout 200 $py distributed.py --cuda --repeats 3) 2>&1 \
    | tee "$out/distributed.log"
# the whole process on this machine: the same run with trainer.device=cuda and =cpu
[[ ${SKIP:-} == *whole* ]] || (cd benchmarks && timeout 120 $py - <<'PY'
from common import PYTHON, median, timed_process
import tempfile

times = {"cuda": [], "cpu": []}
for _ in range(4):
    for device, values in times.items():
        run_dir = tempfile.mkdtemp()
        args = ["experiment=linear_fit", f"trainer.device={device}", f"hydra.run.dir={run_dir}"]
        values.append(timed_process([PYTHON, "-m", "runner", *args])[0])
for device, values in times.items():
    print(f"whole process, trainer.device={device}: median {median(values[1:]):.2f} s of 3")
PY
) 2>&1 | tee "$out/whole.log"
# a joblib sweep on cuda, where the plugin is installed: each loky worker is a process of its
# own that starts CUDA itself; then the sweep tests
if [[ ${SKIP:-} != *sweep* ]] && $py -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    timeout 120 $py -m runner -m experiment=sine_mlp trainer.device=cuda trainer.epochs=20 \
        optimizer.lr=0.01,0.03 hydra/launcher=joblib hydra.launcher.n_jobs=2 \
        hydra.sweep.dir="$out/sweep" 2>&1 | tail -4 | tee "$out/sweep.log"
    grep -h '"status"\|"device"' "$out"/sweep/*/metrics.json | tee -a "$out/sweep.log"
    timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_sweep.py -rs 2>&1 | tail -8 \
        | tee -a "$out/sweep.log"
fi
# the other sweep plugins (optuna, submitit) are left out of a GPU image's packages
[[ ${SKIP:-} == *suite* ]] ||
    timeout 170 $py -m pytest -q -p no:cacheprovider $xdist -m "not cuda" --ignore=tests/test_sweep.py \
        2>&1 | tee "$out/suite.log"
