#!/usr/bin/env node
// A real OpenID provider for tests/tests/oidc.rs: npm `oidc-provider`
// served over HTTPS with a certificate from the test's own PKI. It issues
// client-credentials access tokens in JWT form (RS256, through its
// resourceIndicators feature) carrying a tenant under a namespaced claim
// name (`https://agentregistry.test/tenant`, as Auth0 wants) and roles
// nested Keycloak-style (`realm_access.roles`).
//
// It prints JSON lines shaped like the services' logs, so the test reads
// them the same way:
//   {"fields":{"message":"oidc provider serving","listen":"127.0.0.1:PORT","kid":…}}
//   {"fields":{"message":"request","method":"GET","path":"/jwks"}}   (every request)
//   {"fields":{"message":"keys rotated","kid":…}}                     (after SIGUSR2)
//
// SIGUSR2 rotates the signing key while serving: a new RSA key (new kid)
// replaces the old one in the JWKS and signs every token from then on.
// The same HTTPS server and port stay; only the provider behind them is
// rebuilt with the new key.
//
// Usage: node oidc_provider.mjs --cert FILE --key FILE --keys-file FILE
//          --resource URL [--port N]
//          [--client ID:SECRET:TENANT:ROLE+ROLE ...]
// --keys-file holds the private JWKS: read when it exists (two providers
// can share keys), written otherwise and at every rotation.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import Provider from 'oidc-provider';

function parseArgs(argv) {
  const args = { port: '0', client: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`--${name} needs a value`);
    if (name === 'client') args.client.push(value);
    else args[name] = value;
  }
  for (const required of ['cert', 'key', 'keys-file', 'resource']) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  return args;
}

function log(message, fields = {}) {
  process.stdout.write(`${JSON.stringify({ fields: { message, ...fields } })}\n`);
}

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function loadOrCreateKeys(file) {
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const jwks = { keys: [newSigningKey()] };
  fs.writeFileSync(file, JSON.stringify(jwks), { mode: 0o600 });
  return jwks;
}

// Each client is a tenant's service account with roles.
function parseClients(specs) {
  return specs.map((spec) => {
    const [id, secret, tenant, roles] = spec.split(':');
    return { id, secret, tenant, roles: roles ? roles.split('+') : [] };
  });
}

function buildProvider(issuer, jwks, clients, resource) {
  const byId = new Map(clients.map((c) => [c.id, c]));
  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      client_id: c.id,
      client_secret: c.secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks,
    cookies: { keys: ['oidc-test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        getResourceServerInfo: (_ctx, indicator) => {
          if (indicator !== resource) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'registry',
            audience: resource,
            accessTokenTTL: 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const client = byId.get(token.clientId);
      if (!client) return undefined;
      return {
        'https://agentregistry.test/tenant': client.tenant,
        realm_access: { roles: client.roles },
      };
    },
  });
  // Provider errors (a bad client secret, an unknown resource) are
  // answered to the client; printing them helps a failing test.
  provider.on('server_error', (_ctx, error) => log('server error', { error: String(error) }));
  return provider;
}

const args = parseArgs(process.argv.slice(2));
const clients = parseClients(args.client);
let jwks = loadOrCreateKeys(args['keys-file']);
let handler = null;

const server = https.createServer(
  { cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) },
  (req, res) => {
    log('request', { method: req.method, path: req.url.split('?')[0] });
    handler(req, res);
  },
);

server.listen(Number(args.port), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}`;
  handler = buildProvider(issuer, jwks, clients, args.resource).callback();

  process.on('SIGUSR2', () => {
    jwks = { keys: [newSigningKey()] };
    fs.writeFileSync(args['keys-file'], JSON.stringify(jwks), { mode: 0o600 });
    handler = buildProvider(issuer, jwks, clients, args.resource).callback();
    log('keys rotated', { kid: jwks.keys[0].kid });
  });
  process.on('SIGTERM', () => server.close(() => process.exit(0)));

  log('oidc provider serving', { listen: `127.0.0.1:${port}`, issuer, kid: jwks.keys[0].kid });
});
