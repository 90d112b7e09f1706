/**
 * The OpenAPI 3.1 document of the API, served at /api/v1/openapi.json.
 * test/api/openapi.test.ts keeps it true: every route of the router is here
 * and every response the tests see validates against its schema.
 */
import { COMPUTER_ID_SOURCE, DNS_MODES, MODES, PROTOCOLS } from '../policy/types.js';
import { AGENT_STATES, MAX_OBSERVATIONS, RECENT_COUNT_CAP } from '../store/store.js';
import { WILDCARD_THRESHOLD } from './suggestion.js';
import { ID_PATTERN, NODE_PATTERN } from './validation.js';

type Json = Record<string, unknown>;

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: Json, description: string): Json => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description: string): Json => json(ref('Error'), description);
const body = (name: string): Json => ({
  required: true,
  content: { 'application/json': { schema: ref(name) } },
});

const retryAfter = {
  'Retry-After': { description: 'Seconds to wait before trying again (1)', schema: { type: 'integer' } },
};

/** Responses of every operation under /api/v1 that only reads. */
const common: Json = {
  '400': error('Invalid request: the message names the field path and what to change'),
  '401': error('Missing or unknown API key'),
  '503': {
    ...json(ref('StoreError'), 'store_unavailable: Redis unreachable; retry shortly'),
    headers: retryAfter,
  },
  default: error('Any other error (405, 413, 415, 501, ...)'),
};
const CHANGE_UNAVAILABLE =
  'store_unavailable: Redis unreachable, nothing was changed; retry shortly. ' +
  'store_outcome_unknown: the change was sent to Redis and not confirmed, so it may have taken effect: ' +
  'GET the resource once Redis answers to see which (the message says what to GET); ' +
  'repeating the same PUT or DELETE is safe';
/** Responses of every operation that changes something: its outcome may be unknown. */
const changing: Json = {
  ...common,
  '503': { ...json(ref('ChangeStoreError'), CHANGE_UNAVAILABLE), headers: retryAfter },
};
/**
 * Responses of every operation whose change the API acknowledges only once
 * --redis-min-replicas replicas have it (store/connection.ts write()).
 */
const replicated: Json = {
  ...changing,
  '503': {
    ...json(
      ref('ReplicatedStoreError'),
      `${CHANGE_UNAVAILABLE}. ` +
        'replication_timeout (only with --redis-min-replicas above 0): the change is on the Redis primary, but ' +
        'fewer replicas than required confirmed it within --redis-replica-timeout, so it may or may not survive a ' +
        'failover of the primary; the message says how many have it and how many are required. Check the ' +
        'replicas (INFO replication on the primary) and repeat the request: it is idempotent',
    ),
    headers: retryAfter,
  },
};
const withBody: Json = {
  '413': error('Body over the configured limit (default 1 MiB)'),
  '415': error('Body is not application/json'),
};

const idParam = {
  name: 'id',
  in: 'path',
  required: true,
  description: 'Computer id: a tenant key\'s computers have ids that begin with "<tenant>~"',
  schema: { type: 'string', pattern: COMPUTER_ID_SOURCE },
};
const waitParam = {
  name: 'wait',
  in: 'query',
  required: false,
  description:
    'Milliseconds to wait for the agent to enforce the change (default: the service setting, 5000); 0 answers at once',
  schema: { type: 'integer', minimum: 0 },
};
const ifMatchParam = {
  name: 'If-Match',
  in: 'header',
  required: false,
  description: 'The version the change is based on (compare-and-set): 412 when the policy moved on',
  schema: { type: 'string' },
};

const policyChanged = {
  '200': json(ref('PolicyResponse'), 'Stored, and the agent reports it enforced'),
  '202': json(ref('PolicyResponse'), 'Stored; the agent had not reported it enforced within the wait'),
  '404': error('computer not found'),
  '412': error('If-Match does not match the current version'),
};

const retryAfterHeader = {
  description: 'Seconds to wait before retrying',
  schema: { type: 'integer', minimum: 0 },
};

const timestamp = { type: 'string', description: 'RFC 3339 UTC time' };

/** The error body; `codes` narrows the code to those listed. */
const errorSchema = (codes?: string[]): Json => ({
  type: 'object',
  required: ['error'],
  additionalProperties: false,
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      additionalProperties: false,
      properties: {
        code: {
          type: 'string',
          description: 'Stable machine-readable code, e.g. rules_required',
          ...(codes ? { enum: codes } : {}),
        },
        message: { type: 'string', description: 'What is wrong and what to change' },
        details: {
          type: 'array',
          items: {
            type: 'object',
            required: ['path', 'message'],
            additionalProperties: false,
            properties: { path: { type: 'string' }, message: { type: 'string' } },
          },
        },
      },
    },
  },
});

