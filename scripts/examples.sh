#!/usr/bin/env bash
# Copies python/nasop_trial.py into the ConfigMaps of the examples whose trainers use it
# (the key nasop_trial.py, the last of its data), so that each example applies on its own;
# tests/install/examples.rs fails when a copy drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
for example in examples/k8s/custom-trainer.yaml examples/k8s/trainjob.yaml; do
python3 - "$example" python/nasop_trial.py <<'PY'
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
done
