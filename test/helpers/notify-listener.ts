import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A stand-in for PID 1's notification socket: a real AF_UNIX datagram socket (Python, since Node
 * has none) that records each datagram with the time it arrived and the sender's credentials, and
 * closes the file descriptors that come with BARRIER=1 the way systemd does (otherwise
 * systemd-notify would wait for its barrier in vain).
 */
const LISTENER_PY = String.raw`
import array, json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("listening", flush=True)
while True:
    data, ancillary, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    received_usec = time.monotonic_ns() // 1000
    pid = None
    fds = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % 4])
            fds = list(a)
    for fd in fds:
        os.close(fd)
    print(json.dumps({"at": time.time() * 1000, "receivedUsec": received_usec, "pid": pid, "fds": len(fds), "text": data.decode()}), flush=True)
`;

export interface NotifyMessage {
  /** Wall-clock arrival time (ms). */
  at: number;
  /** Arrival time on CLOCK_MONOTONIC (µs), the clock systemd compares MONOTONIC_USEC= with. */
  receivedUsec: number;
  /** The sender's PID (SCM_CREDENTIALS). */
  pid: number | null;
  /** How many file descriptors came with it (BARRIER=1 carries one). */
  fds: number;
  text: string;
  lines: string[];
}

export interface NotifyListener {
  socketPath: string;
  /** Every datagram, each BARRIER=1 included, in arrival order. */
  datagrams: NotifyMessage[];
  /** Messages other than the BARRIER=1 that follows each one, in arrival order. */
  messages: NotifyMessage[];
  /** Messages containing this exact line (e.g. "READY=1"). */
  with(line: string): NotifyMessage[];
  waitFor(predicate: (messages: NotifyMessage[]) => boolean, deadlineMs?: number, what?: string): Promise<void>;
  close(): void;
}

/** What a system needs for the listener; tests skip loudly without it (and fail under CI=true). */
export function notifyToolsMissing(): string[] {
  const missing: string[] = [];
  if (spawnSync('python3', ['--version']).status !== 0) missing.push('python3');
  if (spawnSync('systemd-notify', ['--help']).error) missing.push('systemd-notify');
  return missing;
}

export async function startNotifyListener(dir: string): Promise<NotifyListener> {
  const script = join(dir, 'notify-listener.py');
  writeFileSync(script, LISTENER_PY);
  const socketPath = join(dir, 'notify.sock');
  const child: ChildProcess = spawn('python3', [script, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const datagrams: NotifyMessage[] = [];
  const messages: NotifyMessage[] = [];
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`notify listener exited early (${code})`)));
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk;
      let newline: number;
      while ((newline = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line === 'listening') {
          resolve();
          continue;
        }
        const parsed = JSON.parse(line) as Omit<NotifyMessage, 'lines'>;
        const datagram: NotifyMessage = { ...parsed, lines: parsed.text.split('\n') };
        datagrams.push(datagram);
        if (datagram.text !== 'BARRIER=1') messages.push(datagram);
      }
    });
  });
  const listener: NotifyListener = {
    socketPath,
    datagrams,
    messages,
    with: (line) => messages.filter((m) => m.lines.includes(line)),
    async waitFor(predicate, deadlineMs = 15_000, what = 'the expected messages') {
      const end = Date.now() + deadlineMs;
      while (!predicate(messages)) {
        if (Date.now() > end) throw new Error(`NOTIFY_SOCKET never got ${what}; got ${JSON.stringify(messages.map((m) => m.lines))}`);
        await sleep(20);
      }
    },
    close: () => {
      child.kill('SIGKILL');
    },
  };
  return listener;
}
