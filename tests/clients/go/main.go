// mongotap-go-client runs the driver-matrix workload with the official Go
// driver (go.mongodb.org/mongo-driver/v2) and prints one JSON line.
//
// Usage:
//
//	mongotap-go-client workload URI DB APP
//	    The shared workload (see tests/drivers.rs). Prints
//	    {"driver":..., "results":{...}, "commands":{name: count}}: results hold
//	    only what must not depend on the path taken (ids, counts, error codes,
//	    getMore round trips); commands counts every command this client's
//	    command monitor saw start, to compare with mongotap's /stats.
//	mongotap-go-client compress URI COMPRESSOR APP
//	    Negotiates COMPRESSOR (snappy, zlib or zstd), then ping, insert_many
//	    of two documents, find.
//	mongotap-go-client monitor URI DB APP
//	    The seed scenario: prints every command-monitoring event as a JSON line
//	    ({"event":"started"|"succeeded"|"failed","command","request_id"}),
//	    prints {"event":"ready"} once its data is in, waits for a line on
//	    stdin, then runs one aggregate and prints its result.
//	mongotap-go-client failover URI DB APP
//	    Replica-set failover (tests/topology.rs; the same steps as
//	    tests/clients/python/failover.py): prints {"event":"ready",
//	    "topology":T} once the driver knows every server and a primary,
//	    inserts {_id: i} one at a time with retryable writes until a line on
//	    stdin, then prints {"event":"done","inserted","errors","max_write_ms",
//	    "topology_before","topology_after","primaries","count"}. T is the
//	    driver's own topology description: {"servers": sorted addresses,
//	    "primary": address or null, "types": {address: server kind}}.
//	mongotap-go-client aggregate URI DB APP
//	    Reads a pipeline (extended JSON array) from stdin, runs it as an
//	    aggregate on DB.orders and prints {"ok":true,"documents":N} or, when
//	    the server refuses it, {"ok":false,"code":C,"code_name":NAME}
//	    (tests/diagnose.rs).
//
// Anything that goes wrong ends the program with a non-zero status and one
// line on stderr.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.mongodb.org/mongo-driver/v2/version"
)

// The workload's constants; every client in tests/clients uses the same ones.
const (
	docs = 30   // enough that batchSize 4 needs several getMores
	w0ID = 1000 // the _id of the unacknowledged insert
)

// commands counts command-monitoring events by command name.
type commands struct {
	mu      sync.Mutex
	started map[string]int
	killed  int // sum of cursorsKilled lengths in killCursors replies
}

func (c *commands) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started[name]
}

func (c *commands) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			c.mu.Lock()
			c.started[e.CommandName]++
			c.mu.Unlock()
		},
		Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
			if e.CommandName != "killCursors" {
				return
			}
			killed, _ := e.Reply.Lookup("cursorsKilled").ArrayOK()
			values, _ := killed.Values()
			c.mu.Lock()
			c.killed += len(values)
			c.mu.Unlock()
		},
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mongotap-go-client: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func printJSON(v any) {
	out, err := json.Marshal(v)
	check(err, "encode JSON")
	fmt.Println(string(out))
}

func connect(uri, app string, monitor *event.CommandMonitor) *mongo.Client {
	opts := options.Client().ApplyURI(uri).SetAppName(app).
		SetServerSelectionTimeout(10 * time.Second)
	if monitor != nil {
		opts.SetMonitor(monitor)
	}
	client, err := mongo.Connect(opts)
	check(err, "connect")
	return client
}

// codeOf returns the server error code carried by err, or 0.
func codeOf(err error) int {
	var we mongo.WriteException
	if errors.As(err, &we) && len(we.WriteErrors) > 0 {
		return we.WriteErrors[0].Code
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return int(ce.Code)
	}
	return 0
}

func ids(ctx context.Context, cur *mongo.Cursor) []int {
	var out []int
	for cur.Next(ctx) {
		out = append(out, int(cur.Current.Lookup("_id").AsInt64()))
	}
	check(cur.Err(), "cursor")
	check(cur.Close(ctx), "close cursor")
	return out
}

type group struct {
	ID    string `bson:"_id" json:"_id"`
	Count int64  `bson:"count" json:"count"`
}

