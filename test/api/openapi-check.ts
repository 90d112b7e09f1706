/**
 * Checks replies against the OpenAPI document: finds the operation of a
 * request and validates the body against the documented schema of its
 * status (or `default`). A small JSON Schema validator for the keywords the
 * document uses: $ref, type (also arrays of types), enum, required,
 * properties, additionalProperties: false, items, minimum, maximum,
 * pattern, maxLength.
 */
type Json = Record<string, unknown>;

export interface Operation {
  template: string;
  method: string;
  op: Json;
}

/** The operation for `method` on a concrete `path`, if the document has one. */
export function findOperation(doc: Json, method: string, path: string): Operation | undefined {
  const paths = doc['paths'] as Record<string, Json>;
  const clean = path.split('?')[0] ?? '';
  for (const [template, item] of Object.entries(paths)) {
    const re = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+').replace(/\./g, '\\.')}$`);
    if (!re.test(clean)) continue;
    const op = item[method.toLowerCase()] as Json | undefined;
    if (op) return { template, method: method.toLowerCase(), op };
  }
  return undefined;
}

/** Problems of one reply; [] when it conforms (or the request is not documented). */
export function checkReply(
  doc: Json,
  method: string,
  path: string,
  status: number,
  contentType: string | null,
  body: unknown,
): string[] {
  const found = findOperation(doc, method, path);
  if (!found) return [];
  const responses = found.op['responses'] as Record<string, Json>;
  const response = responses[String(status)] ?? responses['default'];
  const where = `${method} ${found.template} ${status}`;
  if (!response) return [`${where}: status not documented`];
  const content = response['content'] as Record<string, Json> | undefined;
  if (!content) return body === undefined ? [] : [`${where}: documented without a body, got one`];
  const type = (contentType ?? '').split(';')[0]?.trim() ?? '';
  const media = content[type];
  if (!media) return [`${where}: content type ${type} not documented (${Object.keys(content).join(', ')})`];
  const schema = media['schema'] as Json | undefined;
  if (!schema) return [];
  return validate(doc, schema, body, '$').map((e) => `${where}: ${e}`);
}

export function validate(doc: Json, schema: Json, value: unknown, at: string): string[] {
  if (typeof schema['$ref'] === 'string') return validate(doc, resolveRef(doc, schema['$ref']), value, at);
  const errors: string[] = [];
  const types = schema['type'] === undefined ? [] : ([] as unknown[]).concat(schema['type']);
  if (types.length > 0 && !types.some((t) => isType(value, t as string))) {
    return [`${at}: expected ${types.join('|')}, got ${value === null ? 'null' : typeof value}`];
  }
  if (Array.isArray(schema['enum']) && !schema['enum'].includes(value)) {
    errors.push(`${at}: ${JSON.stringify(value)} not one of ${JSON.stringify(schema['enum'])}`);
  }
  if (typeof value === 'number') {
    if (typeof schema['minimum'] === 'number' && value < schema['minimum'])
      errors.push(`${at}: below minimum`);
    if (typeof schema['maximum'] === 'number' && value > schema['maximum'])
      errors.push(`${at}: above maximum`);
  }
  if (typeof value === 'string') {
    if (typeof schema['pattern'] === 'string' && !new RegExp(schema['pattern'], 'u').test(value)) {
      errors.push(`${at}: ${JSON.stringify(value)} does not match ${schema['pattern']}`);
    }
    if (typeof schema['maxLength'] === 'number' && value.length > schema['maxLength'])
      errors.push(`${at}: too long`);
  }
  if (Array.isArray(value) && schema['items']) {
    value.forEach((item, i) => {
      errors.push(...validate(doc, schema['items'] as Json, item, `${at}[${i}]`));
    });
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const obj = value as Record<string, unknown>;
    const props = (schema['properties'] ?? {}) as Record<string, Json>;
    for (const name of (schema['required'] ?? []) as string[]) {
      if (!(name in obj)) errors.push(`${at}.${name}: required`);
    }
    for (const [name, v] of Object.entries(obj)) {
      const sub = props[name];
      if (sub) errors.push(...validate(doc, sub, v, `${at}.${name}`));
      else if (schema['additionalProperties'] === false) errors.push(`${at}.${name}: not in the schema`);
    }
  }
  return errors;
}

export function resolveRef(doc: Json, ref: string): Json {
  if (!ref.startsWith('#/')) throw new Error(`external $ref ${ref}`);
  let node: unknown = doc;
  for (const part of ref.slice(2).split('/')) {
    node = (node as Record<string, unknown> | undefined)?.[part];
  }
  if (typeof node !== 'object' || node === null) throw new Error(`$ref ${ref} does not resolve`);
  return node as Json;
}

function isType(value: unknown, type: string): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number';
    case 'array':
      return Array.isArray(value);
    case 'object':
      return typeof value === 'object' && value !== null && !Array.isArray(value);
    default:
      return typeof value === type;
  }
}
