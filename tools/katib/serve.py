"""Runs one of Katib's own Python services (its main.py, unchanged) on an address of its own.

Usage: serve.py hyperopt|medianstop ADDRESS, with Katib's module root on PYTHONPATH.

In a cluster each suggestion pod has its own IP and Katib's services listen on 0.0.0.0; here
they are local processes, one per experiment as in Katib, so each binds the loopback address
that the experiment's service name resolves to (tools/katib/suggestion.sh). Nothing else of
the service is changed: this loads Katib's main.py as a module and calls its serve().
"""

import importlib.util
import os
import sys

MAINS = {
    "hyperopt": ("cmd/suggestion/hyperopt/v1beta1/main.py", 6789),
    "medianstop": ("cmd/earlystopping/medianstop/v1beta1/main.py", 6788),
}


def main():
    kind, address = sys.argv[1], sys.argv[2]
    path, port = MAINS[kind]
    root = next(p for p in sys.path if os.path.exists(os.path.join(p, path)))
    spec = importlib.util.spec_from_file_location(f"katib_{kind}_main", os.path.join(root, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DEFAULT_PORT = f"{address}:{port}"
    module.serve()


if __name__ == "__main__":
    main()
