// Bit-exact codecs for the VT-d in-memory structures (vtd-model.md section A: root, context,
// PASID-directory, PASID-table and paging entries; section C.3: invalidation descriptors; B.6:
// fault recording registers; E: page-request descriptors).
//
// A structure is an array of 64-bit qwords held as u32 halves (lo, hi) in a Uint32Array, the
// same representation the translation hot path reads from emulated memory. Each codec lists
// every bit of every qword exactly once (checked when the codec is built), so decode followed by
// encode reproduces any bit pattern, reserved bits included, and encode followed by decode
// reproduces any in-range field values.
//
// Field kinds: 'n' is a plain number of the field's value (width <= 52); 'a' is an address
// field kept in place (value = the bits at their own position, so a 4 KiB-aligned pointer reads
// as the byte address; only for fields ending at or below bit 51); 'b' is a bigint kept in place
// (for 64-bit-wide or full-width address fields such as descriptor ADDR, which can hold
// canonical upper-half virtual addresses).
//
// The hot path does not use these objects; it reads the same bits inline.

export type FieldKind = 'n' | 'a' | 'b';

export interface FieldSpec<N extends string = string, K extends FieldKind = FieldKind> {
  readonly name: N;
  /** qword index */
  readonly q: number;
  /** lowest bit within the qword */
  readonly lo: number;
  /** width in bits */
  readonly w: number;
  readonly kind: K;
}

function f<N extends string, K extends FieldKind = 'n'>(
  name: N,
  q: number,
  lo: number,
  w: number,
  kind?: K,
): FieldSpec<N, K> {
  return { name, q, lo, w, kind: (kind ?? 'n') as K };
}

export type Decoded<S extends readonly FieldSpec[]> = {
  [F in S[number] as F['name']]: F['kind'] extends 'b' ? bigint : number;
};

const TWO32 = 4294967296;

function maskOf(w: number): number {
  return w >= 32 ? 0xffffffff : (1 << w) - 1;
}

/** Reads bits [lo, lo+w) of qword q (w <= 52, so the result is an exact number). */
export function getBits(words: ArrayLike<number>, off: number, q: number, lo: number, w: number): number {
  const L = words[off + 2 * q]! >>> 0;
  const H = words[off + 2 * q + 1]! >>> 0;
  if (lo >= 32) return ((H >>> (lo - 32)) & maskOf(w)) >>> 0;
  if (lo + w <= 32) return ((L >>> lo) & maskOf(w)) >>> 0;
  const lowBits = 32 - lo;
  return (L >>> lo) + ((H & maskOf(w - lowBits)) >>> 0) * 2 ** lowBits;
}

/** Writes bits [lo, lo+w) of qword q from an exact number value < 2^w. */
export function setBits(words: Uint32Array, off: number, q: number, lo: number, w: number, v: number): void {
  const li = off + 2 * q;
  const hi = li + 1;
  if (lo >= 32) {
    const m = (maskOf(w) << (lo - 32)) >>> 0;
    words[hi] = (words[hi]! & ~m) | ((v << (lo - 32)) & m);
    return;
  }
  if (lo + w <= 32) {
    const m = (maskOf(w) << lo) >>> 0;
    words[li] = (words[li]! & ~m) | ((v << lo) & m);
    return;
  }
  const lowBits = 32 - lo;
  const lowPart = v % 2 ** lowBits;
  const highPart = (v - lowPart) / 2 ** lowBits;
  const ml = (maskOf(lowBits) << lo) >>> 0;
  words[li] = (words[li]! & ~ml) | ((lowPart << lo) & ml);
  const mh = maskOf(w - lowBits);
  words[hi] = (words[hi]! & ~mh) | (highPart & mh);
}

function getBig(words: ArrayLike<number>, off: number, q: number, lo: number, w: number): bigint {
  const v = (BigInt(words[off + 2 * q + 1]! >>> 0) << 32n) | BigInt(words[off + 2 * q]! >>> 0);
  const m = ((1n << BigInt(w)) - 1n) << BigInt(lo);
  return v & m;
}

