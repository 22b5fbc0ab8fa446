"""Kueue's webhook configurations (config/components/webhook/manifests.yaml in its module),
pointed at Kueue on the host: its URL on 127.0.0.1 and the certificate it serves. Only the
webhooks of what the test plane runs (pods, JobSets, TrainJobs, Kueue's own objects) are kept,
and the pod, JobSet and TrainJob ones see only objects that name a queue, so that nothing else
waits on Kueue.
Prints a kubectl List (JSON). Usage: webhooks.py MANIFEST PORT CERT"""

import base64
import json
import sys

MANIFEST, PORT, CERT = sys.argv[1:]


def documents():
    """The YAML documents of the manifest, through kubectl's own parser (no PyYAML here)."""
    import subprocess

    out = subprocess.run(
        ["kubectl", "create", "--dry-run=client", "-o", "json", "-f", MANIFEST],
        check=True, capture_output=True, text=True,
    ).stdout
    # One JSON object per document, one after another.
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(out.rstrip()):
        doc, end = decoder.raw_decode(out, at)
        docs.append(doc)
        at = end
        while at < len(out) and out[at].isspace():
            at += 1
    return docs


ca = base64.b64encode(open(CERT, "rb").read()).decode()
queued = {"matchExpressions": [{"key": "kueue.x-k8s.io/queue-name", "operator": "Exists"}]}
items = []
for doc in documents():
    hooks = []
    for hook in doc.get("webhooks") or []:
        path = hook["clientConfig"]["service"]["path"]
        if not any(kind in path for kind in ("-v1-pod", "jobset", "trainjob", "kueue-x-k8s-io")):
            continue
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{PORT}{path}", "caBundle": ca}
        if "kueue-x-k8s-io" not in path:
            hook["objectSelector"] = queued
        hooks.append(hook)
    doc["metadata"] = {"name": "kueue-" + doc["metadata"]["name"]}
    doc["webhooks"] = hooks
    items.append(doc)
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
