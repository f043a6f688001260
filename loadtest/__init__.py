"""Load testing and the tail-latency benchmark (installed as ``parm.loadtest``).

- ``faults``: real faults on model-instance processes (pause, kill, CPU quota, CPU hog), always undone;
- ``locustfile`` / ``locustrun``: Locust users (HTTP and gRPC) for any Triton model, and ``parm loadtest``;
- ``openloop``: the open-loop (Poisson) load generator on tritonclient's asyncio gRPC client, with hedging;
- ``scenarios``: seeded fault schedules and the runner that applies them during a run;
- ``benchrepo``: the benchmark's heavier F, its parity model(s) and the baselines' models;
- ``bench`` / ``report``: ``parm bench``, its cells, statistics, target checks, tables and plots;
- ``cli``: the ``bench`` and ``loadtest`` subcommands.
"""
