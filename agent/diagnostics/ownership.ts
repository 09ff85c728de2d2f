import { lchown } from 'node:fs/promises';
import { join } from 'node:path';
import { walkTree } from './probes.js';

/**
 * After root wrote into the agent's state directory (`sudo mg-device-agent bootstrap --once`), gives
 * every entry that root created to the directory's owner: the agent runs as its own user and could
 * neither read nor replace root's files. Nothing to do unless running as root. Returns how many
 * entries changed hands.
 */
export async function matchStateDirOwner(dir: string): Promise<number> {
  if (process.getuid?.() !== 0) return 0;
  const entries = await walkTree(dir);
  const root = entries.find((e) => e.path === '');
  if (!root) return 0;
  let changed = 0;
  for (const entry of entries) {
    if (entry.uid === root.uid && entry.gid === root.gid) continue;
    // lchown: the `current` symlink itself, never what it points at.
    await lchown(join(dir, entry.path), root.uid, root.gid);
    changed++;
  }
  return changed;
}