function setBig(words: Uint32Array, off: number, q: number, lo: number, w: number, v: bigint): void {
  const m = ((1n << BigInt(w)) - 1n) << BigInt(lo);
  let cur = (BigInt(words[off + 2 * q + 1]!) << 32n) | BigInt(words[off + 2 * q]!);
  cur = (cur & ~m) | (v & m);
  words[off + 2 * q] = Number(cur & 0xffffffffn);
  words[off + 2 * q + 1] = Number(cur >> 32n);
}

export class StructCodec<S extends readonly FieldSpec[]> {
  readonly name: string;
  readonly qwords: number;
  readonly fields: S;
  /** Field values encode() uses when the caller omits them (descriptor type bits). */
  private readonly fixed: Readonly<Record<string, number>>;

  constructor(name: string, qwords: number, fields: S, fixed: Readonly<Record<string, number>> = {}) {
    this.name = name;
    this.qwords = qwords;
    this.fields = fields;
    this.fixed = fixed;
    // Every bit of every qword belongs to exactly one field: that is what makes round trips exact.
    const seen = new Uint8Array(qwords * 64);
    for (const fs of fields) {
      if (fs.q < 0 || fs.q >= qwords || fs.lo < 0 || fs.w < 1 || fs.lo + fs.w > 64) {
        throw new Error(`${name}.${fs.name}: field out of range`);
      }
      if (fs.kind !== 'b' && fs.w > 52)
        throw new Error(`${name}.${fs.name}: wider than 52 bits needs kind 'b'`);
      if (fs.kind === 'a' && fs.lo + fs.w > 52)
        throw new Error(`${name}.${fs.name}: kind 'a' must end by bit 51`);
      for (let b = fs.lo; b < fs.lo + fs.w; b++) {
        if (seen[fs.q * 64 + b])
          throw new Error(`${name}.${fs.name}: bit ${b} of qword ${fs.q} claimed twice`);
        seen[fs.q * 64 + b] = 1;
      }
    }
    const gap = seen.indexOf(0);
    if (gap >= 0) throw new Error(`${name}: bit ${gap % 64} of qword ${gap >> 6} belongs to no field`);
  }

  get words(): number {
    return this.qwords * 2;
  }

  decode(words: ArrayLike<number>, off = 0): Decoded<S> {
    const out: Record<string, number | bigint> = {};
    for (const fs of this.fields) {
      if (fs.kind === 'b') out[fs.name] = getBig(words, off, fs.q, fs.lo, fs.w);
      else {
        const v = getBits(words, off, fs.q, fs.lo, fs.w);
        out[fs.name] = fs.kind === 'a' ? v * 2 ** fs.lo : v;
      }
    }
    return out as Decoded<S>;
  }

  /** Encodes into `out` (fresh and zeroed by default); fields left out are 0 (or their fixed value). */
  encode(values: Partial<Decoded<S>>, out?: Uint32Array, off = 0): Uint32Array {
    const w = out ?? new Uint32Array(this.words);
    const vals = values as Record<string, number | bigint | undefined>;
    for (const fs of this.fields) {
      const given = vals[fs.name];
      if (fs.kind === 'b') {
        const v = given === undefined ? 0n : BigInt(given);
        const m = ((1n << BigInt(fs.w)) - 1n) << BigInt(fs.lo);
        if ((v & ~m) !== 0n)
          throw new RangeError(`${this.name}.${fs.name}: 0x${v.toString(16)} has bits outside the field`);
        setBig(w, off, fs.q, fs.lo, fs.w, v);
        continue;
      }
      let v = given === undefined ? (this.fixed[fs.name] ?? 0) : Number(given);
      if (fs.kind === 'a') {
        if (v % 2 ** fs.lo !== 0)
          throw new RangeError(`${this.name}.${fs.name}: 0x${v.toString(16)} is not aligned`);
        v /= 2 ** fs.lo;
      }
      if (!Number.isInteger(v) || v < 0 || v >= 2 ** fs.w) {
        throw new RangeError(`${this.name}.${fs.name}: ${v} does not fit in ${fs.w} bits`);
      }
      setBits(w, off, fs.q, fs.lo, fs.w, v);
    }
    return w;
  }
}

