// Where a finished job's record is in etcd: its start batch's shared end records
// (<prefix>jobs/ended/<batch>/<n>, the batch named in the job's id) or a key of its own
// (<prefix>jobs/done/<id>).
import type { Etcd3 } from 'etcd3';
import { endBatchOf, findEnd, JobRecord } from '../../coordinator/jobs/record';

export async function endRecordOf(client: Etcd3, prefix: string, id: string): Promise<JobRecord | undefined> {
  const name = endBatchOf(id);
  const own = await client.get(`${prefix}jobs/done/${id}`).string();
  const shared = name ? Object.values(await client.getAll().prefix(`${prefix}jobs/ended/${name}/`).strings()) : [];
  return findEnd(own, shared, id);
}
