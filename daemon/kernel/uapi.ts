/**
 * The kernel's own structs (uapi <linux/bpf.h>) that egressd reads: with
 * abi.ts (egressd's structs), the only code that reads kernel struct bytes.
 * test/unit/abi.test.ts compares these layouts with the system's header.
 */

/**
 * The leading members read from bpf_obj_get_info_by_fd; a buffer of `size`
 * bytes is enough for them (the kernel fills at most what it is given).
 */
export const UAPI_LAYOUT = {
  bpf_prog_info: { size: 8, offsets: { type: 0, id: 4 } },
  /** Up to the cgroup member of its union: cgroup_id, then attach_type. */
  bpf_link_info: { size: 32, offsets: { type: 0, id: 4, prog_id: 8, cgroup_id: 16, attach_type: 24 } },
} as const;

export function decodeProgInfo(b: Buffer): { id: number } {
  return { id: b.readUInt32LE(UAPI_LAYOUT.bpf_prog_info.offsets.id) };
}

/** The program and the cgroup of a cgroup link; cgroupId is 0n once the cgroup is gone. */
export function decodeCgroupLinkInfo(b: Buffer): { progId: number; cgroupId: bigint } {
  const o = UAPI_LAYOUT.bpf_link_info.offsets;
  return { progId: b.readUInt32LE(o.prog_id), cgroupId: b.readBigUInt64LE(o.cgroup_id) };
}
