#!/usr/bin/env bash
# One device-tool session: the CUDA tests, then a small benchmarks/gpu_tables.py subset, each under its own time
# limit so that the script always ends and copies its logs into $OUT. Needs the fixtures carried in .fx
# (coco128, retinaface) and the pycocotools wheel in .whl (the H200 image lacks it); see docs/benchmarks/h200.md.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T_TESTS=${T_TESTS:-150}; T_TABLES=${T_TABLES:-250}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 DEPLOYZOO_CACHE=/tmp/dzcache
[ -e ../shared/fixtures ] || { mkdir -p ../shared && ln -s "$PWD/.fx" ../shared/fixtures; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc
  python3 -c "import sys,torch,torchvision,onnxruntime,timm;print(sys.version.split()[0],torch.__version__,torch.version.cuda,torchvision.__version__,onnxruntime.__version__,timm.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
timeout "$T_TESTS" python3 -m pytest -m cuda -p no:cacheprovider -q -rA tests 2>&1 | tail -60 > "$OUT/pytest.log"
echo "pytest rc=${PIPESTATUS[0]}" >> "$OUT/pytest.log"
G=/tmp/gt; end=$((SECONDS + T_TABLES))
run_tables() { left=$((end - SECONDS)); [ "$left" -gt 20 ] || return 0
  timeout "$left" python3 benchmarks/gpu_tables.py --out $G --iters 50 --warmup 10 "$@" 2>&1 | grep -v Warning >> "$OUT/tables.log"; }
run_tables --models rf_mnet,r100,mnv1 --engines torch:fp16,torch:bf16 --batches 1,32
run_tables --models volo,rf_r50 --engines torch:fp16 --batches 1,32
run_tables --models maskrcnn --engines torch:fp16 --batches 1
run_tables --models r100,rf_mnet --engines aoti:fp16 --batches 1,32   # compiles: ~100 s each on the H200
cp $G/results.jsonl $G/tables.md "$OUT/" 2>/dev/null
python3 - <<'PY' >> "$OUT/tables.log"
import json; [print(r["key"], r.get("seconds"), r.get("error","ok")) for r in map(json.loads, open("/tmp/gt/results.jsonl"))]
PY
true
