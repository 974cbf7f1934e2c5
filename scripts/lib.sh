# Shell functions the scripts share; sourced (`source scripts/lib.sh`), never run.

# npm_ci_cached SPEC ROOT NAME [NPM_OPTION...]
# Install SPEC's package-lock.json with `npm ci` (exact versions, each tarball checked
# against the lock's sha512 integrity, no install scripts) into ROOT/NAME-<key>, the key a
# hash of SPEC's package.json and package-lock.json; nothing is fetched when that cache
# already holds them. Sets NPM_CACHE_DIR to the cache directory.
npm_ci_cached() {
  local spec=$1 root=$2 name=$3 key
  shift 3
  key=$(cat "$spec/package.json" "$spec/package-lock.json" | sha256sum | cut -c1-16)
  NPM_CACHE_DIR="$root/$name-$key"
  if [[ ! -f "$NPM_CACHE_DIR/.installed" ]]; then
    echo "$(basename "$0" .sh): installing the pinned npm packages of $spec (npm ci)"
    rm -rf "$NPM_CACHE_DIR"
    mkdir -p "$NPM_CACHE_DIR"
    cp "$spec/package.json" "$spec/package-lock.json" "$NPM_CACHE_DIR/"
    (cd "$NPM_CACHE_DIR" && npm ci --ignore-scripts "$@" --no-audit --no-fund --loglevel=error)
    touch "$NPM_CACHE_DIR/.installed"
  fi
}
