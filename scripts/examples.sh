#!/usr/bin/env bash
# Copies python/nasop_trial.py into examples/k8s/custom-trainer.yaml's ConfigMap (the key
# nasop_trial.py, the last of its data), so that the example applies on its own;
# tests/install/examples.rs fails when the copy drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - examples/k8s/custom-trainer.yaml python/nasop_trial.py <<'PY'
import sys
example, module = sys.argv[1:]
text = open(example).read()
key = "  nasop_trial.py: |\n"
start = text.index(key) + len(key)
end = text.index("\n---\n", start - 1) + 1
body = "".join("    " + line if line.strip() else "\n" for line in open(module).read().splitlines(True))
new = text[:start] + body + text[end:]
if new != text:
    open(example, "w").write(new)
    print(f"updated {example}")
PY
