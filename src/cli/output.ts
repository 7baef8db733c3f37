// Terminal output conventions of the CLI: colour only on a TTY and never with NO_COLOR
// (util.styleText honours both on Node 20), and a progress line on stderr for long runs.

import { styleText } from 'node:util';

type Style = Parameters<typeof styleText>[0];

export function colour(style: Style, text: string, stream: NodeJS.WriteStream = process.stdout): string {
  if (!stream.isTTY || process.env['NO_COLOR'] !== undefined) return text;
  return styleText(style, text);
}

/** A one-line progress indicator on stderr, shown only on a TTY. */
export function progress(text: string): void {
  if (!process.stderr.isTTY) return;
  process.stderr.write(`\r\x1b[2K${text}`);
}

export function progressDone(): void {
  if (process.stderr.isTTY) process.stderr.write('\r\x1b[2K');
}
