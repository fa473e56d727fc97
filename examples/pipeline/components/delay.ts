// DELAY_MS=n makes every step of an example component take n ms longer (a slow instance).
export function delay(): Promise<void> {
  const ms = Number(process.env.DELAY_MS || 0);
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}
