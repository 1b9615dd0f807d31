// A thin layer over the generated artifactd stubs (src/gen, from `scripts/generate-clients`):
// uploads that end with a finish message (size and blake3), downloads that resume and verify,
// paging iterators, and errors with the server's status code and message intact.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client as RpcClient, type Interceptor } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { createBLAKE3 } from "hash-wasm";
import { createReadStream, createWriteStream } from "node:fs";
import { open, rename, rm, stat } from "node:fs/promises";
import type { ClientHttp2Stream, ClientSessionRequestOptions, OutgoingHttpHeaders } from "node:http2";
import {
  ArtifactService,
  BumpKind,
  type CreateArtifactRequest,
  CreateArtifactRequestSchema,
  type CreateDownloadLinkResponse,
  type CreateArtifactResponse,
  type UpdateArtifactRequest,
  UpdateArtifactRequestSchema,
  type UpdateArtifactResponse,
  type Artifact,
  type ArtifactVersion,
} from "./gen/artifactd/v1/artifact_pb.js";
import { AdminService, type GetServerStatusResponse } from "./gen/artifactd/v1/admin_pb.js";
import { FallbackService } from "./gen/artifactd/v1/fallback_pb.js";
import { RetentionService, type TrashItem } from "./gen/artifactd/v1/retention_pb.js";
import {
  BackupService,
  type Backup,
  type BackupProgress,
  type RestoreBackupRequestSchema,
  type RestoreResult,
} from "./gen/artifactd/v1/backup_pb.js";
import { SearchService, type SearchHit } from "./gen/artifactd/v1/search_pb.js";

export * from "./gen/artifactd/v1/artifact_pb.js";
export * from "./gen/artifactd/v1/search_pb.js";
export * from "./gen/artifactd/v1/fallback_pb.js";
export * from "./gen/artifactd/v1/admin_pb.js";
export * from "./gen/artifactd/v1/retention_pb.js";
export * from "./gen/artifactd/v1/backup_pb.js";
export { Code, ConnectError };

/** Bytes, a path to a file, or any (async) iterable of byte chunks. */
export type Content = Uint8Array | string | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** The server accepts data messages of up to 256 KiB. */
const PIECE = 256 * 1024;

export interface ClientOptions {
  /** For example "http://127.0.0.1:50051" (https for TLS). */
  baseUrl: string;
  /** An API key or an OIDC token, sent as the bearer credential; defaults to ARTIFACTD_TOKEN. */
  token?: string;
  apiKey?: string;
}

export interface UploadOptions {
  tags?: string[];
  metadata?: Record<string, string>;
  initialVersion?: string;
  changeMessage?: string;
  onProgress?: (sentBytes: number) => void;
}

/** Downloaded bytes that do not hash to the digest the server announced. */
export class IntegrityError extends Error {}

async function* pieces(content: Content): AsyncIterable<Uint8Array> {
  if (typeof content === "string") {
    for await (const chunk of createReadStream(content, { highWaterMark: PIECE })) {
      yield chunk as Uint8Array;
    }
    return;
  }
  const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = content instanceof Uint8Array ? [content] : content;
  for await (const chunk of chunks) {
    for (let start = 0; start < chunk.length; start += PIECE) {
      yield chunk.subarray(start, start + PIECE);
    }
  }
}

/** Data messages, then the finish message that proves the upload complete. */
async function* uploadParts<M>(
  content: Content,
  data: (piece: Uint8Array) => M,
  finish: (size: bigint, digest: string) => M,
  onProgress?: (sent: number) => void,
): AsyncIterable<M> {
  const hasher = await createBLAKE3();
  let sent = 0;
  for await (const piece of pieces(content)) {
    if (piece.length === 0) continue;
    hasher.update(piece);
    sent += piece.length;
    yield data(piece);
    onProgress?.(sent);
  }
  yield finish(BigInt(sent), hasher.digest("hex"));
}

/** HTTP/2 receive windows: Node's defaults (64 KiB for a stream and for the whole connection)
 * let the server send 64 KiB per round trip, which holds a download to a fraction of what the
 * connection carries. */
const STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES = 32 * 1024 * 1024;

/** Sessions whose connection-wide receive window is widened once, on their first request (Node
 * sets it on a session, not in the options a session is made with). */
class WideWindowSessions extends Http2SessionManager {
  readonly #widened = new WeakSet<object>();

  override async request(
    method: string,
    path: string,
    headers: OutgoingHttpHeaders,
    options: Omit<ClientSessionRequestOptions, "signal">,
  ): Promise<ClientHttp2Stream> {
    const stream = await super.request(method, path, headers, options);
    const session = stream.session;
    if (session && !this.#widened.has(session)) {
      this.#widened.add(session);
      session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    }
    return stream;
  }
}

export class ArtifactdClient {
  readonly artifacts: RpcClient<typeof ArtifactService>;
  readonly search: RpcClient<typeof SearchService>;
  readonly fallback: RpcClient<typeof FallbackService>;
  readonly admin: RpcClient<typeof AdminService>;
  readonly retention: RpcClient<typeof RetentionService>;
  readonly backups: RpcClient<typeof BackupService>;

  constructor(options: ClientOptions) {
    const headers: [string, string][] = [];
    const token = options.token ?? (options.apiKey ? undefined : process.env.ARTIFACTD_TOKEN);
    if (token) headers.push(["authorization", `Bearer ${token}`]);
    if (options.apiKey) headers.push(["x-api-key", options.apiKey]);
    const addHeaders: Interceptor = (next) => async (request) => {
      for (const [name, value] of headers) request.header.set(name, value);
      return next(request);
    };
    const transport = createGrpcTransport({
      baseUrl: options.baseUrl,
      interceptors: [addHeaders],
      sessionManager: new WideWindowSessions(options.baseUrl, undefined, {
        settings: { initialWindowSize: STREAM_WINDOW_BYTES },
      }),
    });
    this.artifacts = createClient(ArtifactService, transport);
    this.search = createClient(SearchService, transport);
    this.fallback = createClient(FallbackService, transport);
    this.admin = createClient(AdminService, transport);
    this.retention = createClient(RetentionService, transport);
    this.backups = createClient(BackupService, transport);
  }

  /** Backs up a project (a tenant when `project` is empty, one artifact with `artifactId`);
   * resolves once the backup is written to every store and verified. */
  async backup(
    tenant: string,
    project = "",
    options: { artifactId?: string; onProgress?: (progress: BackupProgress) => void } = {},
  ): Promise<Backup> {
    const stream = this.backups.createBackup({ tenant, project, artifactId: options.artifactId ?? "" });
    for await (const message of stream) {
      if (message.message.case === "backup") return message.message.value;
      if (message.message.case === "progress") options.onProgress?.(message.message.value);
    }
    throw new ConnectError("the backup stream ended without its result", Code.Unknown);
  }

  /** Restores from a backup or a point in time (see RestoreBackupRequest); resolves with
   * the changes made, or those a dry run would make. */
  async restore(
    request: MessageInitShape<typeof RestoreBackupRequestSchema>,
    onProgress?: (progress: BackupProgress) => void,
  ): Promise<RestoreResult> {
    for await (const message of this.backups.restoreBackup(request)) {
      if (message.message.case === "result") return message.message.value;
      if (message.message.case === "progress") onProgress?.(message.message.value);
    }
    throw new ConnectError("the restore stream ended without its result", Code.Unknown);
  }

