# Sourced by gpu_bench.sh and gpu_acceptance.sh (NAME set to the script's name), from the repo's
# root: refuses at once, in one line and exit 1, without a usable CUDA GPU; sets PY (.venv's
# python, made by `make install` when missing, unless PY is given).
refuse() { echo "$NAME: $*" >&2; exit 1; }
command -v nvidia-smi > /dev/null || refuse "no usable CUDA GPU: nvidia-smi not found; nothing run"
nvidia-smi -L > /dev/null 2>&1 || refuse "no usable CUDA GPU: nvidia-smi -L failed; nothing run"
if [ -z "${PY:-}" ]; then
  [ -x .venv/bin/python ] || make install > /dev/null || refuse "make install failed"
  PY=.venv/bin/python
fi
WHY=$("$PY" experiments/gpu_probes.py check 2>&1) || refuse "${WHY:-the GPU check failed}; nothing run"
