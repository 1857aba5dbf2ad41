"""Runs N finds and M aggregates through a URI with an appName, then prints
a JSON summary. Used by tests/stats_real.rs to check mongotap's /stats."""
import json
import sys

import pymongo

uri, app, db_name, n_finds, n_aggs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
client = pymongo.MongoClient(uri, appName=app, directConnection=True)
coll = client[db_name]["items"]
coll.insert_many([{"i": i, "g": i % 4} for i in range(20)])
found = 0
for _ in range(n_finds):
    found += len(list(coll.find({"i": {"$lt": 5}})))
groups = 0
for _ in range(n_aggs):
    groups += len(list(coll.aggregate([
        {"$match": {"i": {"$gte": 0}}},
        {"$group": {"_id": "$g", "n": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
    ])))
client.close()
print(json.dumps({"found": found, "groups": groups}))