func workload(uri, dbName, app string) {
	ctx := context.Background()
	mon := &commands{started: map[string]int{}}
	client := connect(uri, app, mon.monitor())
	db := client.Database(dbName)
	coll := db.Collection("items")
	res := map[string]any{}

	// The handshake authenticated (SCRAM-SHA-256 when the URI has credentials).
	var status connectionStatus
	check(db.RunCommand(ctx, bson.D{{Key: "connectionStatus", Value: 1}}).Decode(&status), "connectionStatus")
	users := []string{}
	for _, u := range status.AuthInfo.AuthenticatedUsers {
		users = append(users, u.DB+"."+u.User)
	}
	res["users"] = users

	// insert_many goes out as one OP_MSG with a kind-1 "documents" sequence.
	batch := make([]any, 0, docs)
	for i := 0; i < docs; i++ {
		batch = append(batch, bson.D{
			{Key: "_id", Value: i}, {Key: "n", Value: i}, {Key: "grp", Value: i % 3},
			{Key: "tags", Value: bson.A{fmt.Sprintf("t%d", i%4), "all"}},
		})
	}
	inserted, err := coll.InsertMany(ctx, batch)
	check(err, "insert_many")
	res["inserted"] = len(inserted.InsertedIDs)

	_, err = coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 0}})
	res["duplicate_key_code"] = codeOf(err)

	before := mon.count("getMore")
	cur, err := coll.Find(ctx, bson.D{{Key: "n", Value: bson.D{{Key: "$gte", Value: 5}}}},
		options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(4))
	check(err, "find")
	res["find_ids"] = ids(ctx, cur)
	res["find_getmores"] = mon.count("getMore") - before

	before = mon.count("getMore")
	pipeline := mongo.Pipeline{
		{{Key: "$match", Value: bson.D{{Key: "n", Value: bson.D{{Key: "$lt", Value: 20}}}}}},
		{{Key: "$unwind", Value: "$tags"}},
		// FerretDB v1.24.2's $unwind keeps only _id and the unwound field, so
		// the group counts documents per tag rather than summing other fields.
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$tags"}, {Key: "count", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		{{Key: "$sort", Value: bson.D{{Key: "_id", Value: 1}}}},
		{{Key: "$project", Value: bson.D{{Key: "_id", Value: 1}, {Key: "count", Value: 1}}}},
	}
	cur, err = coll.Aggregate(ctx, pipeline, options.Aggregate().SetBatchSize(2))
	check(err, "aggregate")
	groups := []group{}
	check(cur.All(ctx, &groups), "aggregate cursor")
	res["aggregate"] = groups
	res["aggregate_getmores"] = mon.count("getMore") - before

	upd, err := coll.UpdateMany(ctx, bson.D{{Key: "grp", Value: 0}},
		bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 100}}}, {Key: "$set", Value: bson.D{{Key: "flag", Value: true}}}})
	check(err, "update_many")
	res["update"] = map[string]int64{"matched": upd.MatchedCount, "modified": upd.ModifiedCount}
	del, err := coll.DeleteMany(ctx, bson.D{{Key: "grp", Value: 1}})
	check(err, "delete_many")
	res["deleted"] = del.DeletedCount

	// w:0 goes out with moreToCome and no reply is read. FerretDB v1.24.2
	// replies anyway, so the write uses its own one-connection client that
	// does nothing else, and stays open until the write is visible.
	unacked := connect(uri, app+"-w0", nil)
	_, err = unacked.Database(dbName).Collection("items",
		options.Collection().SetWriteConcern(writeconcern.Unacknowledged())).
		InsertOne(ctx, bson.D{{Key: "_id", Value: w0ID}, {Key: "n", Value: -1}})
	check(err, "w:0 insert")
	var w0 int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		w0, err = coll.CountDocuments(ctx, bson.D{{Key: "_id", Value: w0ID}})
		check(err, "count w:0")
		if w0 > 0 {
			break
		}
	}
	_ = unacked.Disconnect(ctx)
	res["w0_count"] = w0

	// Closing a cursor before it is exhausted sends killCursors.
	cur, err = coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetBatchSize(2))
	check(err, "find to close")
	var first []int
	for i := 0; i < 2 && cur.Next(ctx); i++ {
		first = append(first, int(cur.Current.Lookup("_id").AsInt64()))
	}
	check(cur.Close(ctx), "close cursor")
	res["closed_cursor_first_batch"] = first
	res["kill_cursors"] = mon.count("killCursors")
	mon.mu.Lock()
	res["cursors_killed"] = mon.killed
	mon.mu.Unlock()

	err = db.RunCommand(ctx, bson.D{{Key: "mongotapNoSuchCommand", Value: 1}}).Err()
	res["unknown_command_code"] = codeOf(err)

	cur, err = coll.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	check(err, "final find")
	res["final_ids"] = ids(ctx, cur)
	final, err := coll.CountDocuments(ctx, bson.D{})
	check(err, "final count")
	res["final_count"] = final

	check(client.Disconnect(ctx), "disconnect")
	mon.mu.Lock()
	defer mon.mu.Unlock()
	printJSON(map[string]any{"driver": driverInfo(), "results": res, "commands": mon.started})
}

