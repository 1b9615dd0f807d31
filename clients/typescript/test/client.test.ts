// The TypeScript client against a live server started from the binary the test command built.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, writeFile, stat } from "node:fs/promises";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { ArtifactdClient, Code, JobState, RestoreChangeKind, codeOf } from "../src/index.js";

const repo = resolve(import.meta.dirname, "../../../..");
let server: ChildProcess;
let baseUrl = "";

before(async () => {
  const binary = process.env.ARTIFACTD_BIN ?? join(repo, "target/debug/artifactd");
  await stat(binary).catch(() => {
    throw new Error(`${binary} does not exist: run scripts/test (it builds it), or set ARTIFACTD_BIN`);
  });
  const dataDir = await mkdtemp(join(tmpdir(), "artifactd-ts-"));
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("ARTIFACTD_") && value !== undefined) env[key] = value;
  }
  Object.assign(env, {
    ARTIFACTD_DATA_DIR: dataDir,
    ARTIFACTD_SERVER__GRPC_ADDR: "127.0.0.1:0",
    ARTIFACTD_SERVER__HTTP_ADDR: "127.0.0.1:0",
    ARTIFACTD_LOG__FILTER: "warn",
  });
  server = spawn(binary, ["serve"], { env, stdio: ["ignore", "pipe", "ignore"] });
  const lines = createInterface({ input: server.stdout! });
  const ready: string = await new Promise((resolveReady, reject) => {
    lines.once("line", resolveReady);
    server.once("exit", (code) => reject(new Error(`artifactd exited with ${code}`)));
  });
  const grpc = ready.split(" ").find((part) => part.startsWith("grpc="));
  assert.ok(grpc, `unexpected ready line ${ready}`);
  baseUrl = `http://${grpc.slice("grpc=".length)}`;
  // The first start made an admin key; the client sends ARTIFACTD_TOKEN by default.
  process.env.ARTIFACTD_TOKEN = (await readFile(join(dataDir, "admin.key"), "utf8")).trim();
});

after(() => {
  server?.kill("SIGTERM");
});

test("upload, update, resumed verified download, list and search", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const project = `ts${randomUUID().slice(0, 8)}`;
  const content = new Uint8Array(randomBytes(600 * 1024));
  let progress = 0;
  const created = await client.create("acme", project, "bundle", "data.bin", content, {
    tags: ["typescript"],
    onProgress: (sent) => (progress = sent),
  });
  assert.equal(progress, content.length);
  assert.equal(created.version?.size, BigInt(content.length));
  assert.ok(created.artifact?.createdBy.startsWith("key:"), "the author is the key");
  const id = created.artifact!.id;

  const updated = await client.update("acme", project, id, new TextEncoder().encode("# Numbat notes\n"), {
    bump: "minor",
    expectedCurrentVersion: "1.0.0",
  });
  assert.equal(updated.version?.version, "1.1.0");

  const dir = await mkdtemp(join(tmpdir(), "artifactd-ts-dl-"));
  const target = join(dir, "data.bin");
  await writeFile(`${target}.part`, content.subarray(0, 100_000));
  const done = await client.downloadTo(target, "acme", project, id, { version: "1.0.0" });
  assert.equal(done.resumedFrom, 100_000n);
  assert.deepEqual(new Uint8Array(await readFile(target)), content);

  // A part left by another version under the same path fails verification once resumed: it
  // is thrown away and the version fetched whole.
  await writeFile(join(dir, "stale.bin.part"), content.slice().reverse().subarray(0, 1000));
  const again = await client.downloadTo(join(dir, "stale.bin"), "acme", project, id, { version: "1.0.0" });
  assert.equal(again.resumedFrom, 0n);
  assert.deepEqual(new Uint8Array(await readFile(join(dir, "stale.bin"))), content);
  await assert.rejects(stat(join(dir, "stale.bin.part")));
  // Nothing to fetch still makes the (empty) file.
  const empty = await client.create("acme", `${project}e`, "bundle", "empty.bin", new Uint8Array(0));
  assert.equal((await client.downloadTo(join(dir, "empty.bin"), "acme", `${project}e`, empty.artifact!.id)).size, 0n);
  assert.equal((await stat(join(dir, "empty.bin"))).size, 0);

  for (const n of [1, 2]) {
    await client.create("acme", project, "doc", `numbat-${n}.md`, new TextEncoder().encode(`# Numbat ${n}\n`));
  }
  const names: string[] = [];
  for await (const artifact of client.listArtifacts("acme", project, 1)) names.push(artifact.name);
  assert.deepEqual(names, ["data.bin", "numbat-1.md", "numbat-2.md"]);

  let hits: string[] = [];
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; ) {
    hits = [];
    for await (const hit of client.searchAll("acme", project, "numbat", 1)) hits.push(hit.name);
    if (hits.length === 3) break;
    await new Promise((resolveLater) => setTimeout(resolveLater, 50));
  }
  assert.deepEqual(hits.sort(), ["data.bin", "numbat-1.md", "numbat-2.md"]);
});

test("a download link serves the version over plain HTTP", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const project = `ts${randomUUID().slice(0, 8)}`;
  const content = new Uint8Array(randomBytes(200 * 1024));
  const created = await client.create("acme", project, "bundle", "linked.bin", content);
  const link = await client.downloadLink("acme", project, created.artifact!.id, { ttlSeconds: 120, inline: true });
  assert.equal(link.size, BigInt(content.length));
  const whole = await fetch(link.url);
  assert.equal(whole.status, 200);
  assert.equal(whole.headers.get("etag"), link.etag);
  assert.match(whole.headers.get("content-disposition") ?? "", /^inline; filename="linked.bin"/);
  assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), content);
  const part = await fetch(link.url, { headers: { range: "bytes=-16" } });
  assert.equal(part.status, 206);
  assert.deepEqual(new Uint8Array(await part.arrayBuffer()), content.slice(-16));
  const cached = await fetch(link.url, { headers: { "if-none-match": link.etag } });
  assert.equal(cached.status, 304);
  const forged = await fetch(link.url.replace("inline", "attachment"));
  assert.equal(forged.status, 403);
});

