"""Runs N finds and M aggregates through a URI with an appName, then prints
a JSON summary with each command's round trips in µs as this client's clock
measured them. Used by tests/stats_real.rs to check mongotap's /stats."""
import json
import sys
import time

import pymongo

uri, app, db_name, n_finds, n_aggs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
client = pymongo.MongoClient(uri, appName=app, directConnection=True)
coll = client[db_name]["items"]
coll.insert_many([{"i": i, "g": i % 4} for i in range(20)])


def timed(run):
    """run()'s result and its duration in µs (rounded up: an upper bound)."""
    start = time.monotonic_ns()
    result = run()
    return result, -(-(time.monotonic_ns() - start) // 1000)


# Each result fits in one batch, so each timing is exactly one round trip.
found, find_us = 0, []
for _ in range(n_finds):
    docs, us = timed(lambda: list(coll.find({"i": {"$lt": 5}})))
    found += len(docs)
    find_us.append(us)
groups, aggregate_us = 0, []
for _ in range(n_aggs):
    docs, us = timed(lambda: list(coll.aggregate([
        {"$match": {"i": {"$gte": 0}}},
        {"$group": {"_id": "$g", "n": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
    ])))
    groups += len(docs)
    aggregate_us.append(us)
client.close()
print(json.dumps({"found": found, "groups": groups,
                  "find_us": find_us, "aggregate_us": aggregate_us}))