type connectionStatus struct {
	AuthInfo struct {
		AuthenticatedUsers []struct {
			User string `bson:"user"`
			DB   string `bson:"db"`
		} `bson:"authenticatedUsers"`
	} `bson:"authInfo"`
}

func driverInfo() map[string]string {
	return map[string]string{"name": "go", "version": version.Driver}
}

// compress negotiates one compressor and runs a few commands with it.
func compress(uri, compressor, app string) {
	ctx := context.Background()
	sep := "?"
	if strings.Contains(uri, "?") {
		sep = "&"
	}
	client := connect(uri+sep+"compressors="+compressor, app, nil)
	coll := client.Database("matrix").Collection("items")
	check(client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err(), "ping")
	_, err := coll.InsertMany(ctx, []any{bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}})
	check(err, "insert")
	cur, err := coll.Find(ctx, bson.D{})
	check(err, "find")
	found := ids(ctx, cur)
	check(client.Disconnect(ctx), "disconnect")
	printJSON(map[string]any{"compressor": compressor, "ping": true, "inserted": 2, "found": found})
}

// monitor is the seed scenario: command monitoring as JSON lines, and an
// aggregate that waits for the test to stop the server first.
func monitor(uri, dbName, app string) {
	ctx := context.Background()
	var mu sync.Mutex // keeps lines whole when events arrive concurrently
	emit := func(v map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		printJSON(v)
	}
	mon := &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			emit(map[string]any{"event": "started", "command": e.CommandName, "request_id": e.RequestID, "connection_id": e.ConnectionID})
		},
		Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
			emit(map[string]any{"event": "succeeded", "command": e.CommandName, "request_id": e.RequestID, "duration_ms": e.Duration.Milliseconds()})
		},
		Failed: func(_ context.Context, e *event.CommandFailedEvent) {
			emit(map[string]any{"event": "failed", "command": e.CommandName, "request_id": e.RequestID, "failure": e.Failure.Error()})
		},
	}
	client := connect(uri, app, mon)
	coll := client.Database(dbName).Collection("orders")
	batch := make([]any, 0, 50)
	for i := 0; i < 50; i++ {
		batch = append(batch, bson.D{{Key: "i", Value: i}, {Key: "g", Value: i % 5}, {Key: "tags", Value: bson.A{"a", "b"}}})
	}
	_, err := coll.InsertMany(ctx, batch)
	check(err, "insert_many")
	emit(map[string]any{"event": "ready"})

	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("waiting for the go-ahead on stdin: %v", err)
	}
	pipeline := mongo.Pipeline{
		{{Key: "$match", Value: bson.D{{Key: "i", Value: bson.D{{Key: "$gte", Value: 0}}}}}},
		{{Key: "$unwind", Value: "$tags"}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$tags"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		{{Key: "$sort", Value: bson.D{{Key: "_id", Value: 1}}}},
	}
	cur, err := coll.Aggregate(ctx, pipeline)
	check(err, "aggregate")
	var out []bson.M
	check(cur.All(ctx, &out), "aggregate cursor")
	emit(map[string]any{"event": "result", "groups": len(out)})
	check(client.Disconnect(ctx), "disconnect")
}

// topologyView is the driver's latest topology description.
type topologyView struct {
	mu   sync.Mutex
	desc event.TopologyDescription
}