// ---------------------------------------------------------------------------------------------
// A.1 Root entries

/** Legacy (TTM=00) root entry. */
export const ROOT_ENTRY = new StructCodec('root_entry', 2, [
  f('p', 0, 0, 1),
  f('rsvd0', 0, 1, 11),
  f('ctp', 0, 12, 40, 'a'),
  f('ctpHi', 0, 52, 12),
  f('rsvd1', 1, 0, 64, 'b'),
] as const);

/** Scalable-mode (TTM=01) root entry: lower half for devfn 0x00-0x7F, upper for 0x80-0xFF. */
export const SM_ROOT_ENTRY = new StructCodec('sm_root_entry', 2, [
  f('lp', 0, 0, 1),
  f('rsvd0', 0, 1, 11),
  f('lctp', 0, 12, 40, 'a'),
  f('lctpHi', 0, 52, 12),
  f('up', 1, 0, 1),
  f('rsvd1', 1, 1, 11),
  f('uctp', 1, 12, 40, 'a'),
  f('uctpHi', 1, 52, 12),
] as const);

// A.2 Context entries

/** Legacy (TTM=00) context entry, 128-bit. */
export const CONTEXT_ENTRY = new StructCodec('context_entry', 2, [
  f('p', 0, 0, 1),
  f('fpd', 0, 1, 1),
  f('tt', 0, 2, 2),
  f('rsvd0', 0, 4, 8),
  f('slptptr', 0, 12, 40, 'a'),
  f('slptptrHi', 0, 52, 12),
  f('aw', 1, 0, 3),
  f('ign', 1, 3, 4),
  f('rsvd1', 1, 7, 1),
  f('did', 1, 8, 16),
  f('rsvd2', 1, 24, 40),
] as const);

/** Scalable-mode context entry, 256-bit. */
export const SM_CONTEXT_ENTRY = new StructCodec('sm_context_entry', 4, [
  f('p', 0, 0, 1),
  f('fpd', 0, 1, 1),
  f('dte', 0, 2, 1),
  f('paside', 0, 3, 1),
  f('pre', 0, 4, 1),
  f('rsvd0', 0, 5, 4),
  f('pdts', 0, 9, 3),
  f('pasidDirPtr', 0, 12, 40, 'a'),
  f('pasidDirPtrHi', 0, 52, 12),
  f('ridPasid', 1, 0, 20),
  f('ridPriv', 1, 20, 1),
  f('rsvd1', 1, 21, 43),
  f('rsvd2', 2, 0, 64, 'b'),
  f('rsvd3', 3, 0, 64, 'b'),
] as const);

// A.3 PASID-directory entry

export const PASID_DIR_ENTRY = new StructCodec('pasid_dir_entry', 1, [
  f('p', 0, 0, 1),
  f('fpd', 0, 1, 1),
  f('rsvd0', 0, 2, 10),
  f('pasidTablePtr', 0, 12, 40, 'a'),
  f('pasidTablePtrHi', 0, 52, 12),
] as const);

// A.4 PASID-table entry, 512-bit

export const PASID_ENTRY = new StructCodec('pasid_entry', 8, [
  f('p', 0, 0, 1),
  f('fpd', 0, 1, 1),
  f('aw', 0, 2, 3),
  f('slee', 0, 5, 1),
  f('pgtt', 0, 6, 3),
  f('slade', 0, 9, 1),
  f('rsvd0', 0, 10, 2),
  f('slptptr', 0, 12, 40, 'a'),
  f('slptptrHi', 0, 52, 12),
  f('did', 1, 0, 16),
  f('rsvd1', 1, 16, 7),
  f('pwsnp', 1, 23, 1),
  f('pgsnp', 1, 24, 1),
  f('cd', 1, 25, 1),
  f('emte', 1, 26, 1),
  f('emt', 1, 27, 3),
  f('pwt', 1, 30, 1),
  f('pcd', 1, 31, 1),
  f('pat', 1, 32, 32),
  f('sre', 2, 0, 1),
  f('ere', 2, 1, 1),
  f('flpm', 2, 2, 2),
  f('wpe', 2, 4, 1),
  f('nxe', 2, 5, 1),
  f('smep', 2, 6, 1),
  f('eafe', 2, 7, 1),
  f('rsvd2', 2, 8, 4),
  f('flptptr', 2, 12, 40, 'a'),
  f('flptptrHi', 2, 52, 12),
  f('rsvd3', 3, 0, 64, 'b'),
  f('rsvd4', 4, 0, 64, 'b'),
  f('rsvd5', 5, 0, 64, 'b'),
  f('rsvd6', 6, 0, 64, 'b'),
  f('rsvd7', 7, 0, 64, 'b'),
] as const);

