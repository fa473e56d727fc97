// The key layout of Tessera's state in etcd, in one place. Everything sits under one prefix.
export class Keys {
  constructor(readonly prefix: string) {}
  /** Election: one key per candidate, bound to its lease; the lowest create revision leads. */
  get election(): string { return `${this.prefix}election/`; }
  /** Coordinator membership: one ephemeral key per live coordinator process. */
  get coordinators(): string { return `${this.prefix}coordinators/`; }
  coordinator(id: string): string { return `${this.coordinators}${id}`; }
  get nodes(): string { return `${this.prefix}nodes/`; }
  node(id: string): string { return `${this.nodes}${id}`; }
  get apps(): string { return `${this.prefix}apps/`; }
  app(name: string): string { return `${this.apps}${name}`; }
  appVersions(name: string): string { return `${this.prefix}appversions/${name}/`; }
  appVersion(name: string, v: number): string { return `${this.appVersions(name)}${String(v).padStart(10, '0')}`; }
  get instances(): string { return `${this.prefix}instances/`; }
  instance(app: string, id: string): string { return `${this.instances}${app}/${id}`; }
  get quotas(): string { return `${this.prefix}quotas/`; }
  quota(kind: string): string { return `${this.quotas}${kind}`; }
  get registryCredentials(): string { return `${this.prefix}registry-credentials/`; }
  registryCredential(name: string): string { return `${this.registryCredentials}${name}`; }
  /** Secrets for components' environments (SetSecret), sealed with --secrets-key-file. */
  get secrets(): string { return `${this.prefix}secrets/`; }
  secret(name: string): string { return `${this.secrets}${name}`; }
  get pipelines(): string { return `${this.prefix}pipelines/`; }
  pipeline(name: string): string { return `${this.pipelines}${name}`; }
  /** External component instances (registered through Admin, with an expiring lease). */
  get externals(): string { return `${this.prefix}components/`; }
  external(id: string): string { return `${this.externals}${id}`; }
  /**
   * Jobs: started/<batch> (the starts of one event-loop turn's jobs, until each has its end),
   * ended/<batch>/<n> (the ends of those jobs, one value per write, under a retention lease), done/<id> (a
   * finished job's own end record: a job resumed by a new leader, an end too large to share, or
   * one written by versions before shared end records), active/<id> (a job's own start record,
   * written by versions before shared start records; still read by a new leader).
   */
  get jobs(): string { return `${this.prefix}jobs/`; }
  jobKey(key: string): string { return `${this.prefix}jobkeys/${key}`; }
  /** The highest storage format a leader of this cluster has written (common/version.ts STORAGE_FORMAT). */
  get storageFormat(): string { return `${this.prefix}cluster/storage-format`; }
  get events(): string { return `${this.prefix}events/`; }
  event(id: string): string { return `${this.events}${id}`; }
}