func (t *topologyView) snapshot() map[string]any {
	t.mu.Lock()
	defer t.mu.Unlock()
	servers := []string{}
	types := map[string]string{}
	var primary any
	for _, s := range t.desc.Servers {
		addr := s.Addr.String()
		servers = append(servers, addr)
		types[addr] = s.Kind
		if s.Kind == "RSPrimary" {
			primary = addr
		}
	}
	sort.Strings(servers)
	return map[string]any{"servers": servers, "primary": primary, "types": types}
}

// complete reports whether every server's kind is known and one is primary.
func complete(view map[string]any) bool {
	if view["primary"] == nil {
		return false
	}
	for _, kind := range view["types"].(map[string]string) {
		if kind == "Unknown" {
			return false
		}
	}
	return true
}

// failover writes through a step-down the test makes meanwhile.
func failover(uri, dbName, app string) {
	ctx := context.Background()
	view := &topologyView{}
	opts := options.Client().ApplyURI(uri).SetAppName(app).
		SetServerSelectionTimeout(10 * time.Second).
		SetServerMonitor(&event.ServerMonitor{
			TopologyDescriptionChanged: func(e *event.TopologyDescriptionChangedEvent) {
				view.mu.Lock()
				view.desc = e.NewDescription
				view.mu.Unlock()
			},
		})
	client, err := mongo.Connect(opts)
	check(err, "connect")
	deadline := time.Now().Add(10 * time.Second)
	before := view.snapshot()
	for !complete(before) {
		if time.Now().After(deadline) {
			fail("no complete topology within 10 s: %v", before)
		}
		time.Sleep(20 * time.Millisecond)
		before = view.snapshot()
	}
	printJSON(map[string]any{"event": "ready", "topology": before})

	stop := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(stop)
	}()
	coll := client.Database(dbName).Collection("items")
	inserted, errs, maxMS := 0, []string{}, 0.0
	primaries := []any{before["primary"]}
	for i := 0; ; i++ {
		select {
		case <-stop:
		default:
			started := time.Now()
			if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: i}}); err != nil {
				errs = append(errs, err.Error())
			} else {
				inserted++
			}
			if ms := float64(time.Since(started).Microseconds()) / 1000; ms > maxMS {
				maxMS = ms
			}
			if p := view.snapshot()["primary"]; p != nil && p != primaries[len(primaries)-1] {
				primaries = append(primaries, p)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		break
	}
	after := view.snapshot()
	count, err := coll.CountDocuments(ctx, bson.D{})
	check(err, "count")
	check(client.Disconnect(ctx), "disconnect")
	printJSON(map[string]any{
		"event": "done", "inserted": inserted, "errors": errs, "max_write_ms": maxMS,
		"topology_before": before, "topology_after": after, "primaries": primaries, "count": count,
	})
}

// aggregate runs the pipeline on stdin against DB.orders once.
func aggregate(uri, dbName, app string) {
	ctx := context.Background()
	text, err := io.ReadAll(os.Stdin)
	check(err, "read the pipeline")
	var pipeline bson.A
	check(bson.UnmarshalExtJSON(text, false, &pipeline), "parse the pipeline")
	client := connect(uri, app, nil)
	cur, err := client.Database(dbName).Collection("orders").Aggregate(ctx, pipeline)
	if err != nil {
		var ce mongo.CommandError
		if !errors.As(err, &ce) {
			fail("aggregate: %v", err)
		}
		printJSON(map[string]any{"ok": false, "code": ce.Code, "code_name": ce.Name})
		check(client.Disconnect(ctx), "disconnect")
		return
	}
	var out []bson.M
	check(cur.All(ctx, &out), "aggregate cursor")
	printJSON(map[string]any{"ok": true, "documents": len(out)})
	check(client.Disconnect(ctx), "disconnect")
}

func main() {
	if len(os.Args) != 5 {
		fail("usage: %s workload|compress|monitor|failover|aggregate URI DB-or-COMPRESSOR APP", os.Args[0])
	}
	mode, uri, arg, app := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	switch mode {
	case "workload":
		workload(uri, arg, app)
	case "compress":
		compress(uri, arg, app)
	case "monitor":
		monitor(uri, arg, app)
	case "failover":
		failover(uri, arg, app)
	case "aggregate":
		aggregate(uri, arg, app)
	default:
		fail("unknown mode %q", mode)
	}
}
