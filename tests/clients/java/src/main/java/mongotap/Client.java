// The driver-matrix workload with the official Java driver
// (org.mongodb:mongodb-driver-sync), printing one JSON line (see tests/drivers.rs).
//
// Usage:
//   java -jar mongotap-java-client.jar workload URI DB APP
//       Prints {driver, results, commands}: results hold only what must not
//       depend on the path taken (ids, counts, error codes, getMore round
//       trips); commands counts every command this client's CommandListener
//       saw start, to compare with mongotap's /stats.
//   java -jar mongotap-java-client.jar compress URI COMPRESSOR APP
//       Negotiates COMPRESSOR (snappy, zlib or zstd), then ping, insertMany of
//       two documents, find.
//
// The Go, Python, Node and Rust clients run the same steps with the same
// constants and must print the same results.
package mongotap;

import com.mongodb.ConnectionString;
import com.mongodb.MongoClientSettings;
import com.mongodb.MongoCommandException;
import com.mongodb.MongoWriteException;
import com.mongodb.WriteConcern;
import com.mongodb.client.MongoClient;
import com.mongodb.client.MongoClients;
import com.mongodb.client.MongoCollection;
import com.mongodb.client.MongoCursor;
import com.mongodb.client.MongoDatabase;
import com.mongodb.client.model.Aggregates;
import com.mongodb.client.model.Filters;
import com.mongodb.client.model.Projections;
import com.mongodb.client.model.Sorts;
import com.mongodb.client.model.Updates;
import com.mongodb.client.model.Accumulators;
import com.mongodb.client.result.UpdateResult;
import com.mongodb.event.CommandListener;
import com.mongodb.event.CommandStartedEvent;
import com.mongodb.event.CommandSucceededEvent;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.bson.BsonArray;
import org.bson.Document;
import org.bson.conversions.Bson;
import org.bson.json.JsonMode;
import org.bson.json.JsonWriterSettings;

public final class Client {
    /** Enough that batchSize 4 needs several getMores. */
    private static final int DOCS = 30;
    /** The _id of the unacknowledged insert. */
    private static final int W0_ID = 1000;

    /** Counts started commands by name, and the cursors killCursors killed. */
    static final class Commands implements CommandListener {
        final Map<String, Integer> started = new TreeMap<>();
        int killed;

        @Override
        public synchronized void commandStarted(CommandStartedEvent e) {
            started.merge(e.getCommandName(), 1, Integer::sum);
        }

        @Override
        public synchronized void commandSucceeded(CommandSucceededEvent e) {
            if (e.getCommandName().equals("killCursors")) {
                BsonArray ids = e.getResponse().getArray("cursorsKilled", new BsonArray());
                killed += ids.size();
            }
        }

        synchronized int count(String name) {
            return started.getOrDefault(name, 0);
        }
    }

    /** The tlsCAFile URI option, which the Java driver does not read itself. */
    private static final Pattern CA_FILE = Pattern.compile("([?&])tlsCAFile=([^&]*)&?", Pattern.CASE_INSENSITIVE);

