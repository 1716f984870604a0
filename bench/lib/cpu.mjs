// CPU time of a process tree from /proc (Linux), and what it comes to per transaction.
import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** utime and stime (ticks) of a process and all its descendants: a primary's workers count with it. */
export function treeTicks(root) {
  const parentOf = new Map();
  const ticks = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    parentOf.set(Number(entry), Number(f[1]));
    ticks.set(Number(entry), { user: Number(f[11]), sys: Number(f[12]) });
  }
  const inTree = (pid) => {
    for (let p = pid; p > 1; p = parentOf.get(p) ?? 0) if (p === root) return true;
    return false;
  };
  let user = 0;
  let sys = 0;
  for (const [pid, t] of ticks) {
    if (!inTree(pid)) continue;
    user += t.user;
    sys += t.sys;
  }
  return { user, sys };
}

/** Microseconds of user and system CPU per transaction between two treeTicks readings. */
export function cpuPerTransaction(before, after, transactions) {
  const us = (ticks) => (ticks * 1e6) / TICKS_PER_SECOND / transactions;
  return { userUs: us(after.user - before.user), sysUs: us(after.sys - before.sys) };
}
