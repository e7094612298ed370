'use strict'
// The Node.js peer that make bench compares GET /with-auth with: what a Node user who cares
// about speed writes instead of the guide's Express backend. fastify 5 serves the route,
// fast-jwt 6 verifies (its verified-token LRU on, or off with PEER_CACHE=off), get-jwks fetches
// the key set and picks the key by the token's kid, and node:cluster runs PEER_WORKERS
// processes on one port, as `make serve` runs SERVER_WORKERS.
//
// Configured by the environment (tools/bench_peers/peers.py sets it):
//   PEER_PORT      port on 127.0.0.1 (required)
//   PEER_JWKS_URI  the key set's URL, e.g. http://127.0.0.1:3344/keys (required)
//   PEER_ISSUER    the issuer every token must carry (required)
//   PEER_WORKERS   worker processes (default 2)
//   PEER_CACHE     "on" (fast-jwt's `cache: true`, 1000 tokens) or "off" (default "on")
// Prints one line, "fastify peer ready: ...", once every worker listens.

const cluster = require('node:cluster')

const ONE_DAY_MS = 24 * 60 * 60 * 1000
const REALM = 'Bearer realm="fastify-peer"'
const BEARER = /^Bearer +([^ ]+)$/i

function setting (name, fallback) {
  const value = process.env[name] ?? fallback
  if (value === undefined || value === '') {
    console.error(`fastify peer: ${name} is not set`)
    process.exit(2)
  }
  return value
}

const port = Number(setting('PEER_PORT'))
const workers = Number(setting('PEER_WORKERS', '2'))
const jwksUri = new URL(setting('PEER_JWKS_URI'))
const issuer = setting('PEER_ISSUER')
const cache = setting('PEER_CACHE', 'on') === 'on'

function primary () {
  let listening = 0
  let alive = workers
  let stopping = false
  cluster.on('listening', () => {
    listening += 1
    if (listening === workers) {
      console.log(`fastify peer ready: ${workers} workers on 127.0.0.1:${port}, cache ${cache ? 'on' : 'off'}`)
    }
  })
  // Stop the workers and exit only once every one has exited, so that none is left orphaned
  // (and unreaped) behind us.
  function stop (code) {
    process.exitCode = process.exitCode || code
    stopping = true
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM')
  }
  cluster.on('exit', (worker, code, signal) => {
    alive -= 1
    // A worker that dies is a broken benchmark, not something to hide by forking another.
    if (!stopping) {
      console.error(`fastify peer: worker ${worker.process.pid} exited (${signal || code})`)
      stop(1)
    }
    if (alive === 0) process.exit()
  })
  for (const name of ['SIGTERM', 'SIGINT']) process.on(name, () => stop(0))
  for (let i = 0; i < workers; i++) cluster.fork()
}

function worker () {
  const { createVerifier } = require('fast-jwt')
  const buildGetJwks = require('get-jwks')
  const app = require('fastify')({ logger: false })

  // get-jwks fetches `<domain>/<jwksPath>`; our key set's URL is split into those two.
  // ttl: keys cached as long as our JWKS client caches them (JWKS_CACHE_SECONDS, 600 s).
  const getJwks = buildGetJwks({ jwksPath: jwksUri.pathname + jwksUri.search, ttl: 600_000 })
  const domain = jwksUri.origin

  // The checks of the guide's express-jwt backend: RS256 only, the issuer, at most 1 day old
  // (fast-jwt's maxAge is in ms), plus exp/iat/iss present as our verifier requires; the key
  // is chosen by kid (and alg) from the key set, as a PEM string (get-jwks's getPublicKey).
  const verify = createVerifier({
    key: async ({ header }) => getJwks.getPublicKey({ kid: header.kid, alg: header.alg, domain }),
    algorithms: ['RS256'],
    allowedIss: issuer,
    maxAge: ONE_DAY_MS,
    requiredClaims: ['exp', 'iat', 'iss'],
    cache
  })

  function refuse (reply, status, error, description) {
    reply.code(status).header('www-authenticate', error
      ? `${REALM}, error="${error}", error_description="${description}"`
      : REALM)
    return error ? { error, error_description: description } : { error: 'unauthorized' }
  }

  app.get('/with-auth', async (request, reply) => {
    const header = request.headers.authorization
    if (!header || !/^bearer( |$)/i.test(header)) return refuse(reply, 401)
    const match = BEARER.exec(header)
    if (!match) return refuse(reply, 400, 'invalid_request', 'malformed Authorization header')
    let claims
    try {
      claims = await verify(match[1])
    } catch (e) {
      return refuse(reply, 401, 'invalid_token', String(e.code || 'invalid token'))
    }
    // fastify sends a string as text/plain; charset=utf-8, as our protected server does.
    return `Result: ${JSON.stringify(claims)}`
  })

  app.listen({ host: '127.0.0.1', port }).catch((e) => {
    console.error(`fastify peer: ${e.message}`)
    process.exit(1)
  })
}

if (cluster.isPrimary) primary()
else worker()
