"""The Unimeter benchmark suite: ``python -m bench`` (full) or ``python -m bench --quick``.

Every figure is printed next to a limit measured in the same run on the same machine (raw
fsync rate, loopback round trip, codec-only throughput, a minimal Python server), so a number
reads as "this fraction of what this machine allows", not as an absolute that depends on the
hardware. Results go to ``bench/results/*.json``; ``docs/benchmarks.md`` explains them.

Layout: ``settings`` (counts and durations of quick and full runs), ``procs`` (child processes,
stopped by PID only), ``workload`` (accounts, the plain and the realistic workload, pre-encoded
frames), ``loadgen`` (the load-generator processes), ``driver`` (starting them together and
collecting), ``rawserver`` (echo server and minimal Python ingest server), ``limits``,
``scenarios``, ``cluster`` (the single-node ingest and latency figures on a 3-node cluster),
``clientbench``, ``entries`` (log
entries built as the partition leader builds them), ``inprocess`` (apply, server-side reads,
memory), ``rangeread`` (a range cutting a period as the account grows), ``callcount`` (Python
calls per request on the node's loop), ``recovery``, ``profiling``, ``report`` and ``runner``.
"""
