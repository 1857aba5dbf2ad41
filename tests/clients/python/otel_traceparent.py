"""Runs commands that carry the app's trace context in their `comment`:
an aggregate on COLLECTION whose comment is a W3C traceparent string, then
an aggregate on COLLECTION_other (batch size 2, so getMores follow) whose
comment is a document with a `traceparent` field (FerretDB takes a
document comment on aggregate, not on find). Prints, as JSON, the cursor
id the driver itself saw for the second one (pymongo's command
monitoring), for tests/otel.rs.

Arguments: URI DB COLLECTION TRACEPARENT_STRING TRACEPARENT_IN_DOCUMENT"""
import json
import sys

import pymongo
from pymongo import monitoring

uri, db_name, coll_name, tp_string, tp_doc = sys.argv[1:6]


class Cursors(monitoring.CommandListener):
    def __init__(self):
        self.ids = {}

    def started(self, event):
        pass

    def succeeded(self, event):
        cursor = event.reply.get("cursor")
        if isinstance(cursor, dict) and event.command_name in ("aggregate", "getMore"):
            self.ids.setdefault(event.command_name, []).append(cursor.get("id"))

    def failed(self, event):
        pass


seen = Cursors()
client = pymongo.MongoClient(uri, appName="otel-python", event_listeners=[seen])
coll = client[db_name][coll_name]
other = client[db_name][coll_name + "_other"]
for c in (coll, other):
    c.insert_many([{"i": i, "g": i % 3} for i in range(10)])
list(coll.aggregate([{"$match": {"i": {"$gte": 0}}}, {"$group": {"_id": "$g"}}],
                    comment=tp_string))
seen.ids.clear()
found = list(other.aggregate([{"$match": {"i": {"$gte": 0}}}], batchSize=2,
                             comment={"traceparent": tp_doc}))
print(json.dumps({
    "found": len(found),
    "cursor_id": seen.ids.get("aggregate", [None])[0],
}))
