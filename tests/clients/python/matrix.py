#!/usr/bin/env python3
"""The driver-matrix workload with pymongo (see tests/drivers.rs).

Usage:
  matrix.py workload URI DB APP
      Prints {"driver", "results", "commands"} as one JSON line. `results`
      holds only what must not depend on the path taken (ids, counts, error
      codes, getMore round trips); `commands` counts every command this
      client's command monitor saw start, to compare with mongotap's /stats.
  matrix.py compress URI COMPRESSOR APP
      Negotiates COMPRESSOR (snappy, zlib or zstd), then ping, insert_many of
      two documents, find.

The Go, Node, Java and Rust clients in tests/clients run the same steps with
the same constants and must print the same `results`.
"""

import json
import sys
import time

import pymongo
from pymongo import MongoClient, monitoring
from pymongo.errors import DuplicateKeyError, OperationFailure

DOCS = 30  # enough that batchSize 4 needs several getMores
W0_ID = 1000  # the _id of the unacknowledged insert


class Commands(monitoring.CommandListener):
    """Counts commands by name and the cursors killCursors replies name."""

    def __init__(self):
        self.started_by_name = {}
        self.killed = 0

    def started(self, event):
        name = event.command_name
        self.started_by_name[name] = self.started_by_name.get(name, 0) + 1

    def succeeded(self, event):
        if event.command_name == "killCursors":
            self.killed += len(event.reply.get("cursorsKilled", []))

    def failed(self, event):
        pass

    def count(self, name):
        return self.started_by_name.get(name, 0)


def connect(uri, app, listener=None, **kwargs):
    return MongoClient(
        uri,
        appname=app,
        event_listeners=[listener] if listener else [],
        serverSelectionTimeoutMS=10000,
        socketTimeoutMS=60000,
        **kwargs,
    )


def ids(cursor):
    return [doc["_id"] for doc in cursor]


def workload(uri, db_name, app):
    mon = Commands()
    client = connect(uri, app, mon)
    db = client[db_name]
    coll = db["items"]
    res = {}

    # The handshake authenticated (SCRAM-SHA-256 when the URI has credentials).
    status = db.command("connectionStatus")
    res["users"] = [f"{u['db']}.{u['user']}" for u in status["authInfo"]["authenticatedUsers"]]

    # insert_many goes out as one OP_MSG with a kind-1 "documents" sequence.
    docs = [{"_id": i, "n": i, "grp": i % 3, "tags": [f"t{i % 4}", "all"]} for i in range(DOCS)]
    res["inserted"] = len(coll.insert_many(docs).inserted_ids)

    try:
        coll.insert_one({"_id": 0})
        res["duplicate_key_code"] = 0
    except DuplicateKeyError as exc:
        res["duplicate_key_code"] = exc.code

    before = mon.count("getMore")
    res["find_ids"] = ids(coll.find({"n": {"$gte": 5}}).sort("_id", 1).batch_size(4))
    res["find_getmores"] = mon.count("getMore") - before

    before = mon.count("getMore")
    pipeline = [
        {"$match": {"n": {"$lt": 20}}},
        {"$unwind": "$tags"},
        # FerretDB v1.24.2's $unwind keeps only _id and the unwound field, so
        # the group counts documents per tag rather than summing other fields.
        {"$group": {"_id": "$tags", "count": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
        {"$project": {"_id": 1, "count": 1}},
    ]
    res["aggregate"] = list(coll.aggregate(pipeline, batchSize=2))
    res["aggregate_getmores"] = mon.count("getMore") - before

    upd = coll.update_many({"grp": 0}, {"$inc": {"n": 100}, "$set": {"flag": True}})
    res["update"] = {"matched": upd.matched_count, "modified": upd.modified_count}
    res["deleted"] = coll.delete_many({"grp": 1}).deleted_count

    # w:0 goes out with moreToCome and no reply is read. FerretDB v1.24.2
    # replies anyway, so the write uses its own one-connection client that
    # does nothing else, and stays open until the write is visible.
    unacked = connect(uri, app + "-w0", w=0, maxPoolSize=1)
    unacked[db_name]["items"].insert_one({"_id": W0_ID, "n": -1})
    deadline = time.monotonic() + 5
    while (w0 := coll.count_documents({"_id": W0_ID})) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    unacked.close()
    res["w0_count"] = w0

    # Closing a cursor before it is exhausted sends killCursors.
    cursor = coll.find({}).sort("_id", 1).batch_size(2)
    res["closed_cursor_first_batch"] = [next(cursor)["_id"], next(cursor)["_id"]]
    cursor.close()
    res["kill_cursors"] = mon.count("killCursors")
    res["cursors_killed"] = mon.killed

    try:
        db.command("mongotapNoSuchCommand")
        res["unknown_command_code"] = 0
    except OperationFailure as exc:
        res["unknown_command_code"] = exc.code

    res["final_ids"] = ids(coll.find({}).sort("_id", 1))
    res["final_count"] = coll.count_documents({})
    client.close()
    return {
        "driver": {"name": "python", "version": pymongo.version},
        "results": res,
        "commands": mon.started_by_name,
    }


def compress(uri, compressor, app):
    client = connect(uri, app, compressors=compressor)
    coll = client["matrix"]["items"]
    client.admin.command("ping")
    coll.insert_many([{"_id": 1}, {"_id": 2}])
    found = ids(coll.find({}))
    client.close()
    return {"compressor": compressor, "ping": True, "inserted": 2, "found": found}


def main():
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} workload|compress URI DB-or-COMPRESSOR APP")
    mode, uri, arg, app = sys.argv[1:]
    if mode == "workload":
        out = workload(uri, arg, app)
    elif mode == "compress":
        out = compress(uri, arg, app)
    else:
        sys.exit(f"unknown mode {mode!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # one clear line for the Rust test's panic message
        print(f"matrix.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
