// An outside client of quorumkv, written from docs/PROTOCOL.md alone with
// nats.js and @msgpack/msgpack: it exercises the data and admin subjects in
// both encodings and checks every reply field and error header the document
// promises. Usage: node check.mjs nats://HOST:PORT
// Prints one line per check and exits non-zero on the first failure.
import { connect, headers } from "nats";
import { encode, decode } from "@msgpack/msgpack";

const url = process.argv[2];
if (!url) {
  console.error("usage: node check.mjs nats://HOST:PORT");
  process.exit(2);
}
const nc = await connect({ servers: url });
const te = new TextEncoder();
const td = new TextDecoder();
let checks = 0;

function ok(cond, what, detail) {
  if (!cond) {
    console.error(`FAIL ${what}${detail === undefined ? "" : ": " + JSON.stringify(detail, (k, v) => (v instanceof Uint8Array ? Array.from(v) : typeof v === "bigint" ? v.toString() : v))}`);
    process.exit(1);
  }
  checks++;
  console.log(`ok   ${what}`);
}

// req sends body (an object) in msgpack, or in JSON when json is true, and
// returns {err, body}: err is {code, kind, desc} when the reply carries the
// service error headers (PROTOCOL.md "Errors").
async function req(subject, body, json = false) {
  const h = headers();
  let data;
  if (json) {
    h.set("Content-Type", "application/json");
    data = te.encode(JSON.stringify(body));
  } else {
    data = body === undefined ? new Uint8Array() : encode(body);
  }
  const m = await nc.request(subject, data, { timeout: 5000, headers: h });
  const code = m.headers?.get("Nats-Service-Error-Code");
  let parsed = null;
  if (m.data.length > 0) {
    parsed = json ? JSON.parse(td.decode(m.data)) : decode(m.data, { useBigInt64: true });
  }
  if (code) {
    return { err: { code: Number(code), kind: m.headers.get("Kv-Error-Kind"), desc: m.headers.get("Nats-Service-Error") }, body: parsed };
  }
  return { err: null, body: parsed };
}

const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const num = (v) => (typeof v === "bigint" ? Number(v) : v);

// --- msgpack put / get / delete on the default tenant (lww) ---
const value = new Uint8Array([0, 1, 2, 255]);
let r = await req("kv.v1.default.put", { key: "greeting", value, consistency: "all" });
ok(r.err === null, "msgpack put answers without error", r.err);
ok(r.body.success === true && r.body.key === "greeting", "put reply: success and key", r.body);
ok(typeof r.body.context === "string" && /^[A-Za-z0-9._-]+$/.test(r.body.context), "put reply: context is an ASCII string", r.body.context);
ok(num(r.body.replica_count) === 3 && r.body.consistency === "all", "put reply: replica_count 3 at all", r.body);
ok(typeof r.body.idempotency_key === "string" && r.body.idempotency_key.length > 0 && r.body.is_duplicate === false, "put reply: a generated idempotency_key, not a duplicate", r.body);
const firstCtx = r.body.context;
const generated = r.body.idempotency_key;

r = await req("kv.v1.default.get", { key: "greeting", consistency: "quorum" });
ok(r.err === null && r.body.found === true && r.body.value instanceof Uint8Array && eq(r.body.value, value), "msgpack get returns the bytes as bin", r.body);
ok(r.body.context === firstCtx, "get's context is the put's", r.body.context);

// A retry with the generated key is a duplicate with the first context.
r = await req("kv.v1.default.put", { key: "greeting", value, idempotency_key: generated });
ok(r.err === null && r.body.is_duplicate === true && r.body.context === firstCtx, "a retry with the generated key is answered from the first response", r.body);
// The same key for another request is refused.
r = await req("kv.v1.default.put", { key: "greeting", value: new Uint8Array([9]), idempotency_key: generated });
ok(r.err?.code === 409 && r.err.kind === "idempotency_mismatch", "the same idempotency key with another value is 409 idempotency_mismatch", r.err);

// A write with the read's context wins; a made-up context is refused.
r = await req("kv.v1.default.put", { key: "greeting", value: new Uint8Array([7]), context: firstCtx });
ok(r.err === null && r.body.context !== firstCtx, "a put with the read's context succeeds with a new context", r);
r = await req("kv.v1.default.put", { key: "greeting", value: new Uint8Array([8]), context: firstCtx.slice(0, -2) + (firstCtx.endsWith("AA") ? "AB" : "AA") });
ok(r.err?.code === 400 && r.err.kind === "invalid" && /not issued by this store/.test(r.err.desc), "an altered context is 400 'not issued by this store'", r.err);
ok(r.body && num(r.body.code) === 400 && r.body.kind === "invalid" && typeof r.body.message === "string", "the error body is {code, kind, message}", r.body);

