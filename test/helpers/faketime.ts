// A process's own system clock, moved: libfaketime (LD_PRELOAD) offsets what the process reads
// from CLOCK_REALTIME by what a file says ("+60s", "-30s", "+0"), read again at every call, so a
// test can step the clock of a running coordinator or agent. CLOCK_MONOTONIC is left alone, as
// an NTP step or a host with a wrong clock would leave it. scripts/setup.sh installs libfaketime.
import * as fs from 'node:fs';

/** The env that runs a process with its clock offset by `offset`, changed later with stepClock(file, ...). */
export function fakedClock(file: string, offset = '+0'): NodeJS.ProcessEnv {
  const lib = fs.readdirSync('/usr/lib').map((d) => `/usr/lib/${d}/faketime/libfaketime.so.1`).find((f) => fs.existsSync(f));
  if (!lib) throw new Error('libfaketime is not installed (apt-get install libfaketime; scripts/setup.sh does)');
  stepClock(file, offset);
  return { LD_PRELOAD: lib, FAKETIME_TIMESTAMP_FILE: file, FAKETIME_NO_CACHE: '1', DONT_FAKE_MONOTONIC: '1' };
}

/** Sets the offset of the processes started with fakedClock(file): the clock steps at their next reading. */
export function stepClock(file: string, offset: string): void {
  fs.writeFileSync(file, `${offset}\n`);
}
