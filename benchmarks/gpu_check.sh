#!/bin/bash
# tview's checks on a machine with a CUDA GPU, from the repo root, with the machine's own python3 (torch, h5py):
# the CUDA tests (device statistics equal the CPU's, one host transfer a step, no GPU memory kept), the
# recorder's overhead on the GPU for three nets, and reads across 1024 ranks on that machine's cores.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; echo "cores: $(nproc)"
python3 -c "import torch, h5py, numpy; print('torch', torch.__version__, 'h5py', h5py.__version__, 'HDF5', h5py.version.hdf5_version, 'numpy', numpy.__version__)"
# the CUDA tests: statistics equal the CPU's, set_sync_debug_mode("error") around recording, bf16 + compile
timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/hooks/test_cuda.py tests/hooks/test_training_stack.py \
    tests/store/test_many_ranks.py tests/store/test_rank_summary.py 2>&1 | tail -15
# where a recorded step's host time goes: the training thread's forward and rec.step(), the writer thread
for every in 1 10; do timeout 60 python3 benchmarks/gpu_profile.py --steps 400 --every "$every" --no-profile 2>&1 | tail -4; done
python3 benchmarks/launches.py 2>&1 | tail -10
timeout 120 python3 benchmarks/memory.py --device cuda 2>&1 | tail -20 || true
for model in resnet convbn 3c3d; do
    timeout 90 python3 benchmarks/overhead.py --device cuda --model "$model" --steps 200 --batch 128 2>&1 | tail -7
done
timeout 200 python3 benchmarks/overhead.py --device cuda --model resnet --steps 300 --batch 128 --compile inductor 2>&1 | tail -7
timeout 300 python3 benchmarks/many_ranks.py --out /tmp/tview-ranks --ranks 8,1024 --parts reader 2>&1 | tail -5
