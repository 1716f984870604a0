// The startup "options" parameter: command-line-style settings, split and escaped as PostgreSQL does.
import { protocolViolation } from '../errors.js';

export type StartupOption = { name: string; value: string };

/** C isspace() in the C locale, which is what PostgreSQL splits on. */
const isSpace = (c: string): boolean =>
  c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';

/**
 * Splits like PostgreSQL's pg_split_opts: whitespace separates arguments and a
 * backslash makes the next character literal. A trailing lone backslash is
 * dropped, as PostgreSQL does.
 */
export function splitStartupOptions(s: string): string[] {
  const args: string[] = [];
  let i = 0;
  while (i < s.length) {
    while (i < s.length && isSpace(s[i]!)) i++;
    if (i >= s.length) break;
    let arg = '';
    let escaped = false;
    for (; i < s.length; i++) {
      const c = s[i]!;
      if (!escaped && isSpace(c)) break;
      if (!escaped && c === '\\') {
        escaped = true;
      } else {
        escaped = false;
        arg += c;
      }
    }
    args.push(arg);
  }
  return args;
}

/**
 * GUC names compare case-insensitively with ASCII-only folding, and '-' means '_'
 * (PostgreSQL's ParseLongOption). Folding only ASCII keeps us from equating names
 * the server would not (e.g. the Kelvin sign with 'k').
 */
export const normalizeSettingName = (name: string): string =>
  name.replace(/[A-Z]/g, (c) => c.toLowerCase()).replaceAll('-', '_');

function parseSetting(text: string, flag: string): StartupOption {
  const eq = text.indexOf('=');
  if (eq < 0) throw protocolViolation(`invalid startup options: ${flag}${text} requires a value`);
  const name = normalizeSettingName(text.slice(0, eq));
  if (name === '') throw protocolViolation(`invalid startup options: ${flag}${text} has an empty setting name`);
  return { name, value: text.slice(eq + 1) };
}

/**
 * Accepts only the forms that set run-time parameters: "-c name=value",
 * "-cname=value" and "--name=value". Other server switches and bare words are
 * refused rather than passed through, since the proxy rebuilds this string.
 */
export function parseStartupOptions(s: string): StartupOption[] {
  const args = splitStartupOptions(s);
  const settings: StartupOption[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '-c') {
      const next = args[++i];
      if (next === undefined) throw protocolViolation('invalid startup options: -c requires a value');
      settings.push(parseSetting(next, '-c '));
    } else if (arg.startsWith('-c')) {
      settings.push(parseSetting(arg.slice(2), '-c'));
    } else if (arg.startsWith('--')) {
      settings.push(parseSetting(arg.slice(2), '--'));
    } else {
      throw protocolViolation(
        `invalid startup options: unsupported argument "${arg}" (only -c name=value and --name=value are accepted)`,
      );
    }
  }
  return settings;
}

const escapeArgument = (s: string): string => s.replace(/[\\ \t\n\v\f\r]/g, (c) => `\\${c}`);

/** Inverse of parseStartupOptions for normalised names: parse(format(list)) deep-equals list. */
export function formatStartupOptions(list: readonly StartupOption[]): string {
  return list
    .map(({ name, value }) => {
      if (name === '' || name.includes('=') || name.includes('\0') || value.includes('\0')) {
        throw new TypeError(`setting ${JSON.stringify(name)} cannot be written as a startup option`);
      }
      return `-c ${escapeArgument(name)}=${escapeArgument(value)}`;
    })
    .join(' ');
}