r = await req("kv.v1.default.delete", { key: "greeting" });
ok(r.err === null && r.body.success === true, "delete succeeds", r);
r = await req("kv.v1.default.get", { key: "greeting" });
ok(r.err === null && r.body.found === false && r.body.value === null && typeof r.body.context === "string" && r.body.context.length > 0, "a deleted key: found false, value nil, the tombstone's context", r.body);
r = await req("kv.v1.default.get", { key: "never-written" });
ok(r.err === null && r.body.found === false && r.body.context === "", "a key never written: found false, empty context", r.body);

// A binary key travels as bin and comes back as bin.
const binKey = new Uint8Array([0xff, 0x00, 0x80]);
r = await req("kv.v1.default.put", { key: binKey, value: new Uint8Array([1]) });
ok(r.err === null && r.body.key instanceof Uint8Array && eq(r.body.key, binKey), "a non-UTF-8 key is answered as bin in msgpack", r.body);

// --- TTL (PROTOCOL.md "TTL") ---
const putAt = Date.now();
r = await req("kv.v1.default.put", { key: "short-lived", value: new Uint8Array([5]), ttl_ms: 1500, consistency: "all" });
ok(r.err === null && r.body.success === true, "a put with ttl_ms", r.err);
r = await req("kv.v1.default.get", { key: "short-lived" });
ok(r.err === null && r.body.found === true, "before its expiry the key is found", r.body);
const exp = Number(r.body.expires_at_ms);
ok(exp >= putAt + 1500 - 1000 && exp <= Date.now() + 1500 + 1000, "the get reports expires_at_ms, about the put's time plus ttl_ms", r.body);
await new Promise((res) => setTimeout(res, 2000));
r = await req("kv.v1.default.get", { key: "short-lived", consistency: "all" });
ok(r.err === null && r.body.found === false && typeof r.body.context === "string" && r.body.context.length > 0, "after its expiry: found false, with a context", r.body);
const expiredCtx = r.body.context;
r = await req("kv.v1.default.put", { key: "short-lived", value: new Uint8Array([6]), context: expiredCtx });
ok(r.err === null, "a put with the expired key's context succeeds", r.err);
r = await req("kv.v1.default.get", { key: "short-lived" });
ok(r.err === null && r.body.found === true && eq(r.body.value, new Uint8Array([6])) && r.body.expires_at_ms === undefined, "and is read back, with no TTL (no expires_at_ms)", r.body);
r = await req("kv.v1.default.put", { key: "bad-ttl", value: "v", ttl_ms: -1 }, true);
ok(r.err?.code === 400 && r.err.kind === "invalid", "a negative ttl_ms is 400 invalid", r.err);
r = await req("kv.v1.default.put", { key: "bad-ttl", value: "v", ttl_ms: 315360000001 }, true);
ok(r.err?.code === 400, "a ttl_ms above 10 years is 400", r.err);
r = await req("kv.v1.default.put", { key: "bad-ttl", value: "v", ttl_ms: 1.5 }, true);
ok(r.err?.code === 400, "a ttl_ms with a fraction is 400", r.err);
r = await req("kv.v1.default.get", { key: "bad-ttl" });
ok(r.err === null && r.body.found === false, "a refused ttl_ms wrote nothing", r.body);
r = await req("kv.v1.default.delete", { key: "bad-ttl", ttl_ms: 1000 });
ok(r.err?.code === 400, "a delete with ttl_ms is 400", r.err);

// --- JSON ---
r = await req("kv.v1.default.put", { key: "j", value: "héllo" }, true);
ok(r.err === null && r.body.success === true && r.body.key === "j", "JSON put", r);
r = await req("kv.v1.default.get", { key: "j" }, true);
ok(r.err === null && r.body.value === "héllo" && r.body.found === true, "JSON get returns a UTF-8 value as value", r.body);
r = await req("kv.v1.default.put", { key: "jb", value_base64: Buffer.from([0xff, 0xfe]).toString("base64") }, true);
ok(r.err === null, "JSON put of a binary value as value_base64", r.err);
r = await req("kv.v1.default.get", { key: "jb" }, true);
ok(r.err === null && r.body.value_base64 === Buffer.from([0xff, 0xfe]).toString("base64") && r.body.value === undefined, "JSON get returns binary bytes as value_base64 only", r.body);
r = await req("kv.v1.default.put", { key_base64: Buffer.from(binKey).toString("base64"), value: "x" }, true);
ok(r.err === null && r.body.key_base64 === Buffer.from(binKey).toString("base64") && r.body.key === undefined, "JSON put reply names a binary key as key_base64", r.body);
r = await req("kv.v1.default.get", { key: "missing-json" }, true);
ok(r.err === null && r.body.found === false && r.body.value === undefined && r.body.value_base64 === undefined, "JSON get of a missing key has no value field", r.body);

