"""Reading Triton's Prometheus endpoint: the text format parsed into samples, and sums over label subsets.

The soak run and the metrics tests read the coded endpoint's own counters (``parm_*``) to cross-check what the
clients saw: every request counted once, every answer counted once.
"""

from __future__ import annotations

import re
import urllib.request

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_samples(text: str) -> Samples:
    """Prometheus' text exposition format -> {(name, labels): value}; comments and malformed lines are skipped."""
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """GET ``url`` (e.g. ``TritonServer.metrics_url``) and parse it."""
    with _NO_PROXY.open(url, timeout=timeout) as response:
        return parse_samples(response.read().decode())


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(value for (sample, got), value in samples.items() if sample == name and wanted <= got)