  /** What a project's trash holds, most recently deleted first, fetched a page at a time. */
  async *listTrash(tenant: string, project: string, pageSize = 100): AsyncGenerator<TrashItem> {
    let pageToken = "";
    do {
      const page = await this.retention.listTrash({ tenant, project, pageSize, pageToken });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** A link that downloads one version over plain HTTP (ranges, ETag, conditional requests)
   * until it expires, for browsers and CDNs; the latest version unless one is named. */
  async downloadLink(
    tenant: string,
    project: string,
    artifactId: string,
    options: { version?: string; ttlSeconds?: number; inline?: boolean } = {},
  ): Promise<CreateDownloadLinkResponse> {
    return this.artifacts.createDownloadLink({
      tenant,
      project,
      artifactId,
      version: options.version ?? "",
      ttlSeconds: options.ttlSeconds ?? 0,
      inline: options.inline ?? false,
    });
  }

  /** The server's version, its background jobs and the health of each service it reports. */
  async serverStatus(): Promise<GetServerStatusResponse> {
    return this.admin.getServerStatus({});
  }

  /** Creates an artifact with its first version. */
  async create(
    tenant: string,
    project: string,
    artifactType: string,
    name: string,
    content: Content,
    options: UploadOptions = {},
  ): Promise<CreateArtifactResponse> {
    const header = {
      tenant,
      project,
      artifactType,
      name,
      tags: options.tags ?? [],
      metadata: options.metadata ?? {},
      initialVersion: options.initialVersion ?? "",
      changeMessage: options.changeMessage ?? "",
    };
    async function* messages(): AsyncIterable<CreateArtifactRequest> {
      yield create(CreateArtifactRequestSchema, { message: { case: "header", value: header } });
      yield* uploadParts(
        content,
        (piece) => create(CreateArtifactRequestSchema, { message: { case: "data", value: piece } }),
        (size, blake3Hex) =>
          create(CreateArtifactRequestSchema, { message: { case: "finish", value: { size, blake3: blake3Hex } } }),
        options.onProgress,
      );
    }
    return this.artifacts.createArtifact(messages());
  }

  /** Adds a version, bumped ("major" | "minor" | "patch") unless `explicitVersion` is given. */
  async update(
    tenant: string,
    project: string,
    artifactId: string,
    content: Content,
    options: { bump?: "major" | "minor" | "patch"; explicitVersion?: string; expectedCurrentVersion?: string; changeMessage?: string; onProgress?: (sent: number) => void } = {},
  ): Promise<UpdateArtifactResponse> {
    const bumps = { major: BumpKind.MAJOR, minor: BumpKind.MINOR, patch: BumpKind.PATCH };
    const nextVersion = options.explicitVersion
      ? { case: "explicitVersion" as const, value: options.explicitVersion }
      : { case: "bump" as const, value: bumps[options.bump ?? "patch"] };
    const header = {
      tenant,
      project,
      artifactId,
      nextVersion,
      expectedCurrentVersion: options.expectedCurrentVersion ?? "",
      changeMessage: options.changeMessage ?? "",
    };
    async function* messages(): AsyncIterable<UpdateArtifactRequest> {
      yield create(UpdateArtifactRequestSchema, { message: { case: "header", value: header } });
      yield* uploadParts(
        content,
        (piece) => create(UpdateArtifactRequestSchema, { message: { case: "data", value: piece } }),
        (size, blake3Hex) =>
          create(UpdateArtifactRequestSchema, { message: { case: "finish", value: { size, blake3: blake3Hex } } }),
        options.onProgress,
      );
    }
    return this.artifacts.updateArtifact(messages());
  }

  /** The content (or a range) as it arrives; a whole download is verified at its end. */
  async *download(
    tenant: string,
    project: string,
    artifactId: string,
    options: { version?: string; offset?: bigint; length?: bigint } = {},
  ): AsyncIterable<Uint8Array> {
    // Only a whole download can be checked against the version's hash: a range is not hashed.
    yield* this.#download(tenant, project, artifactId, options, (options.offset ?? 0n) === 0n);
  }

  async *#download(
    tenant: string,
    project: string,
    artifactId: string,
    options: { version?: string; offset?: bigint; length?: bigint },
    verify: boolean,
  ): AsyncIterable<Uint8Array> {
    const hasher = verify ? await createBLAKE3() : undefined;
    let announced: { size: bigint; length: bigint; blake3: string; version: string } | undefined;
    const offset = options.offset ?? 0n;
    for await (const response of this.artifacts.downloadArtifact({
      tenant,
      project,
      artifactId,
      version: options.version ?? "",
      offset,
      length: options.length ?? 0n,
    })) {
      if (response.message.case === "header") {
        announced = response.message.value;
      } else if (response.message.case === "data") {
        hasher?.update(response.message.value);
        yield response.message.value;
      }
    }
    if (hasher && announced && offset === 0n && announced.length === announced.size) {
      const digest = hasher.digest("hex");
      if (digest !== announced.blake3) {
        throw new IntegrityError(
          `artifact ${artifactId} version ${announced.version}: received bytes hash to ${digest}, the server announced ${announced.blake3}`,
        );
      }
    }
  }

  /** Downloads into `path`, resuming `<path>.part` and verifying the whole file before it
   * takes its final name. A resumed file that fails verification began with other content (a
   * part left by another version under the same path, or damaged since): it is removed and the
   * version fetched whole, once. A whole download that fails verification is removed and
   * rejects with IntegrityError. */
  async downloadTo(
    path: string,
    tenant: string,
    project: string,
    artifactId: string,
    options: { version?: string } = {},
  ): Promise<{ version: string; size: bigint; resumedFrom: bigint }> {
    const partial = `${path}.part`;
    const found = await this.artifacts.getArtifact({
      tenant,
      project,
      selector: { case: "artifactId", value: artifactId },
      version: options.version ?? "",
    });
    const expected = found.version as ArtifactVersion;
    let resumedFrom = BigInt((await stat(partial).catch(() => ({ size: 0 }))).size);
    if (resumedFrom > expected.size) {
      await rm(partial, { force: true });
      resumedFrom = 0n;
    }
    const fetchFrom = async (start: bigint): Promise<string> => {
      // The file's hash: the part already there, then every byte as it is written (hashed
      // once, never read back).
      const hasher = await createBLAKE3();
      if (start > 0n) {
        for await (const chunk of createReadStream(partial, { end: Number(start) - 1 })) hasher.update(chunk as Uint8Array);
      }
      if (start < expected.size) {
        const out = createWriteStream(partial, { flags: "a" });
        const pieces = this.#download(tenant, project, artifactId, { version: expected.version, offset: start }, false);
        for await (const piece of pieces) {
          hasher.update(piece);
          if (!out.write(piece)) await new Promise<void>((resolve) => out.once("drain", () => resolve()));
        }
        await new Promise<void>((resolve, reject) => out.end((error?: Error | null) => (error ? reject(error) : resolve())));
      }
      const handle = await open(partial, "a");
      await handle.sync();
      await handle.close();
      return hasher.digest("hex");
    };
    let digest = await fetchFrom(resumedFrom);
    if (digest !== expected.blake3 && resumedFrom > 0n) {
      await rm(partial, { force: true });
      resumedFrom = 0n;
      digest = await fetchFrom(0n);
    }
    if (digest !== expected.blake3) {
      await rm(partial, { force: true });
      throw new IntegrityError(`${path}: the download hashes to ${digest}, version ${expected.version} has ${expected.blake3}`);
    }
    await rename(partial, path);
    return { version: expected.version, size: expected.size, resumedFrom };
  }

  /** Every live artifact of a project, fetched a page at a time. */
  async *listArtifacts(tenant: string, project: string, pageSize = 100): AsyncIterable<Artifact> {
    let pageToken = "";
    do {
      const page = await this.artifacts.listArtifacts({ tenant, project, pageSize, pageToken });
      yield* page.artifacts;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Every hit of a query, best first, fetched a page at a time. */
  async *searchAll(tenant: string, project: string, query: string, pageSize = 20): AsyncIterable<SearchHit> {
    let pageToken = "";
    do {
      const page = await this.search.search({ tenant, project, query, pageSize, pageToken });
      yield* page.hits;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }
}

/** The gRPC code of a failed call (`Code.NotFound`, ...). */
export function codeOf(error: unknown): Code | undefined {
  return error instanceof ConnectError ? error.code : undefined;
}
