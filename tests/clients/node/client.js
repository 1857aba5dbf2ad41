#!/usr/bin/env node
// The driver-matrix workload with the official Node.js driver (`mongodb`),
// printing one JSON line (see tests/drivers.rs).
//
// Usage:
//   node client.js workload URI DB APP
//       Prints {driver, results, commands}: results hold only what must not
//       depend on the path taken (ids, counts, error codes, getMore round
//       trips); commands counts every command this client's command monitor
//       saw start, to compare with mongotap's /stats.
//   node client.js compress URI COMPRESSOR APP
//       Negotiates COMPRESSOR (snappy, zlib or zstd), then ping, insertMany of
//       two documents, find.
//   node client.js failover URI DB APP
//       Replica-set failover (tests/topology.rs; the same steps as
//       tests/clients/python/failover.py): prints {event: 'ready', topology}
//       once the driver knows every server and a primary, inserts {_id: i}
//       one at a time with retryable writes until a line on stdin, then
//       prints {event: 'done', inserted, errors, max_write_ms,
//       topology_before, topology_after, primaries, count}. A topology is the
//       driver's own description: {servers: sorted addresses, primary:
//       address or null, types: {address: server type}}.
//
// The Go, Python, Java and Rust clients run the same steps with the same
// constants and must print the same results.
'use strict';

const { MongoClient, MongoServerError } = require('mongodb');
const driverVersion = require('mongodb/package.json').version;

const DOCS = 30; // enough that batchSize 4 needs several getMores
const W0_ID = 1000; // the _id of the unacknowledged insert

function connect(uri, app, options = {}) {
  return new MongoClient(uri, {
    appName: app,
    serverSelectionTimeoutMS: 10000,
    socketTimeoutMS: 60000,
    ...options,
  });
}

/** Counts commandStarted events by name, and cursors killCursors killed. */
function monitor(client) {
  const mon = { started: {}, killed: 0 };
  client.on('commandStarted', (e) => {
    mon.started[e.commandName] = (mon.started[e.commandName] || 0) + 1;
  });
  client.on('commandSucceeded', (e) => {
    if (e.commandName === 'killCursors') {
      mon.killed += (e.reply.cursorsKilled || []).length;
    }
  });
  mon.count = (name) => mon.started[name] || 0;
  return mon;
}

/** The server error code of a failed call, 0 if it succeeded. */
async function codeOf(promise) {
  try {
    await promise;
    return 0;
  } catch (err) {
    if (err instanceof MongoServerError) return err.code;
    throw err;
  }
}

const ids = (docs) => docs.map((d) => d._id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function workload(uri, dbName, app) {
  const client = connect(uri, app, { monitorCommands: true });
  const mon = monitor(client);
  await client.connect();
  const db = client.db(dbName);
  const coll = db.collection('items');
  const res = {};

  // The handshake authenticated (SCRAM-SHA-256 when the URI has credentials).
  const status = await db.command({ connectionStatus: 1 });
  res.users = status.authInfo.authenticatedUsers.map((u) => `${u.db}.${u.user}`);

  // insertMany goes out as one OP_MSG with a kind-1 "documents" sequence.
  const docs = [];
  for (let i = 0; i < DOCS; i++) {
    docs.push({ _id: i, n: i, grp: i % 3, tags: [`t${i % 4}`, 'all'] });
  }
  res.inserted = (await coll.insertMany(docs)).insertedCount;
  res.duplicate_key_code = await codeOf(coll.insertOne({ _id: 0 }));

  let before = mon.count('getMore');
  res.find_ids = ids(await coll.find({ n: { $gte: 5 } }).sort({ _id: 1 }).batchSize(4).toArray());
  res.find_getmores = mon.count('getMore') - before;

  before = mon.count('getMore');
  const pipeline = [
    { $match: { n: { $lt: 20 } } },
    { $unwind: '$tags' },
    // FerretDB v1.24.2's $unwind keeps only _id and the unwound field, so
    // the group counts documents per tag rather than summing other fields.
    { $group: { _id: '$tags', count: { $sum: 1 } } },
    { $sort: { _id: 1 } },
    { $project: { _id: 1, count: 1 } },
  ];
  res.aggregate = await coll.aggregate(pipeline, { batchSize: 2 }).toArray();
  res.aggregate_getmores = mon.count('getMore') - before;

  const upd = await coll.updateMany({ grp: 0 }, { $inc: { n: 100 }, $set: { flag: true } });
  res.update = { matched: upd.matchedCount, modified: upd.modifiedCount };
  res.deleted = (await coll.deleteMany({ grp: 1 })).deletedCount;

  // w:0 goes out with moreToCome and no reply is read. FerretDB v1.24.2
  // replies anyway, so the write uses its own one-connection client that
  // does nothing else, and stays open until the write is visible.
  const unacked = connect(uri, `${app}-w0`, { maxPoolSize: 1, writeConcern: { w: 0 } });
  await unacked.db(dbName).collection('items').insertOne({ _id: W0_ID, n: -1 });
  let w0 = 0;
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await sleep(50)) {
    w0 = await coll.countDocuments({ _id: W0_ID });
    if (w0 > 0) break;
  }
  await unacked.close();
  res.w0_count = w0;

  // Closing a cursor before it is exhausted sends killCursors.
  const cursor = coll.find({}).sort({ _id: 1 }).batchSize(2);
  res.closed_cursor_first_batch = [(await cursor.next())._id, (await cursor.next())._id];
  await cursor.close();
  res.kill_cursors = mon.count('killCursors');
  res.cursors_killed = mon.killed;

  res.unknown_command_code = await codeOf(db.command({ mongotapNoSuchCommand: 1 }));

  res.final_ids = ids(await coll.find({}).sort({ _id: 1 }).toArray());
  res.final_count = await coll.countDocuments({});
  await client.close();
  return { driver: { name: 'node', version: driverVersion }, results: res, commands: mon.started };
}

