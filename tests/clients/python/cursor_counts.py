"""Opens a find and an aggregate cursor with small batches, iterates part of
each, and reads mongotap's /cursors while both are still open. Prints, as
JSON, what the driver itself received per cursor (counted from pymongo's
command monitoring: the documents in each firstBatch/nextBatch reply) next
to the /cursors rows, with bounds on each cursor's age and idle time from
this process's clock. Used by tests/figures.rs.

Arguments: URI ADMIN_URL DB"""
import json
import math
import sys
import time
import urllib.request

import pymongo
from pymongo import monitoring

uri, admin_url, db_name = sys.argv[1], sys.argv[2], sys.argv[3]


class Received(monitoring.CommandListener):
    """Per cursor id: what the driver's replies carried, and when the
    commands that opened it and last fed it were sent and answered."""

    def __init__(self):
        self.sent = {}
        self.cursors = {}

    def started(self, event):
        self.sent[event.request_id] = time.monotonic()

    def succeeded(self, event):
        done = time.monotonic()
        sent = self.sent.pop(event.request_id, done)
        if event.command_name not in ("find", "aggregate", "getMore"):
            return
        cursor = event.reply.get("cursor", {})
        batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
        c = self.cursors.setdefault(cursor.get("id"), {
            "command": event.command_name,
            "documents": 0,
            "batches": 0,
            "get_mores": 0,
            "opened": (sent, done),
        })
        c["documents"] += len(batch)
        c["batches"] += 1
        c["get_mores"] += event.command_name == "getMore"
        c["last"] = (sent, done)

    def failed(self, event):
        self.sent.pop(event.request_id, None)


listener = Received()
client = pymongo.MongoClient(uri, appName="cursors", directConnection=True,
                             event_listeners=[listener])
coll = client[db_name]["items"]
coll.insert_many([{"i": i, "g": i % 3} for i in range(23)])

found = coll.find({}).batch_size(5)
iterated_find = [next(found) for _ in range(12)]
agg = coll.aggregate([{"$match": {"i": {"$gte": 0}}}], batchSize=4)
iterated_agg = [next(agg) for _ in range(6)]

# Some idle time, so the idle and age bounds are not all zero.
time.sleep(0.3)
before = time.monotonic()
rows = json.loads(urllib.request.urlopen(admin_url + "/cursors", timeout=10).read())
after = time.monotonic()


def ms(seconds):
    return math.floor(seconds * 1000)


driver = []
for cursor_id, c in listener.cursors.items():
    if cursor_id == 0:
        continue
    driver.append({
        "cursor_id": cursor_id,
        "command": c["command"],
        "documents": c["documents"],
        "batches": c["batches"],
        "get_mores": c["get_mores"],
        # mongotap opens its clock when the opening reply passes through
        # (after the driver sent it, before the driver got the reply) and
        # reads it during the GET.
        "age_ms": [ms(before - c["opened"][1]), ms(after - c["opened"][0])],
        "idle_ms": [ms(before - c["last"][1]), ms(after - c["last"][0])],
    })
client.close()
print(json.dumps({
    "driver": driver,
    "cursors": rows,
    "iterated": {"find": len(iterated_find), "aggregate": len(iterated_agg)},
}))
