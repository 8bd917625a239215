#!/usr/bin/env node
// Bundles page.js for the browser with esbuild (from npm, pinned in
// ../package-lock.json), the service descriptors compiled from proto/ at
// this moment (../descriptors.js) bundled in as bytes.
//
// Usage: node bundle.js --proto-root DIR --out DIR   (writes DIR/page.js)
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');
const descriptors = require('../descriptors');

async function main() {
  const args = {};
  for (let i = 2; i < process.argv.length; i += 2) {
    args[process.argv[i].replace(/^--/, '').replace(/-/g, '_')] = process.argv[i + 1];
  }
  if (!args.proto_root || !args.out) throw new Error('usage: bundle.js --proto-root DIR --out DIR');
  const built = descriptors.build(args.proto_root, args.out);
  await esbuild.build({
    entryPoints: [path.join(__dirname, 'page.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    outfile: path.join(args.out, 'page.js'),
    logLevel: 'warning',
    plugins: [{
      name: 'descriptors',
      setup(build) {
        build.onResolve({ filter: /^agentregistry-descriptors$/ }, () => ({ path: built.agentregistry }));
        build.onLoad({ filter: /\.binpb$/ }, (file) => ({
          contents: fs.readFileSync(file.path),
          loader: 'binary',
        }));
      },
    }],
  });
  console.log(`bundled ${path.join(args.out, 'page.js')}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
