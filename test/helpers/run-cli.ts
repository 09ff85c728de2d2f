import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { agentEntryPoint } from '../../agent/devstack/agent-process.js';
import { cleanAgentEnv } from '../../agent/devstack/scenario.js';

/** One run of the built CLI (node dist/cli/main.js ..., or `entry`) to its exit, stdout and stderr apart. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; entry?: string } = {}): Promise<CliRun> {
  const entry = options.entry ?? agentEntryPoint();
  if (!existsSync(entry)) throw new Error(`${entry} does not exist: run "npm run build" first`);
  const child = spawn(process.execPath, [entry, ...args], { env: options.env ?? cleanAgentEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mg-device-agent ${args.join(' ')} did not exit within ${options.timeoutMs ?? 20_000} ms:\n${stdout}\n${stderr}`));
    }, options.timeoutMs ?? 20_000);
    // 'close' comes after the exit and after the last output.
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Every entry under `dir` with its type, mode and content digest (or link target): equal snapshots
 * mean the directory is byte-for-byte unchanged. A missing directory snapshots as "(absent)".
 */
export function snapshotTree(dir: string): string {
  if (!existsSync(dir)) return '(absent)';
  const lines: string[] = [];
  const walk = (path: string, rel: string): void => {
    const info = lstatSync(path);
    const mode = (info.mode & 0o7777).toString(8);
    if (info.isSymbolicLink()) lines.push(`${rel} link ${readlinkSync(path)}`);
    else if (info.isDirectory()) {
      lines.push(`${rel}/ ${mode}`);
      for (const name of readdirSync(path).sort()) walk(join(path, name), `${rel}/${name}`);
    } else lines.push(`${rel} ${mode} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`);
  };
  walk(dir, '.');
  return lines.join('\n');
}