async function compress(uri, compressor, app) {
  const client = connect(uri, app, { compressors: [compressor] });
  const coll = client.db('matrix').collection('items');
  await client.db('admin').command({ ping: 1 });
  await coll.insertMany([{ _id: 1 }, { _id: 2 }]);
  const found = ids(await coll.find({}).toArray());
  await client.close();
  return { compressor, ping: true, inserted: 2, found };
}

/** The driver's topology description as {servers, primary, types}. */
function view(description) {
  const types = {};
  let primary = null;
  for (const [address, server] of description ? description.servers : []) {
    types[address] = server.type;
    if (server.type === 'RSPrimary') primary = address;
  }
  return { servers: Object.keys(types).sort(), primary, types };
}

async function failover(uri, dbName, app) {
  const client = connect(uri, app);
  let latest = null;
  client.on('topologyDescriptionChanged', (e) => {
    latest = e.newDescription;
  });
  await client.connect();
  const complete = (v) => v.primary !== null && Object.values(v.types).every((t) => t !== 'Unknown');
  const before = await (async () => {
    for (const deadline = Date.now() + 10000; Date.now() < deadline; await sleep(20)) {
      const v = view(latest);
      if (complete(v)) return v;
    }
    throw new Error(`no complete topology within 10 s: ${JSON.stringify(view(latest))}`);
  })();
  process.stdout.write(`${JSON.stringify({ event: 'ready', topology: before })}\n`);

  let stop = false;
  process.stdin.once('data', () => {
    stop = true;
  });
  process.stdin.once('end', () => {
    stop = true;
  });
  const coll = client.db(dbName).collection('items');
  let inserted = 0;
  let maxMs = 0;
  const errors = [];
  const primaries = [before.primary];
  for (let i = 0; !stop; i++) {
    const started = process.hrtime.bigint();
    try {
      await coll.insertOne({ _id: i });
      inserted++;
    } catch (err) {
      errors.push(String(err));
    }
    maxMs = Math.max(maxMs, Number(process.hrtime.bigint() - started) / 1e6);
    const primary = view(latest).primary;
    if (primary && primary !== primaries[primaries.length - 1]) primaries.push(primary);
    await sleep(10);
  }
  process.stdin.pause();
  const after = view(latest);
  const count = await coll.countDocuments({});
  await client.close();
  return {
    event: 'done',
    inserted,
    errors,
    max_write_ms: maxMs,
    topology_before: before,
    topology_after: after,
    primaries,
    count,
  };
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 4) {
    throw new Error('usage: client.js workload|compress|failover URI DB-or-COMPRESSOR APP');
  }
  const [mode, uri, arg, app] = args;
  let out;
  if (mode === 'workload') out = await workload(uri, arg, app);
  else if (mode === 'compress') out = await compress(uri, arg, app);
  else if (mode === 'failover') out = await failover(uri, arg, app);
  else throw new Error(`unknown mode ${mode}`);
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
