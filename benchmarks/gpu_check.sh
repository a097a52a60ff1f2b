#!/bin/bash
# tview's checks on a machine with a CUDA GPU, from the repo root, with the machine's own python3 (torch, h5py),
# sized for a 15-minute device lease (about 9 minutes; each part has its own time limit): the CUDA tests (device
# statistics equal the CPU's, one host transfer a step, set_sync_debug_mode("error") around recording, bf16 and
# compile), the recorder's overhead on three nets, where a recorded step's host time goes (the training thread's
# forward and rec.step(), the writer thread), the writer's CPU per record, the overhead under budget=0.05, memory on the GPU, and a compiled
# model's overhead.
# `--ranks` also times reads across 1024 ranks on that machine's cores (CPU work: 5 more minutes).
# The whole log is written to $OUT/gpu_check.log where OUT is set (the device tool's folder), else to ./gpu_check.log.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
exec > >(tee "${OUT:-.}/gpu_check.log") 2>&1
t0=$(date +%s)
part() { echo "=== $1 (+$(( $(date +%s) - t0 )) s)"; }
nvidia-smi -L; echo "cores: $(nproc)"
python3 -c "import torch, h5py, numpy; print('torch', torch.__version__, 'h5py', h5py.__version__, 'HDF5', h5py.version.hdf5_version, 'numpy', numpy.__version__)"
part "CUDA tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/hooks/test_cuda.py tests/hooks/test_training_stack.py \
    2>&1 | grep -E "passed|failed|FAILED|Error|SKIPPED" | tail -15
for model in resnet convbn 3c3d; do
    part "overhead $model"
    timeout 90 python3 benchmarks/overhead.py --device cuda --model "$model" --steps 200 --batch 128 2>&1 | tail -6
done
for every in 1 10; do
    part "host time by thread, every $every"
    timeout 60 python3 benchmarks/gpu_profile.py --steps 400 --every "$every" --no-profile 2>&1 | tail -4
done
part "writer CPU per record"
timeout 60 python3 benchmarks/writer_cpu.py --device cuda --batch 128 --steps 300 2>&1 | tail -4
part "budget (0.05)"
timeout 120 python3 benchmarks/budget.py --device cuda --batch 128 --rounds 2 --steps 400 --adapt 5 2>&1 \
    | grep -v "Warning\|rec.step" | tail -6
part "memory"
timeout 90 python3 benchmarks/memory.py --device cuda --models resnet,resnet18 2>&1 | tail -10
part "compiled (inductor)"
timeout 150 python3 benchmarks/overhead.py --device cuda --model resnet --steps 150 --batch 128 --compile inductor 2>&1 | tail -6
if [ "${1:-}" = "--ranks" ]; then
    part "reads across ranks"
    timeout 300 python3 benchmarks/many_ranks.py --out /tmp/tview-ranks --ranks 8,1024 --parts reader 2>&1 | tail -5
fi
part "done"
