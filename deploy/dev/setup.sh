# Installs what drd's build, demo and test suite need on a Debian/Ubuntu
# machine that has only the Rust toolchain. Sourced by `deploy/demo` and
# `tests/run` (the README's two commands); safe to run again: every step
# first checks whether its tool is already there.
#
#   drd_setup build   system libraries for building drd (RocksDB, libclang)
#   drd_setup test    + the servers and tools the test suite runs for real
#   drd_setup bench   + the peers drd-bench measures drd against (rsync,
#                     pgbackrest); `drd-bench` itself needs `test`'s servers

# Run a command as root (CI and these machines are root; a developer's
# laptop is not).
_drd_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

_drd_apt_updated=""
_drd_apt() {
  # $@: Debian package names, installed only when missing.
  local need=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  ((${#need[@]})) || return 0
  echo "setup: installing ${need[*]} (Debian packages)" >&2
  if [ -z "$_drd_apt_updated" ]; then
    _drd_root apt-get update -qq
    _drd_apt_updated=1
  fi
  _drd_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

_drd_cargo_tool() {
  # $1: the cargo subcommand that must answer --version, $2: crate name.
  cargo "$1" --version >/dev/null 2>&1 && return 0
  echo "setup: installing $2 (cargo install --locked; once per machine)" >&2
  # Without the tools' own fat LTO and single codegen unit: on 2 cores
  # cargo-deny alone took ~4 min that way; these tools run for seconds.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install "$2" --locked --quiet
}

# Servers the tests start that come from PyPI or the npm registry rather
# than Debian: each in a directory of its own under /opt/drd-test (a venv
# or an npm prefix, so their dependencies cannot clash with each other or
# with the system's), its program linked into /opt/drd-test/bin, where
# tests/src/objstore.rs looks for it. A stamp file records what was
# installed, so a changed version reinstalls and an unchanged one costs
# nothing.
_drd_test_dir=/opt/drd-test

_drd_pip_tool() {
  # $1: venv name, $2: pip requirement, $3…: programs to link.
  local dir="$_drd_test_dir/$1" prog py
  [ "$(cat "$dir/.drd-installed" 2>/dev/null)" = "$2" ] && return 0
  # By its path: sudo's PATH may not find the python3 the user runs.
  py=$(command -v python3)
  # Debian's python3 has no ensurepip (so no venv) without python3-venv.
  "$py" -c 'import ensurepip, venv' 2>/dev/null || _drd_apt python3-venv
  echo "setup: installing $2 (PyPI, into $dir)" >&2
  _drd_root rm -rf "$dir"
  _drd_root "$py" -m venv "$dir"
  _drd_root "$dir/bin/pip" install -q --disable-pip-version-check "$2"
  _drd_root mkdir -p "$_drd_test_dir/bin"
  for prog in "${@:3}"; do
    _drd_root ln -sfn "$dir/bin/$prog" "$_drd_test_dir/bin/$prog"
  done
  echo "$2" | _drd_root tee "$dir/.drd-installed" >/dev/null
}

_drd_npm_tool() {
  # $1: prefix name, $2: npm package@version, $3…: programs to link.
  local dir="$_drd_test_dir/$1" prog
  [ "$(cat "$dir/.drd-installed" 2>/dev/null)" = "$2" ] && return 0
  echo "setup: installing $2 (npm registry, into $dir)" >&2
  _drd_root rm -rf "$dir"
  _drd_root mkdir -p "$dir" "$_drd_test_dir/bin"
  _drd_root npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$2" >/dev/null
  for prog in "${@:3}"; do
    _drd_root ln -sfn "$dir/node_modules/.bin/$prog" "$_drd_test_dir/bin/$prog"
  done
  echo "$2" | _drd_root tee "$dir/.drd-installed" >/dev/null
}

drd_setup() {
  # Building drd: Debian's RocksDB (see the comment on `rocksdb` in the
  # workspace Cargo.toml) and libclang for the bindings bindgen makes.
  _drd_apt librocksdb-dev libclang-dev pkg-config
  case "${1:-build}" in test | bench) ;; *) return 0 ;; esac

  # PostgreSQL for tests/tests/postgres.rs: a real primary, standby and
  # failover, run as the `postgres` user the package creates. Only the
  # programs are wanted: no default cluster listening on port 5432.
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    _drd_root mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = off" |
      _drd_root tee /etc/postgresql-common/createcluster.d/drd-tests.conf >/dev/null
  fi
  # postgresql: the server; iptables: the chaos suite's partitions (a fault
  # that cannot run fails the suite); systemd: `systemd-analyze verify` of
  # the unit (only the tool: no systemd runs here); dpkg-dev: the package
  # check builds and installs the .deb; man-db, zsh, fish: that check opens
  # the man pages and loads the completions; libnss-wrapper: daemon/tests/cli.rs
  # looks up control.socket_group through NSS as LDAP/SSSD would serve it;
  # chromium: tests/tests/drill.rs opens a drill's HTML report in a real
  # headless browser and checks the screenshot.
  _drd_apt postgresql iptables systemd dpkg-dev man-db zsh fish libnss-wrapper chromium
  # iptables on Debian 12 is the nft front end; the chaos suite's DROP rules
  # need the kernel's nf_tables, present on these machines.

  # Object-store emulators for tests/tests/objstore_servers.rs (issue 19's
  # S3 and Azure Blob targets), started on 127.0.0.1 by
  # tests/src/objstore.rs: moto's S3 server (Python) and Azurite's blob
  # service (Node; npm comes with Debian's nodejs only as its own
  # package). No GCS emulator: see the top of tests/src/objstore.rs.
  _drd_pip_tool moto 'moto[server]==5.2.5' moto_server
  command -v npm >/dev/null || _drd_apt npm
  _drd_npm_tool azurite azurite@3.35.0 azurite-blob

  # cargo tools: the brief fuzz run, the Debian package, the dependency
  # policy (deny.toml), lints.
  _drd_cargo_tool fuzz cargo-fuzz
  _drd_cargo_tool deb cargo-deb
  _drd_cargo_tool deny cargo-deny
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

  # drd-bench's peers, measured on the same bytes as drd: rsync -a --fsync
  # and pgbackrest (archive-push). Not needed by the test suite.
  [ "${1:-build}" = bench ] || return 0
  _drd_apt rsync pgbackrest
}