    /** An SSLContext trusting only the PEM certificates in `file`. */
    private static SSLContext trusting(String file) throws GeneralSecurityException, IOException {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new FileInputStream(file)) {
            int i = 0;
            for (Certificate c : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca" + i++, c);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }

    private static MongoClient connect(String uri, String app, CommandListener listener, int maxPool) {
        // The other drivers take tlsCAFile in the URI; Java wants an
        // SSLContext, so the option is taken out and turned into one.
        Matcher ca = CA_FILE.matcher(uri);
        SSLContext tls = null;
        if (ca.find()) {
            try {
                tls = trusting(URLDecoder.decode(ca.group(2), StandardCharsets.UTF_8));
            } catch (GeneralSecurityException | IOException e) {
                throw new IllegalArgumentException("tlsCAFile: " + e, e);
            }
            uri = ca.replaceFirst(ca.group(1).equals("?") ? "?" : "&").replaceAll("[?&]$", "");
        }
        SSLContext context = tls;
        MongoClientSettings.Builder b = MongoClientSettings.builder()
                .applyConnectionString(new ConnectionString(uri))
                .applicationName(app)
                .applyToClusterSettings(c -> c.serverSelectionTimeout(10, TimeUnit.SECONDS))
                .applyToSocketSettings(s -> s.readTimeout(60, TimeUnit.SECONDS));
        if (context != null) {
            b.applyToSslSettings(t -> t.context(context));
        }
        if (listener != null) {
            b.addCommandListener(listener);
        }
        if (maxPool > 0) {
            b.applyToConnectionPoolSettings(p -> p.maxSize(maxPool));
        }
        return MongoClients.create(b.build());
    }

    private static List<Object> ids(Iterable<Document> docs) {
        List<Object> out = new ArrayList<>();
        for (Document d : docs) {
            out.add(d.get("_id"));
        }
        return out;
    }

    static Document workload(String uri, String dbName, String app) throws InterruptedException {
        Commands mon = new Commands();
        Document res = new Document();
        try (MongoClient client = connect(uri, app, mon, 0)) {
            MongoDatabase db = client.getDatabase(dbName);
            MongoCollection<Document> coll = db.getCollection("items");

            // The handshake authenticated (SCRAM-SHA-256 when the URI has credentials).
            Document status = db.runCommand(new Document("connectionStatus", 1));
            List<String> users = new ArrayList<>();
            for (Document u : status.get("authInfo", Document.class).getList("authenticatedUsers", Document.class)) {
                users.add(u.getString("db") + "." + u.getString("user"));
            }
            res.append("users", users);

            // insertMany goes out as one OP_MSG with a kind-1 "documents" sequence.
            List<Document> docs = new ArrayList<>();
            for (int i = 0; i < DOCS; i++) {
                docs.add(new Document("_id", i).append("n", i).append("grp", i % 3)
                        .append("tags", List.of("t" + (i % 4), "all")));
            }
            res.append("inserted", coll.insertMany(docs).getInsertedIds().size());

            int dupCode = 0;
            try {
                coll.insertOne(new Document("_id", 0));
            } catch (MongoWriteException e) {
                dupCode = e.getError().getCode();
            }
            res.append("duplicate_key_code", dupCode);

            int before = mon.count("getMore");
            res.append("find_ids", ids(coll.find(Filters.gte("n", 5)).sort(Sorts.ascending("_id")).batchSize(4)));
            res.append("find_getmores", mon.count("getMore") - before);

            before = mon.count("getMore");
            List<Bson> pipeline = List.of(
                    Aggregates.match(Filters.lt("n", 20)),
                    Aggregates.unwind("$tags"),
                    // FerretDB v1.24.2's $unwind keeps only _id and the unwound field, so
                    // the group counts documents per tag rather than summing other fields.
                    Aggregates.group("$tags", Accumulators.sum("count", 1)),
                    Aggregates.sort(Sorts.ascending("_id")),
                    Aggregates.project(Projections.include("_id", "count")));
            res.append("aggregate", coll.aggregate(pipeline).batchSize(2).into(new ArrayList<>()));
            res.append("aggregate_getmores", mon.count("getMore") - before);

            UpdateResult upd = coll.updateMany(Filters.eq("grp", 0),
                    Updates.combine(Updates.inc("n", 100), Updates.set("flag", true)));
            res.append("update", new Document("matched", upd.getMatchedCount())
                    .append("modified", upd.getModifiedCount()));
            res.append("deleted", coll.deleteMany(Filters.eq("grp", 1)).getDeletedCount());

            // w:0 goes out with moreToCome and no reply is read. FerretDB v1.24.2
            // replies anyway, so the write uses its own one-connection client that
            // does nothing else, and stays open until the write is visible.
            long w0 = 0;
            try (MongoClient unacked = connect(uri, app + "-w0", null, 1)) {
                unacked.getDatabase(dbName).getCollection("items")
                        .withWriteConcern(WriteConcern.UNACKNOWLEDGED)
                        .insertOne(new Document("_id", W0_ID).append("n", -1));
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                while ((w0 = coll.countDocuments(Filters.eq("_id", W0_ID))) == 0 && System.nanoTime() < deadline) {
                    Thread.sleep(50);
                }
            }
            res.append("w0_count", w0);

            // Closing a cursor before it is exhausted sends killCursors.
            List<Object> first = new ArrayList<>();
            try (MongoCursor<Document> cursor = coll.find().sort(Sorts.ascending("_id")).batchSize(2).iterator()) {
                first.add(cursor.next().get("_id"));
                first.add(cursor.next().get("_id"));
            }
            res.append("closed_cursor_first_batch", first);
            res.append("kill_cursors", mon.count("killCursors"));
            synchronized (mon) {
                res.append("cursors_killed", mon.killed);
            }

            int unknownCode = 0;
            try {
                db.runCommand(new Document("mongotapNoSuchCommand", 1));
            } catch (MongoCommandException e) {
                unknownCode = e.getErrorCode();
            }
            res.append("unknown_command_code", unknownCode);

            res.append("final_ids", ids(coll.find().sort(Sorts.ascending("_id"))));
            res.append("final_count", coll.countDocuments());
        }
        Document commands;
        synchronized (mon) {
            commands = new Document(new TreeMap<String, Object>(mon.started));
        }
        return new Document("driver", driver()).append("results", res).append("commands", commands);
    }

    static Document compress(String uri, String compressor, String app) {
        String sep = uri.contains("?") ? "&" : "?";
        try (MongoClient client = connect(uri + sep + "compressors=" + compressor, app, null, 0)) {
            MongoCollection<Document> coll = client.getDatabase("matrix").getCollection("items");
            client.getDatabase("admin").runCommand(new Document("ping", 1));
            coll.insertMany(List.of(new Document("_id", 1), new Document("_id", 2)));
            List<Object> found = ids(coll.find());
            return new Document("compressor", compressor).append("ping", true).append("inserted", 2)
                    .append("found", found);
        }
    }

    private static Document driver() {
        return new Document("name", "java").append("version", com.mongodb.internal.build.MongoDriverVersion.VERSION);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: mongotap-java-client workload|compress URI DB-or-COMPRESSOR APP");
            System.exit(2);
        }
        Document out;
        switch (args[0]) {
            case "workload" -> out = workload(args[1], args[2], args[3]);
            case "compress" -> out = compress(args[1], args[2], args[3]);
            default -> {
                System.err.println("unknown mode " + args[0]);
                System.exit(2);
                return;
            }
        }
        System.out.println(out.toJson(JsonWriterSettings.builder().outputMode(JsonMode.RELAXED).build()));
    }
}