// A.5 First-level (x86-64) paging entry, any level

export const FL_ENTRY = new StructCodec('fl_entry', 1, [
  f('p', 0, 0, 1),
  f('rw', 0, 1, 1),
  f('us', 0, 2, 1),
  f('pwt', 0, 3, 1),
  f('pcd', 0, 4, 1),
  f('a', 0, 5, 1),
  f('d', 0, 6, 1),
  f('ps', 0, 7, 1),
  f('g', 0, 8, 1),
  f('ign9', 0, 9, 1),
  f('ea', 0, 10, 1),
  f('ign11', 0, 11, 1),
  f('addr', 0, 12, 40, 'a'),
  f('ign52', 0, 52, 11),
  f('xd', 0, 63, 1),
] as const);

// A.6 Second-level (EPT-like) paging entry, any level

export const SL_ENTRY = new StructCodec('sl_entry', 1, [
  f('r', 0, 0, 1),
  f('w', 0, 1, 1),
  f('x', 0, 2, 1),
  f('emt', 0, 3, 3),
  f('ipat', 0, 6, 1),
  f('ps', 0, 7, 1),
  f('a', 0, 8, 1),
  f('d', 0, 9, 1),
  f('ign10', 0, 10, 1),
  f('snp', 0, 11, 1),
  f('addr', 0, 12, 40, 'a'),
  f('ign52', 0, 52, 10),
  f('tm', 0, 62, 1),
  f('ign63', 0, 63, 1),
] as const);

// ---------------------------------------------------------------------------------------------
// C.3 Invalidation descriptors. Type = qw0[3:0] | qw0[11:9] << 4.

export const QI_TYPE = {
  CC_INV: 1,
  IOTLB_INV: 2,
  DEV_TLB_INV: 3,
  IEC_INV: 4,
  INV_WAIT: 5,
  P_IOTLB_INV: 6,
  PC_INV: 7,
  P_DEV_TLB_INV: 8,
  PAGE_GRP_RESP: 9,
} as const;

function typeFixed(t: number): Record<string, number> {
  return { typeLo: t & 0xf, typeHi: t >> 4 };
}

export const CC_INV_DSC = new StructCodec(
  'cc_inv_dsc',
  2,
  [
    f('typeLo', 0, 0, 4),
    f('g', 0, 4, 2),
    f('rsvd0', 0, 6, 3),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 4),
    f('did', 0, 16, 16),
    f('sid', 0, 32, 16),
    f('fm', 0, 48, 2),
    f('rsvd2', 0, 50, 14),
    f('rsvd3', 1, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.CC_INV),
);

export const IOTLB_INV_DSC = new StructCodec(
  'iotlb_inv_dsc',
  2,
  [
    f('typeLo', 0, 0, 4),
    f('g', 0, 4, 2),
    f('dw', 0, 6, 1),
    f('dr', 0, 7, 1),
    f('rsvd0', 0, 8, 1),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 4),
    f('did', 0, 16, 16),
    f('rsvd2', 0, 32, 32),
    f('am', 1, 0, 6),
    f('ih', 1, 6, 1),
    f('rsvd3', 1, 7, 5),
    f('addr', 1, 12, 52, 'b'),
  ] as const,
  typeFixed(QI_TYPE.IOTLB_INV),
);