const schemas: Json = {
  Error: errorSchema(),
  StoreError: errorSchema(['store_unavailable']),
  ChangeStoreError: errorSchema(['store_unavailable', 'store_outcome_unknown']),
  ReplicatedStoreError: errorSchema(['store_unavailable', 'store_outcome_unknown', 'replication_timeout']),
  RuleInput: {
    type: 'object',
    required: ['host'],
    additionalProperties: false,
    properties: {
      host: {
        type: 'string',
        description: 'IPv4/IPv6 address, CIDR block, hostname, or *. + hostname; normalised when stored',
      },
      port: { type: 'integer', minimum: 1, maximum: 65535, description: 'Omit to match every port' },
      protocol: { type: 'string', enum: [...PROTOCOLS], default: 'any' },
      bind_name: {
        type: 'boolean',
        default: true,
        description:
          'Name-binding, for hostname and wildcard rules only (on an address or CIDR rule, either value is 400 ' +
          'invalid_request: remove it). An address that the computer may reach only because this rule matched a name ' +
          "its DNS lookups (through the agent's proxy) resolved serves only the names it was learned for: the " +
          "connection's first bytes must be a TLS ClientHello whose server_name, or an HTTP/1.x request whose Host, is " +
          'one of them, else the connection is refused (deny event reason name_mismatch, with the name it tried); ' +
          'first bytes of other protocols pass. UDP to port 443 of such an address (QUIC, whose names cannot be read ' +
          'there) is refused (reason quic) unless a rule naming it says "protocol": "udp" (any is not enough). ' +
          "false: the rule's addresses are judged by address alone (neither check), for when an operator knows the " +
          'address serves only trusted names (a dedicated server rather than a shared CDN). Known limits: domain ' +
          'fronting (an allowed server_name with another name inside the encrypted request) passes; on a plaintext ' +
          'HTTP keep-alive connection, requests after the first are not judged. Default true; stored and answered ' +
          'only when false.',
      },
    },
  },
  Rule: {
    type: 'object',
    required: ['host', 'protocol'],
    additionalProperties: false,
    description:
      'A rule as stored: normalised, keys in this order, port only when given, bind_name only when false',
    properties: {
      host: { type: 'string' },
      port: { type: 'integer', minimum: 1, maximum: 65535 },
      protocol: { type: 'string', enum: [...PROTOCOLS] },
      bind_name: {
        type: 'boolean',
        enum: [false],
        description: 'Present only when false: the rule is not name-bound (see RuleInput). Absent: it is',
      },
    },
  },
  PolicyInput: {
    type: 'object',
    required: ['mode'],
    additionalProperties: false,
    properties: {
      mode: { type: 'string', enum: [...MODES] },
      dns: {
        type: 'string',
        enum: [...DNS_MODES],
        description:
          "What the agent's DNS proxy resolves for the computer. listed: only names that the hostname rules cover " +
          '(exact names, *.suffix for names below suffix, and the CNAME chains their answers hold), types A, AAAA, ' +
          'CNAME, HTTPS and SVCB (other types are answered NOERROR with no records); every other name is answered ' +
          'NXDOMAIN by the proxy and never forwarded. all: every name and type is forwarded to the upstream resolver. ' +
          'none: every query is answered NXDOMAIN by the proxy, nothing is forwarded. Default: listed in allowlist mode ' +
          'with hostname rules, none in allowlist mode without, all otherwise. listed fits allowlist mode with at least ' +
          'one hostname rule only; none does not fit allowlist mode with hostname rules (they could never match); ' +
          'unrestricted mode takes all only. Anything else is 400 dns_not_allowed.',
      },
      block_dns: {
        type: 'boolean',
        deprecated: true,
        description: 'Before dns existed: true is "dns": "none" (a different dns with it is 400)',
      },
      audit: {
        type: 'boolean',
        default: false,
        description:
          'Audit mode: the policy is judged exactly as in enforcement, but what it would refuse is let through and reported (as deny events). Default false: a PUT replaces the whole policy, so leaving it out turns audit off',
      },
      rules: {
        type: 'array',
        items: ref('RuleInput'),
        description: 'Required (non-empty) for allowlist and denylist; empty or absent otherwise',
      },
    },
  },
  Policy: {
    type: 'object',
    required: [
      'computer_id',
      'mode',
      'dns',
      'block_dns',
      'audit',
      'rules',
      'version',
      'updated_at',
      'enforcement',
    ],
    additionalProperties: false,
    properties: {
      computer_id: { type: 'string' },
      mode: { type: 'string', enum: [...MODES] },
      dns: {
        type: 'string',
        enum: [...DNS_MODES],
        description:
          'What the DNS proxy resolves (see PolicyInput); all in unrestricted mode, where DNS does not pass the proxy',
      },
      block_dns: { type: 'boolean', deprecated: true, description: 'dns is "none"' },
      audit: {
        type: 'boolean',
        description: 'Audit mode: what the policy would refuse is let through and reported (see PolicyInput)',
      },
      rules: { type: 'array', items: ref('Rule') },
      version: { type: 'integer', minimum: 0, description: 'Grows with every change' },
      updated_at: timestamp,
      enforcement: ref('Enforcement'),
    },
  },
  Enforcement: {
    type: 'object',
    required: ['state', 'reason', 'enforced_version', 'enforced_at', 'revocation', 'revoked'],
    additionalProperties: false,
    properties: {
      state: {
        type: 'string',
        enum: ['enforced', 'pending', ...AGENT_STATES.filter((s) => s !== 'enforced')],
        description:
          'enforced: in force. dns_ports_exhausted: in force with DNS refused (the agent had no free DNS proxy port). ' +
          'pending: the agent has not reported on this version yet. cgroup_missing: the cgroup does not exist, nothing is attached. ' +
          'cgroup_forbidden: the agent refuses to attach there (its own cgroup or an ancestor, the cgroup of its Redis, or outside its sandbox roots). ' +
          'version_regressed: the agent refuses this version, older than the one it enforces for the computer (the store lost later writes, e.g. a Redis failover): ' +
          'the newer policy stays in force; PUT the policy again to end it (a new version, above the one kept). ' +
          'A PUT answers 200 for enforced and dns_ports_exhausted, 202 otherwise; it answers cgroup_missing, cgroup_forbidden and version_regressed at once.',
      },
      reason: {
        type: ['string', 'null'],
        description:
          'Why the state is not enforced, as the agent reported it: the cgroup path it looked for (cgroup_missing), ' +
          'why it refuses the cgroup (cgroup_forbidden), why DNS is refused (dns_ports_exhausted), ' +
          'which version it keeps and which it refuses, and what to do (version_regressed); null when enforced or pending',
      },
      enforced_version: {
        type: ['integer', 'null'],
        description:
          'The last version in force (never one whose cgroup was missing or forbidden); null for version_regressed, whose reason names the version kept',
      },
      enforced_at: { type: ['string', 'null'] },
      revocation: {
        type: ['string', 'null'],
        enum: ['on', 'off', 'unsupported', 'failed', null],
        description:
          'Live revocation: what became of the connections (TCP, connected UDP) that this version no longer allows. ' +
          'on: the agent closed every one of them before it reported, and a 200 means they are closed; off: the agent ' +
          'runs with --revocation off; unsupported: the kernel cannot close them (Linux 6.5+ is needed, see the README); ' +
          'failed: the agent could not finish (its log says why). null while pending or when the agent did not say',
      },
      revoked: {
        type: ['integer', 'null'],
        minimum: 0,
        description:
          'How many connections putting this version in force closed (each is a deny event with reason "revoked"); ' +
          'null unless revocation is "on"',
      },
    },
  },
  PolicyResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: { data: ref('Policy') },
  },
  EventsResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'array',
        items: {
          type: 'object',
          required: [
            'computer',
            'at',
            'pid',
            'comm',
            'family',
            'protocol',
            'address',
            'port',
            'hostname',
            'reason',
          ],
          additionalProperties: false,
          properties: {
            computer: { type: 'string' },
            at: timestamp,
            pid: {
              type: ['integer', 'null'],
              description:
                'null for a refusal of the DNS proxy (dns_unlisted, dns_refused): it does not know the process',
            },
            comm: {
              type: ['string', 'null'],
              description: 'The command name of the process; null as pid',
            },
            family: { type: ['string', 'null'], enum: ['ipv4', 'ipv6', null] },
            protocol: { type: 'string' },
            address: { type: ['string', 'null'] },
            port: { type: ['integer', 'null'] },
            hostname: {
              type: ['string', 'null'],
              description:
                "The name the computer's DNS lookups mapped the address to; for dns_unlisted and dns_refused, the name asked",
            },
            name: {
              type: 'string',
              description:
                "name_mismatch only: the server name that the connection's first bytes carried (the TLS server_name, " +
                'or the Host of an HTTP/1.x request); "" when they carried none. hostname is a name the address was ' +
                'learned for',
            },
            reason: {
              type: 'string',
              enum: [
                'mode',
                'rule',
                'socket',
                'dns',
                'proxy_port',
                'ungoverned',
                'name_mismatch',
                'quic',
                'dns_unlisted',
                'dns_refused',
                'revoked',
              ],
              description:
                'mode: the mode refuses it (allowlist: nothing matched; isolated). rule: a denylist rule matched. ' +
                'socket: not a TCP or UDP socket. dns: DNS sent where no proxy can be reached. proxy_port: a proxy port ' +
                'reached directly. ungoverned: under a sandbox root, in no attached computer. name_mismatch: the ' +
                "connection's first bytes named a server (TLS server_name or HTTP Host, in name) that its address, " +
                'reachable only through a name-bound hostname rule, was not learned for (see RuleInput.bind_name). ' +
                'quic: UDP to port 443 of such an address, which no rule naming it allows with "protocol": "udp" ' +
                '(any is not enough). dns_unlisted: the proxy answered NXDOMAIN to a name that the hostname rules ' +
                'do not cover (dns listed). dns_refused: the proxy ' +
                'answered a query itself because the policy resolves nothing (dns none). For those two, family is ' +
                "the query's, protocol its transport, address null and port 53. revoked: a connection the computer " +
                'had open was closed because its new policy refuses the peer (live revocation; pid and comm null).',
            },
            audit: {
              type: 'boolean',
              description:
                'The policy is in audit: this was let through, and would have been refused for `reason`. ' +
                'Absent in events stored before audit existed (read it as false).',
            },
          },
        },
      },
    },
  },
  LearnedResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'array',
        description: "What the computer's DNS lookups through the agent's proxy taught it, unexpired",
        items: {
          type: 'object',
          required: ['name', 'address', 'expires_at'],
          additionalProperties: false,
          properties: {
            name: { type: 'string', description: 'The hostname asked' },
            address: {
              type: 'string',
              description: 'An address it resolved to, now reachable as its rules say',
            },
            expires_at: timestamp,
          },
        },
      },
    },
  },
  SuggestedRule: {
    type: 'object',
    required: ['host', 'port', 'protocol'],
    additionalProperties: false,
    description: 'A rule of the suggested policy, normalised as a PUT stores it',
    properties: {
      host: {
        type: 'string',
        description: 'A hostname, *. + a parent domain (see wildcard_threshold), or an IPv4/IPv6 address',
      },
      port: { type: 'integer', minimum: 1, maximum: 65535 },
      protocol: { type: 'string', enum: ['tcp', 'udp'] },
    },
  },
  Observation: {
    type: 'object',
    required: ['host', 'port', 'protocol', 'count', 'first_seen', 'last_seen'],
    additionalProperties: false,
    description:
      'What the computer was seen connecting to (in audit mode, or allowed), as the agent reported it',
    properties: {
      host: {
        type: 'string',
        description:
          "The hostname (lower case) when the computer's DNS lookups named the address, else the IPv4/IPv6 address",
      },
      port: { type: 'integer', minimum: 0, maximum: 65535 },
      protocol: { type: 'string', enum: ['tcp', 'udp'] },
      count: { type: 'integer', minimum: 0, description: 'How many times it was seen, as the agent counts' },
      first_seen: timestamp,
      last_seen: timestamp,
    },
  },
  SuggestionResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['policy', 'rules', 'wildcard_threshold', 'since', 'observed', 'skipped', 'note'],
        additionalProperties: false,
        properties: {
          policy: {
            type: 'object',
            required: ['mode', 'rules'],
            additionalProperties: false,
            description:
              'A body to PUT to /network-policy as it is (PolicyInput). An allowlist of one rule per observed ' +
              '(host, port, protocol), hostnames first, then addresses, then by port and protocol; dns left out ' +
              '(the default: listed with hostname rules, else none); audit left out, so applying it enforces. ' +
              'It allows what was observed, and with a wildcard rule also other names below that parent. ' +
              'Nothing observed: isolated mode with dns none (refuses everything; an allowlist needs a rule)',
            properties: {
              mode: { type: 'string', enum: ['allowlist', 'isolated'] },
              rules: { type: 'array', items: ref('SuggestedRule') },
              dns: {
                type: 'string',
                enum: ['none'],
                description: 'Only with isolated mode (nothing observed): no DNS either',
              },
            },
          },
          rules: {
            type: 'array',
            description: 'policy.rules in the same order, each with the observations it allows',
            items: {
              type: 'object',
              required: ['rule', 'observations'],
              additionalProperties: false,
              properties: {
                rule: ref('SuggestedRule'),
                observations: {
                  type: 'array',
                  items: ref('Observation'),
                  description: 'Most recently seen first',
                },
              },
            },
          },
          wildcard_threshold: {
            type: 'integer',
            description:
              'More than this many distinct names directly below one parent domain (the name without its first ' +
              'label, itself of two labels or more: never *.com), seen on one port and protocol, become one ' +
              '*.parent rule, which also takes the deeper names below it there; the parent itself keeps a rule ' +
              `of its own (*.parent does not match it). Now ${WILDCARD_THRESHOLD}`,
          },
          since: {
            type: ['string', 'null'],
            description: 'The since asked for (RFC 3339 UTC); null: every observation kept',
          },
          observed: {
            type: 'integer',
            minimum: 0,
            description: 'How many observations (destination, port, protocol) it was built from',
          },
          skipped: {
            type: 'array',
            items: ref('Observation'),
            description:
              'Observations that no rule can hold (a name the policy schema refuses): the policy refuses them',
          },
          note: {
            type: ['string', 'null'],
            description:
              'What to know before applying it (nothing observed, observations left out, more rules than the service takes); null when nothing',
          },
        },
      },
    },
  },
  ComputerInput: {
    type: 'object',
    required: ['cgroup'],
    additionalProperties: false,
    properties: {
      cgroup: { type: 'string', description: 'Path relative to the cgroup2 mount' },
      node: { type: 'string', pattern: NODE_PATTERN, description: 'Default: the service default node' },
      tenant: {
        type: ['string', 'null'],
        pattern: ID_PATTERN,
        description: 'Absent keeps the current tenant (none for a new computer); null sets none',
      },
      dns_upstream: {
        type: ['string', 'null'],
        description:
          'The resolver the agent\'s DNS proxy forwards this computer\'s queries to, instead of the agent\'s default (--dns-upstream): an IP address reachable from the agent\'s host, optionally with a port: "10.88.0.1", "10.88.0.1:5353", "[fd00::1]:53". For a sandbox whose runtime has a resolver of its own. Absent keeps the current one (none for a new computer); null removes it',
        examples: ['10.88.0.1:53'],
      },
    },
  },
  Computer: {
    type: 'object',
    required: ['id', 'cgroup', 'node', 'tenant', 'dns_upstream', 'created_at', 'updated_at'],
    additionalProperties: false,
    properties: {
      id: { type: 'string', pattern: COMPUTER_ID_SOURCE },
      cgroup: { type: 'string' },
      node: { type: 'string' },
      tenant: { type: ['string', 'null'] },
      dns_upstream: {
        type: ['string', 'null'],
        description:
          'The resolver for this computer\'s DNS, "address:port" or "[v6address]:port"; null: the agent\'s default',
      },
      created_at: timestamp,
      updated_at: timestamp,
    },
  },
  ComputerListItem: {
    type: 'object',
    required: ['id', 'cgroup', 'node', 'tenant', 'dns_upstream', 'created_at', 'updated_at', 'policy'],
    additionalProperties: false,
    properties: {
      id: { type: 'string', pattern: COMPUTER_ID_SOURCE },
      cgroup: { type: 'string' },
      node: { type: 'string' },
      tenant: { type: ['string', 'null'] },
      dns_upstream: { type: ['string', 'null'] },
      created_at: timestamp,
      updated_at: timestamp,
      policy: {
        type: 'object',
        description: "The computer's network policy in brief, and the agent's report on it",
        required: ['mode', 'block_dns', 'audit', 'version', 'enforcement'],
        additionalProperties: false,
        properties: {
          mode: { type: 'string', enum: [...MODES] },
          block_dns: { type: 'boolean' },
          audit: { type: 'boolean', description: 'Audit mode: refusals are let through and reported' },
          version: { type: 'integer', minimum: 0 },
          enforcement: ref('Enforcement'),
        },
      },
      denials_1m: {
        type: 'object',
        description: `Only with ?include=denials_1m: the computer's deny events of the last 60 s (by the API's clock, as the events' ids), counted up to ${RECENT_COUNT_CAP}`,
        required: ['count', 'capped'],
        additionalProperties: false,
        properties: {
          count: { type: 'integer', minimum: 0, maximum: RECENT_COUNT_CAP },
          capped: {
            type: 'boolean',
            description: `true: more than ${RECENT_COUNT_CAP} (count is then ${RECENT_COUNT_CAP}); the count stops there so that a storm cannot make the list costly`,
          },
        },
      },
    },
  },
  ServiceResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['default_node', 'cgroup_bases', 'tenant'],
        additionalProperties: false,
        properties: {
          default_node: {
            type: ['string', 'null'],
            description:
              "The node a computer registered without one goes to (in egressd all, its agent's node); null when there is none",
          },
          cgroup_bases: {
            type: 'array',
            items: { type: 'string' },
            description:
              "Where this key's computers may live, relative to the cgroup2 mount: the sandbox roots (admin), the key's cgroup prefix (tenant key)",
          },
          tenant: { type: ['string', 'null'] },
        },
      },
    },
  },
  ComputerResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: { data: ref('Computer') },
  },
  ComputerList: {
    type: 'object',
    required: ['data', 'next_cursor'],
    additionalProperties: false,
    properties: {
      data: { type: 'array', items: ref('ComputerListItem') },
      next_cursor: {
        type: ['string', 'null'],
        description: 'Pass as ?cursor= for the next page; null at the end',
      },
    },
  },
  KeyInput: {
    type: 'object',
    required: ['tenant'],
    additionalProperties: false,
    properties: {
      tenant: { type: 'string', pattern: ID_PATTERN },
      name: { type: 'string', maxLength: 200 },
      cgroup_prefix: {
        type: 'string',
        description:
          "The cgroup subtree (relative to the cgroup2 mount, below a sandbox root) the key's computers must lie below. Default: <first sandbox root>/<tenant>",
      },
    },
  },
  ApiKey: {
    type: 'object',
    required: ['id', 'tenant', 'cgroup_prefix', 'name', 'created_at'],
    additionalProperties: false,
    properties: {
      id: { type: 'string' },
      tenant: { type: 'string' },
      cgroup_prefix: { type: 'string' },
      name: { type: ['string', 'null'] },
      created_at: timestamp,
    },
  },
  ApiKeyCreated: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['id', 'tenant', 'cgroup_prefix', 'name', 'created_at', 'key'],
        additionalProperties: false,
        properties: {
          id: { type: 'string' },
          tenant: { type: 'string' },
          cgroup_prefix: { type: 'string' },
          name: { type: ['string', 'null'] },
          created_at: timestamp,
          key: { type: 'string', description: 'The bearer key; shown only in this response' },
        },
      },
    },
  },
  ApiKeyList: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: { data: { type: 'array', items: ref('ApiKey') } },
  },
  SessionInput: {
    type: 'object',
    required: ['key'],
    additionalProperties: false,
    properties: {
      key: {
        type: 'string',
        description:
          'A bearer key (the admin key or a tenant key): checked as the Authorization header is, never stored',
      },
    },
  },
  SessionResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['kind', 'tenant', 'key_id', 'csrf_token', 'idle_timeout_s', 'expires_at'],
        additionalProperties: false,
        properties: {
          kind: { type: 'string', enum: ['admin', 'tenant'] },
          tenant: { type: ['string', 'null'], description: "A tenant key's tenant; null for the admin" },
          key_id: { type: ['string', 'null'], description: "A tenant key's id; null for the admin" },
          csrf_token: {
            type: 'string',
            description: 'Send it as X-CSRF-Token with every request of this session that changes something',
          },
          idle_timeout_s: {
            type: 'integer',
            minimum: 1,
            description: 'The session ends after this long without a request (EGRESSD_UI_SESSION_IDLE)',
          },
          expires_at: {
            ...timestamp,
            description: 'The session ends then however busy (sign-in + EGRESSD_UI_SESSION_MAX)',
          },
        },
      },
    },
  },
  Status: {
    type: 'object',
    required: ['status'],
    additionalProperties: false,
    properties: { status: { type: 'string' } },
  },
  Readiness: {
    type: 'object',
    required: ['status', 'nodes', 'features', 'store_lost'],
    additionalProperties: false,
    properties: {
      status: { type: 'string', enum: ['ready'] },
      nodes: { type: 'integer', description: 'Agents that wrote their status within 60 s' },
      features: {
        type: 'object',
        description:
          'Feature name → state → number of nodes, e.g. {"revocation": {"on": 2, "unsupported": 1}}',
        additionalProperties: { type: 'object', additionalProperties: { type: 'integer' } },
      },
      store_lost: {
        type: 'integer',
        description:
          'Nodes whose agent reports its store lost (Redis came back empty or was replaced): they keep what they ' +
          'enforce and follow nothing until an operator accepts the store (POST /api/v1/store/accept)',
      },
    },
  },
  NodeStore: {
    type: ['object', 'null'],
    description:
      'The store the agent follows, or that it lost it; null for an agent that has not said (older, or not checked yet)',
    required: ['state', 'id'],
    additionalProperties: false,
    properties: {
      state: {
        type: 'string',
        enum: ['following', 'lost'],
        description:
          'lost: the Redis it reaches holds no store identity or another one, not accepted: the agent keeps ' +
          'every policy in force, applies and acknowledges nothing from it, until POST /api/v1/store/accept',
      },
      id: { type: 'string', description: 'The id of the store it follows (or lost)' },
      found: {
        type: ['string', 'null'],
        description: 'lost: the id the store has now; null when it has none',
      },
      since: { ...timestamp, description: 'lost: since when' },
    },
  },
  StoreResponse: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['id', 'created_at', 'replaces', 'nodes_lost'],
        additionalProperties: false,
        properties: {
          id: { type: ['string', 'null'], description: "The store's identity; null when it has none yet" },
          created_at: { type: ['string', 'null'], format: 'date-time' },
          replaces: {
            type: 'array',
            items: { type: 'string' },
            description: 'Ids of lost stores an operator accepted this one for',
          },
          nodes_lost: {
            type: 'array',
            items: {
              type: 'object',
              required: ['node', 'lost_id', 'found_id', 'since'],
              additionalProperties: false,
              properties: {
                node: { type: 'string' },
                lost_id: { type: 'string', description: 'The id of the store the node followed' },
                found_id: { type: ['string', 'null'], description: 'The id it found instead (null: none)' },
                since: { type: 'string', format: 'date-time' },
              },
            },
          },
        },
      },
    },
  },
  StoreAcceptInput: {
    type: 'object',
    additionalProperties: false,
    properties: {
      lost: {
        type: 'array',
        minItems: 1,
        items: { type: 'string', pattern: '^[0-9a-f]{32}$' },
        description: 'The lost stores this one replaces; default: every one the nodes report now',
      },
    },
  },
  StoreAccepted: {
    type: 'object',
    required: ['data'],
    additionalProperties: false,
    properties: {
      data: {
        type: 'object',
        required: ['id', 'created_at', 'replaces', 'accepted'],
        additionalProperties: false,
        properties: {
          id: { type: 'string' },
          created_at: { type: 'string', format: 'date-time' },
          replaces: { type: 'array', items: { type: 'string' } },
          accepted: {
            type: 'array',
            items: { type: 'string' },
            description: 'The lost ids this call accepted',
          },
        },
      },
    },
  },
  Node: {
    type: 'object',
    required: ['node', 'kernel', 'version', 'started_at', 'seen_at', 'features', 'store'],
    additionalProperties: false,
    properties: {
      node: { type: 'string' },
      kernel: { type: 'string', description: 'uname -r' },
      version: { type: 'string', description: "The agent's egressd version" },
      started_at: { type: 'string', format: 'date-time' },
      seen_at: { type: 'string', format: 'date-time' },
      store: ref('NodeStore'),
      features: {
        type: 'object',
        additionalProperties: {
          type: 'object',
          required: ['state'],
          additionalProperties: false,
          properties: {
            state: { type: 'string', enum: ['on', 'off', 'unsupported'] },
            problem: { type: 'string', description: 'Why the kernel cannot (unsupported only)' },
          },
        },
      },
    },
  },
};

