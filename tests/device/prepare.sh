#!/usr/bin/env bash
# Runs here, on the Debian 12 development machine (it has apt and the network; the GPU machine has
# neither): downloads the Debian packages of the libraries Tiller builds against that a GPU
# machine's image may lack, into .device-deps/ (git-ignored). tests/device/run.sh unpacks them
# there into a sysroot it points CMake, pkg-config and the loader at; the device tool carries the
# folder (`carry: [".device-deps"]`, about 30 MB of its 64 MiB).
#   tests/device/prepare.sh            # again: only what is missing is downloaded
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.device-deps

# Each -dev package with the runtime library it links to. Header-only ones have none.
PACKAGES=(
  nlohmann-json3-dev                      # JSON (header-only)
  libcli11-dev                            # the command line (header-only)
  libsentencepiece-dev libsentencepiece0  # SentencePiece tokenizers (common/tokenizer/module/)
  libyaml-cpp-dev libyaml-cpp0.7          # YAML recipes
  libicu-dev libicu72                     # byte-level BPE: Unicode regexes and NFC
  libzstd-dev libzstd1                    # data prepare: .zst inputs
  libxxhash-dev libxxhash0                # data prepare: document hashes
  zlib1g-dev zlib1g                       # gzip inputs, safetensors of HF directories
  libblas-dev libblas3                    # cblas.h and the reference BLAS's libblas.so (CBLAS
                                          # included): the fast decode step links it
  libgtest-dev                            # tiller_device_tests (static libraries, CMake config)
  pkgconf pkgconf-bin libpkgconf3         # pkg-config, which CMakeLists.txt needs, where absent
)

mkdir -p "$DEST"
missing=()
for package in "${PACKAGES[@]}"; do
  compgen -G "$DEST/${package}_*.deb" >/dev/null || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "prepare: downloading ${missing[*]}"
  # apt-get download writes into the current directory; its lists must be there.
  if ! (cd "$DEST" && apt-get download "${missing[@]}" 2>/dev/null); then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    (cd "$DEST" && apt-get download "${missing[@]}")
  fi
fi

# What is there, for run.sh's log: package, version, file.
: >"$DEST/manifest.txt"
for deb in "$DEST"/*.deb; do
  printf '%s %s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
    "$(basename "$deb")" >>"$DEST/manifest.txt"
done
bytes=$(du -cb "$DEST"/*.deb | tail -1 | cut -f1)
echo "prepare: $(wc -l <"$DEST/manifest.txt") packages, $((bytes / 1024 / 1024)) MB in $DEST"
if [ "$bytes" -gt $((50 * 1024 * 1024)) ]; then
  echo "prepare: more than 50 MB: the device tool carries 64 MiB in all, the tree included" >&2
  exit 1
fi
