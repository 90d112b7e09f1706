#!/usr/bin/env bash
# Builds everything: the BPF object, the test probe (C), and the TypeScript.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
arch_inc="/usr/include/$(uname -m)-linux-gnu"
bpf_cc() { clang -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 -I"$arch_inc" -Ibpf "$@"; }
for src in bpf/*.bpf.c; do
  bpf_cc -c "$src" -o "build/$(basename "${src%.c}").o"
done
# Live revocation where the kernel lacks bpf_sock_destroy: the iterators judge, netlink closes.
bpf_cc -DEGRESS_REVOKE_BY_NETLINK -c bpf/revoke.bpf.c -o build/revoke-netlink.bpf.o
cc -O2 -Wall -Werror -o build/probe test/helpers/probe.c
# One getaddrinfo() timed, with each C library's stub resolver (test/privileged/dns.test.ts).
cc -O2 -Wall -Werror -o build/resolve-glibc test/helpers/resolve.c
musl-gcc -static -O2 -Wall -Werror -o build/resolve-musl test/helpers/resolve.c
cc -O2 -Wall -Werror -o build/connect-loop bench/connect-loop.c
cc -O2 -Wall -Werror -o build/name-bench bench/name-bench.c
# TCP Fast Open data in the SYN (test/privileged/names.test.ts).
cc -O2 -Wall -Werror -o build/tfo-send test/helpers/tfo-send.c
rm -rf dist/ui
npx tsc -p tsconfig.json
# The dashboard (dist/ui, served at /ui/): one script and one style sheet bundled by esbuild, and the
# manifest of what the API serves (tsc's own output of ui/ stays beside them, for the unit tests).
node scripts/build-ui.mjs
chmod +x dist/cli/main.js
