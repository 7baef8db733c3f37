// `pasidkit serve`: the wire server of ../shared/spec/WIRE.md on a Unix socket and/or loopback
// TCP, until SIGINT or SIGTERM (then a graceful shutdown: frames received whole finish, clients
// are closed, the socket file is removed). The server itself is src/server/server.ts; this
// module only turns flags into its options. Exit codes: 0 after a clean shutdown, 2 for a usage
// or input error (bad flag, unreadable or invalid machine file, an address that cannot be used),
// always with a one-line message and never a stack trace.

import { parseArgs } from 'node:util';
import { createHost, loadMachineFile, MachineFileError } from '../server/host.ts';
import { DEFAULT_MAX_FRAME } from '../server/protocol.ts';
import {
  DEFAULT_MAX_FILES,
  DEFAULT_MAX_MEMORY,
  isLoopback,
  type ListenTarget,
  WireServer,
} from '../server/server.ts';

export const SERVE_HELP = `Usage: pasidkit serve [--socket PATH] [--listen HOST:PORT] [options]

Serves an emulated host's /dev/iommu and VFIO device files over the wire protocol
(../shared/spec/WIRE.md): each connection is one process with its own fd table and memory.
Runs until SIGINT or SIGTERM, then finishes the frames it has, closes every client and
removes the socket file. Logs one JSON line per connection event on stderr.

  --socket PATH        Unix socket to listen on (default ./pasidkit.sock when --listen is not given)
  --listen HOST:PORT   also (or only) listen on TCP; HOST must be a loopback address
                       (127.0.0.1, ::1, localhost) unless --allow-remote; port 0 picks one
  --allow-remote       allow a non-loopback --listen address (anyone who can connect gets root
                       on the emulated host)
  --machine FILE       the emulated machine: YAML, a scenario's machine: block (or a scenario
                       file); /dev/vfio/devices/vfioN is its device N behind the Intel VT-d
                       driver. Default: two selftest mock devices as vfio0 and vfio1
  --max-frame SIZE     largest frame (default 16MiB); bigger frames are discarded with -E2BIG
  --max-files N        open files per connection (default ${DEFAULT_MAX_FILES}; then EMFILE)
  --max-memory SIZE    mapped memory per connection (default 1GiB; then ENOMEM)
  --unprivileged       connections run as an ordinary user (no CAP_SYS_RESOURCE, CAP_IPC_LOCK)
  --no-test-cmd        no IOMMU_TEST_CMD and no selftest mock devices through it
  --verbose            one log line per request as well
  -h, --help           show this help

SIZE is bytes, or a number with K, M, G (or KiB, MiB, GiB).
Exit codes: 0 after a clean shutdown, 2 usage or input error.`;

class ServeUsageError extends Error {}

const MIN_FRAME = 64;
const MAX_FRAME_LIMIT = 1024 * 1024 * 1024;

function parseSize(flag: string, v: string): number {
  const m = /^(\d+)\s*(|k|kib|m|mib|g|gib)$/i.exec(v.trim());
  if (!m) throw new ServeUsageError(`${flag}: ${JSON.stringify(v)} is not a size (bytes, or with K, M, G)`);
  const unit = m[2]!.toLowerCase()[0];
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n)) throw new ServeUsageError(`${flag}: ${v} is too large`);
  return n;
}

function parseCount(flag: string, v: string): number {
  if (!/^\d+$/.test(v.trim())) throw new ServeUsageError(`${flag}: ${JSON.stringify(v)} is not a count`);
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new ServeUsageError(`${flag}: must be at least 1`);
  return n;
}

/** HOST:PORT or [V6]:PORT. */
export function parseListen(v: string, allowRemote: boolean): ListenTarget {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(v.trim());
  if (!m) throw new ServeUsageError(`--listen: expected HOST:PORT, got ${JSON.stringify(v)}`);
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  const port = Number(m[2]);
  if (port > 65535) throw new ServeUsageError(`--listen: port ${port} is above 65535`);
  if (!allowRemote && !isLoopback(host))
    throw new ServeUsageError(
      `--listen: ${host} is not a loopback address; remote clients need --allow-remote`,
    );
  return { host, port, allowRemote };
}