export const DEV_TLB_INV_DSC = new StructCodec(
  'dev_tlb_inv_dsc',
  2,
  [
    f('typeLo', 0, 0, 4),
    f('rsvd0', 0, 4, 5),
    f('typeHi', 0, 9, 3),
    f('pfsidLo', 0, 12, 4),
    f('mip', 0, 16, 5),
    f('rsvd1', 0, 21, 11),
    f('sid', 0, 32, 16),
    f('rsvd2', 0, 48, 4),
    f('pfsidHi', 0, 52, 12),
    f('s', 1, 0, 1),
    f('rsvd3', 1, 1, 11),
    f('addr', 1, 12, 52, 'b'),
  ] as const,
  typeFixed(QI_TYPE.DEV_TLB_INV),
);

export const IEC_INV_DSC = new StructCodec(
  'iec_inv_dsc',
  2,
  [
    f('typeLo', 0, 0, 4),
    f('g', 0, 4, 1),
    f('rsvd0', 0, 5, 4),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 15),
    f('im', 0, 27, 5),
    f('iidx', 0, 32, 16),
    f('rsvd2', 0, 48, 16),
    f('rsvd3', 1, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.IEC_INV),
);

export const INV_WAIT_DSC = new StructCodec(
  'inv_wait_dsc',
  2,
  [
    f('typeLo', 0, 0, 4),
    f('if', 0, 4, 1),
    f('sw', 0, 5, 1),
    f('fn', 0, 6, 1),
    f('pd', 0, 7, 1),
    f('rsvd0', 0, 8, 1),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 20),
    f('stdata', 0, 32, 32),
    f('rsvd2', 1, 0, 2),
    f('staddr', 1, 2, 62, 'b'),
  ] as const,
  typeFixed(QI_TYPE.INV_WAIT),
);

export const P_IOTLB_INV_DSC = new StructCodec(
  'p_iotlb_inv_dsc',
  4,
  [
    f('typeLo', 0, 0, 4),
    f('g', 0, 4, 2),
    f('rsvd0', 0, 6, 3),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 4),
    f('did', 0, 16, 16),
    f('pasid', 0, 32, 20),
    f('rsvd2', 0, 52, 12),
    f('am', 1, 0, 6),
    f('ih', 1, 6, 1),
    f('rsvd3', 1, 7, 5),
    f('addr', 1, 12, 52, 'b'),
    f('rsvd4', 2, 0, 64, 'b'),
    f('rsvd5', 3, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.P_IOTLB_INV),
);

