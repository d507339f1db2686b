// Runs a wasm32-wasip1 guest under Node's WASI, for timing and smoke tests.
//
//   node guests/run-node.mjs GUEST.wasm [--data HOSTDIR] [--] [guest args...]
//
// HOSTDIR (default: a `data` dir next to this script, created if missing) is preopened as
// /data. The guest's exit code becomes the process exit code. Node's random_get is not
// deterministic, unlike the roam host's per-job stream.
process.removeAllListeners('warning'); // silence "WASI is an experimental feature"
const { WASI } = await import('node:wasi');
const fs = await import('node:fs');
const path = await import('node:path');
const url = await import('node:url');

let argv = process.argv.slice(2);
const wasmPath = argv.shift();
if (!wasmPath) {
  console.error('usage: node run-node.mjs GUEST.wasm [--data HOSTDIR] [--] [args...]');
  process.exit(2);
}
let dataDir = path.join(path.dirname(url.fileURLToPath(import.meta.url)), 'data');
if (argv[0] === '--data') {
  dataDir = argv[1];
  argv = argv.slice(2);
}
if (argv[0] === '--') argv = argv.slice(1);
fs.mkdirSync(dataDir, { recursive: true });

const wasi = new WASI({
  version: 'preview1',
  args: [path.basename(wasmPath, '.wasm'), ...argv],
  env: {},
  preopens: { '/data': dataDir },
});
// Node 20's WASI keeps using the memory buffer it saw before a memory.grow, which crashes
// node (SIGSEGV/SIGTRAP) or loses output once a guest grows its memory. Reading
// `memory.buffer` before every WASI call makes V8 hand out the current buffer.
const imports = wasi.getImportObject();
let instance;
for (const ns of Object.values(imports)) {
  for (const [name, f] of Object.entries(ns)) {
    ns[name] = (...a) => {
      void instance.exports.memory.buffer;
      return f(...a);
    };
  }
}
const module = await WebAssembly.compile(fs.readFileSync(wasmPath));
instance = await WebAssembly.instantiate(module, imports);
process.exitCode = wasi.start(instance);
