// PouchDB syncing with a cozyd instance, the way an offline app does.
//
//   node pouchdb_sync.js <config.json>
//
// config: {"url": "http://127.0.0.1:PORT/data/io.cozy.notes", "token": "..."}
// (NODE_PATH must point at node_modules holding pouchdb-core,
// pouchdb-adapter-memory, pouchdb-adapter-http and pouchdb-replication).
//
// The scenario: documents are written in a local (in-memory) database and
// pushed; both sides then edit (the server through cozyd's own /data API),
// one document on both sides at once, to make a conflict on purpose; a
// two-way sync follows; finally a fresh local database pulls everything.
// Prints one JSON object: each side's documents (winning revision, body,
// conflicts) and the replication results, for the Python test to compare.

"use strict";

const fs = require("fs");
const PouchDB = require("pouchdb-core")
  .plugin(require("pouchdb-adapter-memory"))
  .plugin(require("pouchdb-adapter-http"))
  .plugin(require("pouchdb-replication"));

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const auth = "Bearer " + config.token;

function remoteDb() {
  return new PouchDB(config.url, {
    skip_setup: false,
    fetch: (url, opts) => {
      opts.headers.set("Authorization", auth);
      return PouchDB.fetch(url, opts);
    },
  });
}

// The server side edits, through cozyd's /data API (not replication).
async function api(method, path, body) {
  const response = await fetch(config.url + path, {
    method,
    headers: { Authorization: auth, Accept: "application/json",
               "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status >= 300) {
    throw new Error(`${method} ${path}: ${response.status} ${text}`);
  }
  return JSON.parse(text);
}

async function snapshot(db) {
  const all = await db.allDocs({ include_docs: true, conflicts: true });
  const docs = {};
  for (const row of all.rows) {
    if (row.id.startsWith("_design/")) continue;
    const doc = Object.assign({}, row.doc);
    const conflicts = (doc._conflicts || []).slice().sort();
    delete doc._conflicts;
    const rev = doc._rev;
    delete doc._rev;
    delete doc._id;
    docs[row.id] = { rev, conflicts, body: doc };
  }
  return docs;
}

function summary(result) {
  return { ok: result.ok, docs_written: result.docs_written, doc_write_failures:
           result.doc_write_failures, errors: (result.errors || []).map(String) };
}

async function main() {
  const local = new PouchDB("local", { adapter: "memory" });
  const remote = remoteDb();
  const steps = {};

  // 1. Local writes, pushed.
  await local.bulkDocs([
    { _id: "alpha", title: "alpha", n: 1 },
    { _id: "beta", title: "beta", tags: ["x"] },
    { _id: "gamma", title: "gamma" },
  ]);
  const alpha = await local.get("alpha");
  await local.put(Object.assign(alpha, { n: 2 }));
  steps.push = summary(await PouchDB.replicate(local, remote));

  // 2. Server-side edits through the API: a new doc, an edit of "beta".
  await api("PUT", "/delta", { title: "delta", from: "server" });
  const serverBeta = await api("GET", "/beta");
  await api("PUT", "/beta", Object.assign(serverBeta, { title: "beta (server)" }));

  // 3. Local edits: "beta" again (the conflict), "gamma" deleted, "epsilon" new.
  const localBeta = await local.get("beta");
  await local.put(Object.assign(localBeta, { title: "beta (local)", tags: ["x", "y"] }));
  const gamma = await local.get("gamma");
  await local.remove(gamma);
  await local.put({ _id: "epsilon", title: "epsilon" });

  // 4. Two-way sync.
  const synced = await PouchDB.sync(local, remote);
  steps.sync_push = summary(synced.push);
  steps.sync_pull = summary(synced.pull);

  // 5. A fresh local database pulls everything.
  const fresh = new PouchDB("fresh", { adapter: "memory" });
  steps.pull = summary(await PouchDB.replicate(remote, fresh));

  const output = {
    steps,
    local: await snapshot(local),
    remote: await snapshot(remote),
    fresh: await snapshot(fresh),
    server_gamma: await api("GET", "/gamma?revs=true&open_revs=all"),
  };
  process.stdout.write(JSON.stringify(output) + "\n");
}

main().catch((error) => {
  process.stderr.write((error && error.stack) || String(error));
  process.stderr.write("\n");
  process.exit(1);
});