export const PC_INV_DSC = new StructCodec(
  'pc_inv_dsc',
  4,
  [
    f('typeLo', 0, 0, 4),
    f('g', 0, 4, 2),
    f('rsvd0', 0, 6, 3),
    f('typeHi', 0, 9, 3),
    f('rsvd1', 0, 12, 4),
    f('did', 0, 16, 16),
    f('pasid', 0, 32, 20),
    f('rsvd2', 0, 52, 12),
    f('rsvd3', 1, 0, 64, 'b'),
    f('rsvd4', 2, 0, 64, 'b'),
    f('rsvd5', 3, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.PC_INV),
);

export const P_DEV_TLB_INV_DSC = new StructCodec(
  'p_dev_tlb_inv_dsc',
  4,
  [
    f('typeLo', 0, 0, 4),
    f('mip', 0, 4, 5),
    f('typeHi', 0, 9, 3),
    f('pfsidLo', 0, 12, 4),
    f('sid', 0, 16, 16),
    f('pasid', 0, 32, 20),
    f('pfsidHi', 0, 52, 12),
    f('g', 1, 0, 1),
    f('rsvd0', 1, 1, 10),
    f('s', 1, 11, 1),
    f('addr', 1, 12, 52, 'b'),
    f('rsvd1', 2, 0, 64, 'b'),
    f('rsvd2', 3, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.P_DEV_TLB_INV),
);

export const PAGE_GRP_RESP_DSC = new StructCodec(
  'page_grp_resp_dsc',
  4,
  [
    f('typeLo', 0, 0, 4),
    f('pp', 0, 4, 1),
    f('prd', 0, 5, 1),
    f('rsvd0', 0, 6, 3),
    f('typeHi', 0, 9, 3),
    f('rc', 0, 12, 4),
    f('rid', 0, 16, 16),
    f('pasid', 0, 32, 20),
    f('rsvd1', 0, 52, 12),
    f('rsvd2', 1, 0, 2),
    f('lpig', 1, 2, 1),
    f('prgi', 1, 3, 9),
    f('rsvd3', 1, 12, 52, 'b'),
    f('privData0', 2, 0, 64, 'b'),
    f('privData1', 3, 0, 64, 'b'),
  ] as const,
  typeFixed(QI_TYPE.PAGE_GRP_RESP),
);

// ---------------------------------------------------------------------------------------------
// B.6 Fault recording register (128-bit)

export const FRCD = new StructCodec('frcd', 2, [
  f('rsvd0', 0, 0, 12),
  f('fi', 0, 12, 52, 'b'),
  f('sid', 1, 0, 16),
  f('rsvd1', 1, 16, 13),
  f('priv', 1, 29, 1),
  f('exe', 1, 30, 1),
  f('pp', 1, 31, 1),
  f('fr', 1, 32, 8),
  f('pv', 1, 40, 20),
  f('at', 1, 60, 2),
  f('t', 1, 62, 1),
  f('f', 1, 63, 1),
] as const);

// E. Page-request descriptor (Linux struct page_req_dsc), 256-bit

export const PAGE_REQ_DSC = new StructCodec('page_req_dsc', 4, [
  f('type', 0, 0, 8),
  f('pasidPresent', 0, 8, 1),
  f('privDataPresent', 0, 9, 1),
  f('rsvd0', 0, 10, 6),
  f('rid', 0, 16, 16),
  f('pasid', 0, 32, 20),
  f('exeReq', 0, 52, 1),
  f('pmReq', 0, 53, 1),
  f('rsvd1', 0, 54, 10),
  f('rdReq', 1, 0, 1),
  f('wrReq', 1, 1, 1),
  f('lpig', 1, 2, 1),
  f('prgIndex', 1, 3, 9),
  f('addr', 1, 12, 52, 'b'),
  f('privData0', 2, 0, 64, 'b'),
  f('privData1', 3, 0, 64, 'b'),
] as const);

export type SmRootEntry = Decoded<typeof SM_ROOT_ENTRY.fields>;
export type SmContextEntry = Decoded<typeof SM_CONTEXT_ENTRY.fields>;
export type PasidDirEntry = Decoded<typeof PASID_DIR_ENTRY.fields>;
export type PasidEntry = Decoded<typeof PASID_ENTRY.fields>;
export type FlEntry = Decoded<typeof FL_ENTRY.fields>;
export type SlEntry = Decoded<typeof SL_ENTRY.fields>;
export type FaultRecord = Decoded<typeof FRCD.fields>;

/** Every codec, for tests and tools. */
export const ALL_CODECS = [
  ROOT_ENTRY,
  SM_ROOT_ENTRY,
  CONTEXT_ENTRY,
  SM_CONTEXT_ENTRY,
  PASID_DIR_ENTRY,
  PASID_ENTRY,
  FL_ENTRY,
  SL_ENTRY,
  CC_INV_DSC,
  IOTLB_INV_DSC,
  DEV_TLB_INV_DSC,
  IEC_INV_DSC,
  INV_WAIT_DSC,
  P_IOTLB_INV_DSC,
  PC_INV_DSC,
  P_DEV_TLB_INV_DSC,
  PAGE_GRP_RESP_DSC,
  FRCD,
  PAGE_REQ_DSC,
] as const;

/** Descriptor type of a descriptor whose qw0 low half is `lo0`. */
export function descType(lo0: number): number {
  return (lo0 & 0xf) | (((lo0 >>> 9) & 7) << 4);
}

/** Splits a bigint qword into [lo, hi] u32 halves. */
export function halves(v: bigint): [number, number] {
  return [Number(v & 0xffffffffn), Number((v >> 32n) & 0xffffffffn)];
}

/** Joins u32 halves into a bigint qword. */
export function qword(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

export const TWO_POW_32 = TWO32;
