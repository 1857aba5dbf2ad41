#!/usr/bin/env python3
"""A small pymongo workload whose JSON summary can be compared across runs.

Usage: workload.py URI DATABASE [APP_NAME]

tests/foundation.rs runs it once straight against FerretDB and once through
mongotap and asserts the two summaries are equal, so the summary holds only
what must not depend on the path taken: documents, counts, error codes and how
many getMore/killCursors round trips the driver needed. Cursor ids, timings and
connection ids are left out on purpose. scripts/demo runs it to make traffic.
"""

import json
import sys
import time

from bson import json_util
from pymongo import MongoClient, monitoring
from pymongo.errors import DuplicateKeyError

DOCS = 30  # enough that batchSize 2 needs more than ten getMores
W0_ID = 1000


class Commands(monitoring.CommandListener):
    """Counts commands by name and keeps killCursors replies."""

    def __init__(self):
        self.counts = {}
        self.kill_replies = []

    def started(self, event):
        self.counts[event.command_name] = self.counts.get(event.command_name, 0) + 1

    def succeeded(self, event):
        if event.command_name == "killCursors":
            self.kill_replies.append(event.reply)

    def failed(self, event):
        pass


def count(listener, name):
    return listener.counts.get(name, 0)


def main():
    uri, db_name = sys.argv[1], sys.argv[2]
    app = sys.argv[3] if len(sys.argv) > 3 else "mongotap-tests-pymongo"
    listener = Commands()
    client = MongoClient(
        uri,
        appname=app,
        event_listeners=[listener],
        serverSelectionTimeoutMS=10000,
        socketTimeoutMS=30000,
    )
    coll = client[db_name]["items"]
    out = {}

    # insert_many goes out as one OP_MSG with a kind-1 "documents" sequence.
    docs = [{"_id": i, "n": i, "grp": i % 3, "name": f"doc{i}"} for i in range(DOCS)]
    out["inserted"] = len(coll.insert_many(docs).inserted_ids)

    try:
        coll.insert_one({"_id": 0})
        out["duplicate_code"] = None
    except DuplicateKeyError as exc:
        out["duplicate_code"] = exc.code

    before = count(listener, "getMore")
    out["find"] = list(coll.find({"n": {"$gte": 5}}).sort("_id", 1).batch_size(4))
    out["find_getmores"] = count(listener, "getMore") - before

    before = count(listener, "getMore")
    pipeline = [{"$match": {"n": {"$gte": 3}}}, {"$sort": {"n": -1}}, {"$project": {"n": 1, "grp": 1}}]
    out["aggregate"] = list(coll.aggregate(pipeline, batchSize=2))
    out["aggregate_getmores"] = count(listener, "getMore") - before

    grouped = [
        {"$match": {"n": {"$lt": 20}}},
        # One accumulator only: FerretDB v1.24.2 implements just $sum and
        # $count, and returns 0 for every accumulator after the first.
        {"$group": {"_id": "$grp", "total": {"$sum": "$n"}}},
        {"$sort": {"_id": 1}},
    ]
    out["group"] = list(coll.aggregate(grouped))

    res = coll.update_many({"grp": 0}, {"$set": {"flag": True}, "$inc": {"n": 100}})
    out["update"] = {"matched": res.matched_count, "modified": res.modified_count}
    out["delete"] = coll.delete_many({"grp": 1}).deleted_count

    # pymongo sends w:0 with moreToCome set and reads no reply, so poll until
    # the write is visible. It uses its own client because FerretDB v1.24.2
    # ignores moreToCome and replies anyway: on a shared connection the next
    # command would read that stray reply and fail ("Got response id ...").
    # That client stays open until the write is seen, so closing it cannot
    # race the insert.
    unacked = MongoClient(uri, appname=f"{app}-w0", w=0, maxPoolSize=1)
    unacked[db_name]["items"].insert_one({"_id": W0_ID, "n": -1})
    deadline = time.monotonic() + 5
    while (w0 := coll.count_documents({"_id": W0_ID})) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    unacked.close()
    out["w0_count"] = w0

    # Closing a cursor before it is exhausted makes the driver send killCursors.
    cursor = coll.find({}).sort("_id", 1).batch_size(2)
    out["partial"] = [next(cursor), next(cursor)]
    cursor.close()
    out["kill_cursors"] = count(listener, "killCursors")
    out["cursors_killed"] = sum(len(r.get("cursorsKilled", [])) for r in listener.kill_replies)

    out["final"] = list(coll.find({}).sort("_id", 1))
    out["final_count"] = coll.count_documents({})
    client.close()

    # Relaxed extended JSON keeps ints as ints, so Rust can compare values.
    print(json_util.dumps(out, json_options=json_util.RELAXED_JSON_OPTIONS))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # one clear line for the Rust test's panic message
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=sys.stderr)
        raise