const SESSION_SCHEME =
  'A dashboard session (POST /ui/session), accepted under /api/v1 when no Authorization header is sent, with ' +
  'the same scope as the key it signed in with. The cookie is egressd_session over plain HTTP and ' +
  '__Host-egressd_session (Secure) over TLS; HttpOnly, SameSite=Strict. A request it authenticates must ' +
  'come from a page of this origin (Sec-Fetch-Site same-origin, or an Origin naming this host; else 403 ' +
  'cross_site_request), and one that changes something (not GET, HEAD, OPTIONS) must carry X-CSRF-Token, ' +
  "the session's csrf_token (else 403 csrf_token_required or csrf_token_invalid)";

const sessionSet = {
  'Set-Cookie': {
    description:
      'The session: egressd_session=<id> (plain HTTP) or __Host-egressd_session=<id>; Secure (TLS); ' +
      'Path=/; Max-Age=<EGRESSD_UI_SESSION_MAX>; HttpOnly; SameSite=Strict',
    schema: { type: 'string' },
  },
};

/** The dashboard's sign-in (with --ui on). */
const uiPaths: Json = {
  '/ui/session': {
    post: {
      operationId: 'signIn',
      summary: 'Dashboard sign-in: exchange a bearer key for a session cookie',
      description:
        'The key is checked exactly as the Authorization header is; it is never stored or logged. ' +
        'A new session each time (the one the browser had ends). 401 sets no cookie.',
      security: [],
      requestBody: body('SessionInput'),
      responses: {
        '200': { ...json(ref('SessionResponse'), 'Signed in'), headers: sessionSet },
        '401': error('Unknown or revoked key'),
        '403': error('cross_site_request: not from a page of this origin'),
        ...changing,
        ...withBody,
      },
    },
    get: {
      operationId: 'getSession',
      summary: "The request's dashboard session, with its CSRF token (for a page that was reloaded)",
      security: [{ session: [] }],
      responses: {
        '200': json(ref('SessionResponse'), 'Signed in'),
        '401': error('No session, or it ended (signed out, idle, too old, or its key was revoked)'),
        '403': error('cross_site_request: not from a page of this origin'),
        ...common,
      },
    },
    delete: {
      operationId: 'signOut',
      summary: 'Dashboard sign-out: ends the session (in every API process) and clears the cookie',
      security: [{ session: [] }],
      parameters: [
        {
          name: 'X-CSRF-Token',
          in: 'header',
          required: false,
          description: "The session's csrf_token: required when the request has a live session",
          schema: { type: 'string' },
        },
      ],
      responses: {
        '204': { description: 'Signed out (also when there was no live session)', headers: sessionSet },
        '403': error('cross_site_request, csrf_token_required or csrf_token_invalid'),
        ...changing,
      },
    },
  },
};