test("errors reach the caller with the server's code and message", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const missing = randomUUID();
  await assert.rejects(
    client.artifacts.getArtifact({ tenant: "acme", project: "web", selector: { case: "artifactId", value: missing } }),
    (error: unknown) => codeOf(error) === Code.NotFound && String(error).includes(missing),
  );
  await assert.rejects(
    client.create("acme", "web", "prd", "docs/../b.md", new Uint8Array([1])),
    (error: unknown) => codeOf(error) === Code.InvalidArgument && String(error).includes("name:"),
  );
  await assert.rejects(
    client.fallback.getFallbackStatus({}),
    (error: unknown) => codeOf(error) === Code.FailedPrecondition && String(error).includes("no fallback store is configured"),
  );
});

test("the trash, a retention policy's dry run and its execution", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const project = `ts${randomUUID().slice(0, 8)}`;
  const created = await client.create("acme", project, "story", "s.md", new TextEncoder().encode("# v1\n"));
  const id = created.artifact!.id;
  for (const body of ["# v2\n", "# v3\n"]) {
    await client.update("acme", project, id, new TextEncoder().encode(body));
  }
  await client.artifacts.deleteVersion({ tenant: "acme", project, artifactId: id, version: "1.0.0" });
  const trash = [];
  for await (const item of client.listTrash("acme", project)) trash.push(`${item.artifactId}@${item.version}`);
  assert.deepEqual(trash, [`${id}@1.0.0`]);
  await assert.rejects(
    client.artifacts.deleteVersion({ tenant: "acme", project, artifactId: id, version: "1.0.2" }),
    (error: unknown) => codeOf(error) === Code.FailedPrecondition && String(error).includes("latest"),
  );
  await client.artifacts.undeleteVersion({ tenant: "acme", project, artifactId: id, version: "1.0.0" });
  const { policy } = await client.retention.createRetentionPolicy({
    tenant: "acme",
    project,
    name: "keep-one",
    policy: { case: "document", value: "action: archive\nkeep: {latest: 1}\n" },
  });
  const dry = await client.retention.evaluateRetentionPolicy({ tenant: "acme", project, policyId: policy!.id });
  assert.deepEqual(dry.run!.affected.map((d) => d.version).sort(), ["1.0.0", "1.0.1"]);
  const done = await client.retention.executeRetentionPolicy({
    tenant: "acme",
    project,
    policyId: policy!.id,
    expectedPlan: dry.run!.plan,
  });
  assert.equal(done.run!.applied, 2n);
});

test("a backup, a dry run of a point-in-time restore, and a restore into a new project", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const project = `ts${randomUUID().slice(0, 8)}`;
  const created = await client.create("acme", project, "prd", "plan.md", new TextEncoder().encode("# v1\n"));
  const id = created.artifact!.id;
  const phases: string[] = [];
  const backup = await client.backup("acme", project, { onProgress: (p) => phases.push(p.phase) });
  assert.ok(phases.length > 0);
  assert.equal(backup.versions, 1n);
  const moment = Date.now();
  await new Promise((done) => setTimeout(done, 50));
  await client.update("acme", project, id, new TextEncoder().encode("# v2\n"));
  const dry = await client.restore({
    tenant: "acme",
    project,
    source: {
      case: "pointInTime",
      value: { at: { seconds: BigInt(Math.floor(moment / 1000)), nanos: (moment % 1000) * 1_000_000 } },
    },
    dryRun: true,
  });
  assert.ok(dry.dryRun);
  assert.deepEqual(
    dry.changes.map((c) => c.version),
    ["", "1.0.1"],
  );
  assert.equal(dry.changes[1]?.kind, RestoreChangeKind.TRASH_VERSION);
  const copied = await client.restore({
    tenant: "acme",
    project,
    source: { case: "backupId", value: backup.id },
    target: { target: { case: "newProject", value: `${project}-copy` } },
  });
  const newId = copied.newIds[id];
  assert.ok(newId && newId !== id);
  await assert.rejects(
    client.restore({ tenant: "acme", project, source: { case: "backupId", value: backup.id } }),
    (error: unknown) => codeOf(error) === Code.AlreadyExists && String(error).includes("overwrite"),
  );
});

test("server status names its jobs and services", async () => {
  const client = new ArtifactdClient({ baseUrl });
  const status = await client.serverStatus();
  assert.ok(status.version.length > 0);
  const indexer = status.jobs.find((job) => job.name === "indexer");
  assert.equal(indexer?.state, JobState.RUNNING);
  const artifacts = status.services.find((s) => s.service === "artifactd.v1.ArtifactService");
  assert.equal(artifacts?.serving, true);
});

test("the README example runs", async () => {
  const readme = await readFile(join(repo, "README.md"), "utf8");
  const block = readme.split("<!-- typescript-example -->")[1]?.split("```ts\n")[1]?.split("```")[0];
  assert.ok(block, "the README has a TypeScript example");
  // The example is TypeScript that is also plain JavaScript, so it runs as a module as is.
  // Inside the package (so that "@artifactd/client" resolves to it), outside the test folder.
  const folder = join(import.meta.dirname, "..", "readme-example");
  await mkdir(folder, { recursive: true });
  const file = join(folder, "example.mjs");
  await writeFile(file, block.replace("http://127.0.0.1:50051", baseUrl));
  await import(file);
});
