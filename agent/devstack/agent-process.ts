import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Runs the real, built agent (`node dist/cli/main.js ...`) as a child process and reads its JSON log
 * lines back. Used by the demo and by the integration tests, so both drive exactly what a device runs.
 */
export interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the repository root (package.json)');
    dir = parent;
  }
  return dir;
}

export function agentEntryPoint(): string {
  return join(repoRoot(), 'dist', 'cli', 'main.js');
}

export interface AgentProcessOptions {
  args: string[];
  /** The program to run (default: the checkout's dist/cli/main.js; e.g. an unpacked release's bundle). */
  entry?: string;
  env?: NodeJS.ProcessEnv;
  /** Echo the agent's stdout/stderr to ours (the demo does; tests do not). */
  echo?: (line: string) => void;
}

export class AgentProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  /** Everything the process wrote, raw, for secret-leak checks. */
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: { predicate: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  private partial = '';

  constructor(options: AgentProcessOptions) {
    const entry = options.entry ?? agentEntryPoint();
    if (!existsSync(entry)) throw new Error(`${entry} does not exist: run "npm run build" first`);
    this.child = spawn(process.execPath, [entry, ...options.args], {
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.output += chunk;
      this.partial += chunk;
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        const text = this.partial.slice(0, nl);
        this.partial = this.partial.slice(nl + 1);
        options.echo?.(text);
        this.accept(text);
      }
    });
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.output += chunk;
      options.echo?.(chunk.trimEnd());
    });
  }

  private accept(text: string): void {
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      return;
    }
    this.lines.push(line);
    this.waiters = this.waiters.filter((w) => {
      if (!w.predicate(line)) return true;
      w.resolve(line);
      return false;
    });
  }

  /** Resolves with the first log line (already seen or future) matching; rejects after timeoutMs. */
  waitFor(predicate: (l: LogLine) => boolean, timeoutMs = 20_000, what = 'log line'): Promise<LogLine> {
    const seen = this.lines.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last lines:\n${this.lines.slice(-8).map((l) => JSON.stringify(l)).join('\n')}\n${this.output.slice(-500)}`));
      }, timeoutMs);
      const done = (l: LogLine) => {
        clearTimeout(timer);
        resolve(l);
      };
      this.waiters.push({ predicate, resolve: done });
      void this.exited.then(({ code, signal }) => {
        if (this.waiters.some((w) => w.resolve === done)) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w.resolve !== done);
          reject(new Error(`agent exited (code ${code}, signal ${signal}) before ${what}; output:\n${this.output.slice(-2000)}`));
        }
      });
    });
  }

  waitForMessage(fragment: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((l) => typeof l.msg === 'string' && l.msg.includes(fragment), timeoutMs, `"${fragment}"`);
  }

  /** SIGTERM, then SIGKILL if it has not exited within killAfterMs. Resolves with the exit status. */
  async stop(killAfterMs = 8_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), killAfterMs);
      const status = await this.exited;
      clearTimeout(timer);
      return status;
    }
    return this.exited;
  }
}
