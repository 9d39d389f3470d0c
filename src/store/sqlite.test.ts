import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isSqliteBusy, openSqlite, sqliteResult, type SqliteDatabase } from "./sqlite.js";

describe("store/sqlite (node:sqlite)", () => {
  let dir: string;
  let db: SqliteDatabase;
  let other: SqliteDatabase;
  const rows = (from: SqliteDatabase) => from.prepare<[], { v: string }>("SELECT v FROM t ORDER BY v").all().map((row) => row.v);

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "trellis-sqlite-"));
    db = openSqlite(join(dir, "a.db"));
    db.exec("CREATE TABLE t (v TEXT PRIMARY KEY)");
    other = openSqlite(join(dir, "a.db"), { busyTimeoutMs: 50 });
  });
  after(() => {
    db.close();
    other.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("opens in WAL mode and names its file", () => {
    // Catches: the journal left in rollback mode, where readers block the one writer.
    assert.equal(db.pragma("journal_mode"), "wal");
    assert.equal(db.path, join(dir, "a.db"));
  });

  it("commits a transaction's writes together, and rolls all of them back when its body throws", () => {
    db.immediate(() => db.prepare("INSERT INTO t VALUES (?)").run("a"));
    // Catches: a body that throws leaving its first write committed (no ROLLBACK).
    assert.throws(
      () =>
        db.immediate(() => {
          db.prepare("INSERT INTO t VALUES (?)").run("b");
          throw new Error("stop");
        }),
      /stop/,
    );
    assert.deepEqual(rows(other), ["a"]);
    assert.equal(db.immediate(() => 7), 7);
  });

  it("runs a transaction inside another as a savepoint: an inner failure undoes only the inner writes", () => {
    // Catches: BEGIN inside a transaction ("cannot start a transaction within a transaction"),
    // or an inner failure rolling back the outer transaction's writes too.
    db.immediate(() => {
      db.prepare("INSERT INTO t VALUES (?)").run("outer");
      assert.throws(() =>
        db.immediate(() => {
          db.prepare("INSERT INTO t VALUES (?)").run("inner");
          throw new Error("inner fails");
        }),
      );
      db.deferred(() => db.prepare("INSERT INTO t VALUES (?)").run("nested-ok"));
    });
    assert.deepEqual(rows(other), ["a", "nested-ok", "outer"]);
  });

  it("refuses an async body and rolls back what it wrote before its first await", async () => {
    // Catches: a transaction that commits when the body returns its promise, before its awaited part runs.
    assert.throws(
      () =>
        db.immediate(() => {
          db.prepare("INSERT INTO t VALUES (?)").run("async");
          return Promise.resolve();
        }),
      /must not be async/,
    );
    assert.deepEqual(rows(other), ["a", "nested-ok", "outer"]);
  });

  it("reports another connection's write lock as SQLITE_BUSY, after its busy timeout", () => {
    // Catches: node:sqlite's errors (code ERR_SQLITE_ERROR, numeric errcode) not mapped to
    // SQLite's result names, so a CNI ADD meeting a held lock answers "internal error" instead of
    // "try again later", and the node lock's poll gives up at once.
    db.exec("BEGIN IMMEDIATE");
    try {
      const started = Date.now();
      let caught: unknown;
      try {
        other.immediate(() => undefined);
      } catch (error) {
        caught = error;
      }
      assert.ok(caught, "the second writer got the lock while the first held it");
      assert.equal(sqliteResult(caught), "SQLITE_BUSY");
      assert.equal(isSqliteBusy(caught), true);
      assert.ok(Date.now() - started >= 40, "the busy timeout was not waited out");
    } finally {
      db.exec("ROLLBACK");
    }
    assert.equal(sqliteResult(new Error("not sqlite")), undefined);
    other.immediate(() => other.prepare("INSERT INTO t VALUES (?)").run("after"));
    assert.deepEqual(rows(db), ["a", "after", "nested-ok", "outer"]);
  });

  it("names a constraint failure SQLITE_CONSTRAINT, not busy", () => {
    // Catches: every SQLite error taken for a held lock, so a broken state is retried for ever.
    let caught: unknown;
    try {
      db.immediate(() => db.prepare("INSERT INTO t VALUES (?)").run("a"));
    } catch (error) {
      caught = error;
    }
    assert.equal(sqliteResult(caught), "SQLITE_CONSTRAINT");
    assert.equal(isSqliteBusy(caught), false);
  });
});