interface ServeConfig {
  targets: ListenTarget[];
  machineFile: string | null;
  maxFrame: number;
  maxFiles: number;
  maxMemory: number;
  privileged: boolean;
  testCmd: boolean;
  verbose: boolean;
}

function parseServeArgs(args: string[]): ServeConfig | 'help' {
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    const r = parseArgs({
      args,
      options: {
        help: { type: 'boolean', short: 'h' },
        socket: { type: 'string' },
        listen: { type: 'string' },
        'allow-remote': { type: 'boolean' },
        machine: { type: 'string' },
        'max-frame': { type: 'string' },
        'max-files': { type: 'string' },
        'max-memory': { type: 'string' },
        unprivileged: { type: 'boolean' },
        'no-test-cmd': { type: 'boolean' },
        verbose: { type: 'boolean' },
      },
      allowPositionals: true,
      strict: true,
    });
    values = r.values as Record<string, string | boolean | undefined>;
    positionals = r.positionals;
  } catch (e) {
    throw new ServeUsageError((e as Error).message);
  }
  if (values['help']) return 'help';
  if (positionals.length > 0) throw new ServeUsageError(`unexpected argument ${positionals[0]}`);
  const allowRemote = values['allow-remote'] === true;
  const targets: ListenTarget[] = [];
  const socket = values['socket'] as string | undefined;
  const listen = values['listen'] as string | undefined;
  if (socket !== undefined) {
    if (socket === '') throw new ServeUsageError('--socket: empty path');
    targets.push({ path: socket });
  }
  if (listen !== undefined) targets.push(parseListen(listen, allowRemote));
  if (targets.length === 0) targets.push({ path: './pasidkit.sock' });
  const maxFrame =
    values['max-frame'] === undefined
      ? DEFAULT_MAX_FRAME
      : parseSize('--max-frame', values['max-frame'] as string);
  if (maxFrame < MIN_FRAME || maxFrame > MAX_FRAME_LIMIT)
    throw new ServeUsageError(`--max-frame: must be between ${MIN_FRAME} bytes and 1GiB`);
  const maxMemory =
    values['max-memory'] === undefined
      ? DEFAULT_MAX_MEMORY
      : parseSize('--max-memory', values['max-memory'] as string);
  if (maxMemory < 4096) throw new ServeUsageError('--max-memory: must be at least one page (4096)');
  return {
    targets,
    machineFile: (values['machine'] as string | undefined) ?? null,
    maxFrame,
    maxFiles:
      values['max-files'] === undefined
        ? DEFAULT_MAX_FILES
        : parseCount('--max-files', values['max-files'] as string),
    maxMemory,
    privileged: values['unprivileged'] !== true,
    testCmd: values['no-test-cmd'] !== true,
    verbose: values['verbose'] === true,
  };
}

function usage(msg: string): number {
  process.stderr.write(`pasidkit serve: ${msg}\n(see pasidkit serve --help)\n`);
  return 2;
}

/** Runs the server until SIGINT/SIGTERM; resolves with the exit code. */
export async function cmdServe(args: string[]): Promise<number> {
  let cfg: ServeConfig | 'help';
  try {
    cfg = parseServeArgs(args);
  } catch (e) {
    if (e instanceof ServeUsageError) return usage(e.message);
    throw e;
  }
  if (cfg === 'help') {
    console.log(SERVE_HELP);
    return 0;
  }
  // The log is best effort: a reader of stderr that goes away must not take the server down.
  process.stderr.on('error', () => {});
  let server: WireServer;
  try {
    const machine = cfg.machineFile === null ? null : loadMachineFile(cfg.machineFile);
    server = new WireServer({
      host: createHost(machine, { testCmd: cfg.testCmd }),
      privileged: cfg.privileged,
      maxFrame: cfg.maxFrame,
      maxFiles: cfg.maxFiles,
      maxMemory: cfg.maxMemory,
      verbose: cfg.verbose,
    });
  } catch (e) {
    if (e instanceof MachineFileError) return usage(e.message);
    throw e;
  }
  try {
    for (const t of cfg.targets) await server.listen(t);
  } catch (e) {
    await server.close();
    const err = e as NodeJS.ErrnoException;
    const where = cfg.targets.map((t) => ('path' in t ? t.path : `${t.host}:${t.port}`)).join(', ');
    return usage(`cannot listen on ${where}: ${err.message}`);
  }
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await server.close();
  return 0;
}