// Rules on input.
r = await req("kv.v1.default.put", { KEY: "k", value: "v" }, true);
ok(r.err?.code === 400 && /case-sensitive/.test(r.err.desc), "a field name in another case is 400", r.err);
r = await req("kv.v1.default.put", { key: "k", value: "v", value_base64: "dg==" }, true);
ok(r.err?.code === 400, "value and value_base64 together are 400", r.err);
r = await req("kv.v1.default.put", { key: "k", timeout_ms: 60001 });
ok(r.err?.code === 400, "timeout_ms above 60000 is 400", r.err);
r = await req("kv.v1.default.put", { key: "k", timeout_ms: 0 });
ok(r.err === null, "timeout_ms 0 is the coordinator's default", r.err);
r = await req("kv.v1.default.put", { key: "x".repeat(1025) });
ok(r.err?.code === 413 && r.err.kind === "too_large", "a key over 1024 bytes is 413 too_large", r.err);
r = await req("kv.v1.nosuch.get", { key: "k" });
ok(r.err?.code === 404 && r.err.kind === "no_such_tenant", "an unknown tenant is 404 no_such_tenant", r.err);
{
  const h = headers();
  h.set("content-type", "APPLICATION/JSON; charset=utf-8");
  const m = await nc.request("kv.v1.default.get", te.encode(JSON.stringify({ key: "j" })), { timeout: 5000, headers: h });
  ok(JSON.parse(td.decode(m.data)).value === "héllo", "the Content-Type header matches in any letter case");
}

// --- siblings tenant ---
r = await req("kv.v1.admin.tenant.create", { tenant_id: "jssib", replication_factor: 3, conflict_policy: "siblings" }, true);
ok(r.err === null && r.body.conflict_policy === "siblings" && typeof r.body.version === "number", "tenant.create of a siblings tenant", r);
await req("kv.v1.jssib.put", { key: "s", value: "a" }, true);
await req("kv.v1.jssib.put", { key: "s", value: "b" }, true);
r = await req("kv.v1.jssib.get", { key: "s", consistency: "all" }, true);
ok(r.err === null && Array.isArray(r.body.siblings) && r.body.siblings.slice().sort().join(",") === "a,b", "two puts without context leave two siblings", r.body);
r = await req("kv.v1.jssib.put", { key: "s", value: "a+b", context: r.body.context, consistency: "all" }, true);
ok(r.err === null, "a put with the read's context resolves them", r.err);
r = await req("kv.v1.jssib.get", { key: "s", consistency: "all" }, true);
ok(r.err === null && r.body.value === "a+b" && r.body.siblings === undefined, "one value after resolving", r.body);
r = await req("kv.v1.default.put", { key: "s", value: "x", context: r.body.context }, true);
ok(r.err?.code === 400, "a siblings context sent to an lww tenant is 400", r.err);
r = await req("kv.v1.jssib.delete", { key: "s" }, true);
r = await req("kv.v1.jssib.get", { key: "s", consistency: "all" }, true);
ok(r.err === null && r.body.found === false, "a delete without context removes the siblings' values", r.body);

// --- admin: 64-bit epochs as strings in JSON ---
r = await req("kv.v1.admin.node.list", {}, true);
ok(r.err === null && r.body.nodes.length >= 3 && r.body.nodes.every((n) => typeof n.epoch === "string" && /^[0-9]+$/.test(n.epoch)), "node.list in JSON gives epochs as decimal strings", r.body);
r = await req("kv.v1.admin.node.list");
ok(r.err === null && r.body.nodes.every((n) => typeof n.epoch === "bigint" || typeof n.epoch === "number"), "node.list in msgpack gives epochs as integers", r.body);

// --- micro stats count errors ---
{
  const m = await nc.request("$SRV.STATS.quorumkv", new Uint8Array(), { timeout: 5000 });
  const stats = JSON.parse(td.decode(m.data));
  const errors = stats.endpoints.reduce((n, e) => n + e.num_errors, 0);
  ok(errors >= 6, "$SRV.STATS counts the error answers", errors);
}

await nc.close();
console.log(`${checks} passed, 0 failed`);
