"""Parses /metrics from one or more mongotap instances with the official
Prometheus client's parser and prints, as JSON, the summed
mongotap_command_duration_seconds histogram per command (count, sum and
cumulative buckets), after checking each histogram is well formed."""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

totals = {}
for url in sys.argv[1:]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name != "mongotap_command_duration_seconds":
            continue
        assert family.type == "histogram", family.type
        series = {}
        for s in family.samples:
            labels = dict(s.labels)
            le = labels.pop("le", None)
            key = tuple(sorted(labels.items()))
            entry = series.setdefault(key, {"buckets": {}, "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                entry["buckets"][le] = s.value
            elif s.name.endswith("_count"):
                entry["count"] = s.value
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
        for key, e in series.items():
            buckets = sorted(e["buckets"].items(), key=lambda kv: float(kv[0]))
            values = [v for _, v in buckets]
            assert values == sorted(values), f"buckets not cumulative: {buckets}"
            assert e["buckets"]["+Inf"] == e["count"], (key, e)
            command = dict(key)["command"]
            t = totals.setdefault(command, {"count": 0, "sum": 0.0, "buckets": {}})
            t["count"] += e["count"]
            t["sum"] += e["sum"]
            for le, v in buckets:
                t["buckets"][le] = t["buckets"].get(le, 0) + v
print(json.dumps(totals))