/** The document; `ui` false (--ui off) leaves out the dashboard's sign-in and its cookie. */
export function openApiDocument(options: { ui?: boolean } = {}): Json {
  const ui = options.ui ?? true;

  return {
    openapi: '3.1.0',
    info: {
      title: 'egressd Network Policy API',
      version: '1.0.0',
      description:
        'Network policies of computers (sandboxes), the computers registry and tenant API keys. ' +
        'JSON bodies; send "Authorization: Bearer <key>" under /api/v1' +
        (ui ? ' (or, from the dashboard, its session cookie: see the session security scheme).' : '.'),
    },
    servers: [{ url: '/' }],
    security: ui ? [{ bearer: [] }, { session: [] }] : [{ bearer: [] }],
    paths: {
      '/api/v1/computers/{id}/network-policy': {
        parameters: [idParam],
        get: {
          operationId: 'getNetworkPolicy',
          summary: 'Get the current network policy (unrestricted when none was set)',
          responses: {
            '200': json(ref('PolicyResponse'), 'The policy'),
            '404': error('computer not found'),
            ...common,
          },
        },
        put: {
          operationId: 'updateNetworkPolicy',
          summary: 'Replace the network policy',
          parameters: [waitParam, ifMatchParam],
          requestBody: body('PolicyInput'),
          responses: { ...policyChanged, ...replicated, ...withBody },
        },
        delete: {
          operationId: 'deleteNetworkPolicy',
          summary: 'Reset to unrestricted (idempotent)',
          parameters: [waitParam, ifMatchParam],
          responses: { ...policyChanged, ...replicated },
        },
      },
      '/api/v1/computers/{id}/network-policy/learned': {
        parameters: [idParam],
        get: {
          operationId: 'getLearnedAddresses',
          summary: "Hostname → address pairs learned from the computer's DNS lookups",
          responses: {
            '200': json(ref('LearnedResponse'), 'The learned addresses'),
            '404': error('computer not found'),
            ...common,
          },
        },
      },
      '/api/v1/computers/{id}/network-policy/suggestion': {
        parameters: [idParam],
        get: {
          operationId: 'getSuggestedPolicy',
          summary:
            'A suggested allowlist: what the computer was seen connecting to, as a policy body to PUT back',
          description:
            'Observe, then enforce: let the computer run (in audit mode, say), then GET this and PUT data.policy ' +
            `to /network-policy. Built from the observations the agent recorded (at most ${MAX_OBSERVATIONS} destinations a ` +
            'computer, the least recently seen dropped first); each rule comes with the observations behind it.',
          parameters: [
            {
              name: 'since',
              in: 'query',
              required: false,
              description: 'Only observations last seen at or after this RFC 3339 time (default: all)',
              schema: { type: 'string' },
            },
          ],
          responses: {
            '200': json(ref('SuggestionResponse'), 'The suggestion'),
            '404': error("computer not found (unknown, or another tenant's)"),
            ...common,
          },
        },
      },
      '/api/v1/computers/{id}/network-policy/events': {
        parameters: [idParam],
        get: {
          operationId: 'getDenyEvents',
          summary: "The computer's deny events, newest first",
          parameters: [
            { name: 'limit', in: 'query', schema: { type: 'integer', minimum: 1, maximum: 1000 } },
            { name: 'since', in: 'query', schema: { type: 'string', description: 'RFC 3339 time' } },
          ],
          responses: {
            '200': json(ref('EventsResponse'), 'The events'),
            '404': error('computer not found'),
            ...common,
          },
        },
      },
      '/api/v1/computers/{id}/network-policy/events/stream': {
        parameters: [idParam],
        get: {
          operationId: 'streamDenyEvents',
          summary:
            'New deny events as Server-Sent Events: one `data:` line with an event (as in /events) each',
          description:
            'Events appended after the stream opened, and a `: keep-alive` comment every 15 s. The stream ' +
            'ends when the client leaves, when its key is revoked (DELETE /api/v1/keys/{keyId}, in every ' +
            'API process), when Redis goes away, or when the client reads so slowly that more than 64 KiB ' +
            'wait to be sent (then it is dropped whole, no event is skipped silently); reconnect to follow ' +
            'on. One key may hold EGRESSD_SSE_PER_KEY streams (default 20; the admin key is one key) and ' +
            'one API process EGRESSD_SSE_MAX (default 2000).',
          responses: {
            '200': {
              description: 'An event stream until the client goes away (or see above)',
              content: { 'text/event-stream': {} },
            },
            '404': error('computer not found'),
            '429': {
              ...error(
                'too_many_streams: the key holds its most open streams (EGRESSD_SSE_PER_KEY); close one and retry',
              ),
              headers: { 'Retry-After': retryAfterHeader },
            },
            ...common,
            '503': {
              ...error(
                'store_unavailable (Redis unreachable, Retry-After: 1), or streams_at_capacity: this API ' +
                  'process serves its most streams (EGRESSD_SSE_MAX; Retry-After: 5)',
              ),
              headers: { 'Retry-After': retryAfterHeader },
            },
          },
        },
      },
      '/api/v1/computers': {
        get: {
          operationId: 'listComputers',
          summary: 'List computers by id, a page at a time',
          parameters: [
            { name: 'node', in: 'query', required: false, schema: { type: 'string', pattern: NODE_PATTERN } },
            {
              name: 'limit',
              in: 'query',
              required: false,
              schema: { type: 'integer', minimum: 1, maximum: 1000 },
            },
            { name: 'cursor', in: 'query', required: false, schema: { type: 'string' } },
            {
              name: 'include',
              in: 'query',
              required: false,
              description:
                "Optional fields (comma-separated; one so far): denials_1m adds each computer's deny events of the last minute (one pipeline over the page; see ComputerListItem.denials_1m). Without it the reply has no such field",
              schema: { type: 'string', enum: ['denials_1m'] },
            },
          ],
          responses: { '200': json(ref('ComputerList'), 'A page of computers'), ...common },
        },
      },
      '/api/v1/computers/{id}': {
        parameters: [idParam],
        get: {
          operationId: 'getComputer',
          summary: 'Get a computer',
          responses: {
            '200': json(ref('ComputerResponse'), 'The computer'),
            '404': error('computer not found'),
            ...common,
          },
        },
        put: {
          operationId: 'putComputer',
          summary: 'Register or update a computer',
          requestBody: body('ComputerInput'),
          responses: {
            '200': json(ref('ComputerResponse'), 'Updated'),
            '201': json(ref('ComputerResponse'), 'Created'),
            '403': error(
              'cgroup_outside_prefix: a tenant key registers cgroups below its cgroup prefix only',
            ),
            '404': error('computer not found (it belongs to another tenant)'),
            '409': error(
              "cgroup_in_use: the cgroup already belongs to another computer on the node; cgroup_nested: it is an ancestor or a descendant of another computer's cgroup",
            ),
            ...replicated,
            ...withBody,
          },
        },
        delete: {
          operationId: 'deleteComputer',
          summary: 'Remove a computer and its policy',
          responses: { '204': { description: 'Removed' }, '404': error('computer not found'), ...replicated },
        },
      },
      '/api/v1/keys': {
        get: {
          operationId: 'listKeys',
          summary: 'List tenant keys (admin only; never the keys themselves)',
          responses: {
            '200': json(ref('ApiKeyList'), 'The keys'),
            '403': error('Not the admin key'),
            ...common,
          },
        },
        post: {
          operationId: 'createKey',
          summary: 'Create a tenant key (admin only); the key is shown once',
          requestBody: body('KeyInput'),
          responses: {
            '201': json(ref('ApiKeyCreated'), 'Created'),
            '403': error('Not the admin key'),
            ...replicated,
            ...withBody,
          },
        },
      },
      '/api/v1/keys/{keyId}': {
        parameters: [{ name: 'keyId', in: 'path', required: true, schema: { type: 'string' } }],
        delete: {
          operationId: 'deleteKey',
          summary: 'Revoke a tenant key (admin only); its open event streams end, in every API process',
          responses: {
            '204': { description: 'Revoked' },
            '403': error('Not the admin key'),
            '404': error('key not found'),
            ...replicated,
          },
        },
      },
      '/api/v1/service': {
        get: {
          operationId: 'getService',
          summary:
            'What this service does by default, for the calling key: the default node, and where its computers may live',
          responses: { '200': json(ref('ServiceResponse'), 'The service'), ...common },
        },
      },
      '/api/v1/openapi.json': {
        get: {
          operationId: 'openapi',
          summary: 'This document',
          security: [],
          responses: { '200': { description: 'OpenAPI 3.1 document', content: { 'application/json': {} } } },
        },
      },
      '/healthz': {
        get: {
          operationId: 'healthz',
          summary: 'Liveness',
          security: [],
          responses: { '200': json(ref('Status'), 'Alive') },
        },
      },
      '/readyz': {
        get: {
          operationId: 'readyz',
          summary:
            'Readiness: Redis reachable. Also how many nodes (agents that wrote their status within 60 s) run each ' +
            'kernel-dependent feature in each state: on, off (the operator turned it off) or unsupported (the ' +
            "node's kernel lacks it: GET /api/v1/nodes says why)",
          security: [],
          responses: {
            '200': json(ref('Readiness'), 'Ready'),
            '503': json(ref('StoreError'), 'Redis unreachable'),
          },
        },
      },
      '/api/v1/nodes': {
        get: {
          operationId: 'listNodes',
          summary:
            'Nodes (admin key): each agent that wrote its status within 60 s, its kernel and its kernel-dependent ' +
            'features (revocation: live revocation; name_check: name-bound connections), each on, off or ' +
            'unsupported with the reason',
          responses: {
            '200': json(
              {
                type: 'object',
                required: ['data'],
                properties: { data: { type: 'array', items: ref('Node') } },
              },
              'The nodes, by name',
            ),
            '401': error('Missing or unknown API key'),
            '403': error('A tenant key: nodes are shared by every tenant'),
            '503': {
              ...json(ref('StoreError'), 'store_unavailable: Redis unreachable'),
              headers: retryAfter,
            },
          },
        },
      },
      '/api/v1/store': {
        get: {
          operationId: 'getStore',
          summary:
            "The store's identity (admin key): its id, the lost stores it replaces, and the nodes whose agent " +
            'reports its store lost (Redis came back empty or was replaced)',
          responses: {
            '200': json(ref('StoreResponse'), 'The store'),
            '403': error('Not the admin key'),
            ...common,
          },
        },
      },
      '/api/v1/store/accept': {
        post: {
          operationId: 'acceptStore',
          summary:
            'The operator accepts this store in place of lost ones (admin key): agents that report one of them ' +
            'lost follow this store, versions start again, and computers it lacks are detached. PUT every ' +
            'computer and policy again first. No body (or {}): the lost ids the nodes report now',
          requestBody: {
            required: false,
            content: { 'application/json': { schema: ref('StoreAcceptInput') } },
          },
          responses: {
            '200': json(ref('StoreAccepted'), 'Accepted'),
            '403': error('Not the admin key'),
            '409': error('nothing_to_accept: no node reports a lost store, and the body names none'),
            ...replicated,
            ...withBody,
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          summary:
            "Prometheus metrics (admin key: their labels name every tenant's computers). " +
            'A separately run agent serves its own on --metrics-listen (default 127.0.0.1:9464, no key)',
          responses: {
            '200': { description: 'Prometheus text format', content: { 'text/plain': {} } },
            '401': error('Missing or unknown API key'),
            '403': error('A tenant key: the metrics need the admin key'),
            '503': {
              ...json(ref('StoreError'), 'store_unavailable: Redis unreachable while checking a tenant key'),
              headers: retryAfter,
            },
          },
        },
      },
      ...(ui ? uiPaths : {}),
    },
    components: {
      securitySchemes: {
        bearer: { type: 'http', scheme: 'bearer' },
        ...(ui
          ? {
              session: { type: 'apiKey', in: 'cookie', name: 'egressd_session', description: SESSION_SCHEME },
            }
          : {}),
      },
      schemas,
    },
  };
}
