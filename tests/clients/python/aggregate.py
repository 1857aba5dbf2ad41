"""Runs one aggregate with pymongo and prints the outcome as JSON.

Usage: aggregate.py URI DB APP PIPELINE_JSON

Runs PIPELINE_JSON (an extended JSON array) on DB.orders and prints
{"ok": true, "documents": N} or, when the server refuses it,
{"ok": false, "code": C, "code_name": NAME} (tests/diagnose.rs).
"""

import json
import sys

import pymongo
from bson import json_util


def main():
    uri, db, app, pipeline = sys.argv[1:5]
    client = pymongo.MongoClient(uri, appname=app, serverSelectionTimeoutMS=10000)
    try:
        docs = list(client[db].orders.aggregate(json_util.loads(pipeline)))
        out = {"ok": True, "documents": len(docs)}
    except pymongo.errors.OperationFailure as e:
        out = {"ok": False, "code": e.code, "code_name": (e.details or {}).get("codeName")}
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
