"""Katib's push metrics path for the benchmark's simulated trainer.

Reads lines `TRIAL METRIC=VALUE [METRIC=VALUE ...]` on stdin and reports each to the DB
manager exactly as the Katib SDK's report_metrics() does in a trial container (one
ReportObservationLog call, an RFC 3339 timestamp, values as strings), then prints
`ok TRIAL` (or `error TRIAL MESSAGE`). Calls run on a thread pool, so a slow reply does not
hold the others. Usage: report.py DB_MANAGER_ADDRESS, with Katib's module root on PYTHONPATH.
"""

import sys
import threading
from concurrent import futures
from datetime import datetime, timezone

import grpc
from pkg.apis.manager.v1beta1.python import api_pb2, api_pb2_grpc

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"  # the SDK's constants.RFC3339_FORMAT


def main():
    client = api_pb2_grpc.DBManagerStub(grpc.insecure_channel(sys.argv[1]))
    lock = threading.Lock()

    def say(line):
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def report(trial, metrics):
        try:
            timestamp = datetime.now(timezone.utc).strftime(RFC3339)
            client.ReportObservationLog(
                request=api_pb2.ReportObservationLogRequest(
                    trial_name=trial,
                    observation_log=api_pb2.ObservationLog(
                        metric_logs=[
                            api_pb2.MetricLog(
                                time_stamp=timestamp,
                                metric=api_pb2.Metric(name=name, value=str(value)),
                            )
                            for name, value in metrics
                        ]
                    ),
                ),
                timeout=60,
            )
            say(f"ok {trial}")
        except Exception as e:  # the harness counts and shows it
            say(f"error {trial} {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    with futures.ThreadPoolExecutor(max_workers=16) as pool:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            metrics = [tuple(w.split("=", 1)) for w in words[1:]]
            pool.submit(report, words[0], metrics)


if __name__ == "__main__":
    main()
