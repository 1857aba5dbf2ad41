"""Writes through a replica-set failover with pymongo (tests/topology.rs).

Usage: failover.py URI DB APP

URI names a replica set (replicaSet=rs0). Prints JSON lines:
- {"event": "ready", "topology": T} once the driver knows every server and
  a primary;
- after a line on stdin (or EOF), {"event": "done", ...} with:
  inserted (acknowledged inserts), errors (every write error, as text),
  max_write_ms (the slowest insert, retries included), topology_before,
  topology_after (T when stopping), primaries (each primary the driver saw,
  in order) and count (documents read back through the driver).

T is the driver's own topology description: {"servers": [address, ...]
sorted, "primary": address or null, "types": {address: server type}}.
Inserts use retryable writes (the default), one document {_id: i} at a
time, so a write applied twice would fail with a duplicate key.
"""

import json
import sys
import threading
import time

from pymongo import MongoClient
from pymongo.errors import PyMongoError


def topology(client):
    servers = client.topology_description.server_descriptions()
    types = {f"{h}:{p}": sd.server_type_name for (h, p), sd in servers.items()}
    primary = next((a for a, t in types.items() if t == "RSPrimary"), None)
    return {"servers": sorted(types), "primary": primary, "types": types}


def main():
    uri, db_name, app = sys.argv[1:4]
    client = MongoClient(uri, appName=app, serverSelectionTimeoutMS=10000)
    deadline = time.monotonic() + 10
    while True:
        view = topology(client)
        known = all(t != "Unknown" for t in view["types"].values())
        if view["primary"] and known:
            break
        if time.monotonic() > deadline:
            sys.exit(f"failover.py: no complete topology within 10 s: {view}")
        time.sleep(0.02)
    before = view
    print(json.dumps({"event": "ready", "topology": before}), flush=True)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()

    coll = client[db_name]["items"]
    inserted, errors, max_ms, i = 0, [], 0.0, 0
    primaries = [before["primary"]]
    while not stop.is_set():
        started = time.monotonic()
        try:
            coll.insert_one({"_id": i})
            inserted += 1
        except PyMongoError as e:
            errors.append(f"{type(e).__name__}: {e}")
        max_ms = max(max_ms, (time.monotonic() - started) * 1000)
        i += 1
        primary = topology(client)["primary"]
        if primary and primary != primaries[-1]:
            primaries.append(primary)
        time.sleep(0.01)

    after = topology(client)
    count = coll.count_documents({})
    client.close()
    print(json.dumps({
        "event": "done",
        "inserted": inserted,
        "errors": errors,
        "max_write_ms": max_ms,
        "topology_before": before,
        "topology_after": after,
        "primaries": primaries,
        "count": count,
    }), flush=True)


if __name__ == "__main__":
    main()
