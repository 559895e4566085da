#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (not part of ./dev test): a local cluster whose GPU worker type declares
# no GPU, so what the node has is what the agent detects (nvidia-smi); then examples/gpu_check.py shows the
# CUDA_VISIBLE_DEVICES each task gets and what CUDA sees inside it. Wheels for the launcher's dependencies
# may be given in ./.whl (a machine without an index).
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/launch-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/launch-site
fi
# local nodes run this interpreter and import launch from here, as an installed checkout would
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" LAUNCH_HOME=$(mktemp -d) COLUMNS=160
out=${OUT:-/tmp}
cfg=$LAUNCH_HOME/gpu.yaml
cat > "$cfg" <<EOC
cluster_name: gpucheck
max_workers: 1
idle_timeout_minutes: 5
provider: {type: local}
available_node_types:
  head: {resources: {CPU: 0, GPU: 0}, min_workers: 0, max_workers: 0}
  gpu: {resources: {}, min_workers: 1, max_workers: 1}
head_node_type: head
EOC
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -c "from runtime.resources import detect_gpus, node_resources; print('detect_gpus:', detect_gpus()); print('node_resources:', node_resources({}))"
CUDA_VISIBLE_DEVICES= python3 -c "from runtime.resources import detect_gpus; print('with CUDA_VISIBLE_DEVICES=\"\":', detect_gpus())"
trap 'python3 -m launcher down "$cfg" --yes 2>&1 | tail -n 3' EXIT
python3 -m launcher up "$cfg" --yes 2>&1 | tail -n 15
python3 -m launcher status "$cfg" --json > "$out/status.json"; python3 -c "import json,sys; [print(n['node_type'], n['runtime'], n['resources_total']) for n in json.load(open(sys.argv[1]))['nodes']]" "$out/status.json"
timeout 240 python3 -m launcher submit "$cfg" examples/gpu_check.py; rc=$?
echo "gpu_check exit: $rc"
exit $rc
