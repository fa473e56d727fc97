// Runs async read-modify-write sections one at a time. A section that reads a record, awaits a
// write, then stores its copy loses any change made to the record meanwhile (a lost update);
// writers of the same records go through one Serial so each reads what the last one wrote.
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  /** Runs fn after every section queued before it has settled; a failure does not stop the next. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}
