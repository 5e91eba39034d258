#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a fresh Debian machine that has only the Rust
# toolchain: etcdctl (etcd-client) for the CLI tests, etcd (etcd-server) for side-by-side
# benchmarks, and a TrueType font (fonts-dejavu-core) for the benchmark charts. protoc is not needed: the build uses the one the protoc-bin-vendored crate
# brings (scripts/protoc). Idempotent.
set -euo pipefail

need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The font corekv-bench labels its PNG charts with (bench/src/charts.rs).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server package may start a system etcd on 127.0.0.1:2379; the tests never use
# that port, and the benchmarks start their own etcd on free ports.
# sed reads all of etcdctl's output: `head -n1` could exit first and, under pipefail, the
# SIGPIPE etcdctl then gets would fail the whole script (seen once: exit 141).
etcdctl version | sed -n 1p
