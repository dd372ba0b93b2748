# The cargo tools the checks install, at pinned versions: the Debian package relies on
# cargo-deb's systemd sysusers support, and cargo-deny's verdicts are part of CI. Raise a pin
# deliberately, after reading the tool's changelog.
CARGO_DEB_VERSION=3.8.0
CARGO_DENY_VERSION=0.20.2

# cargo_tool CRATE VERSION: installs CRATE at VERSION (from its lock file) unless that version
# is the one installed.
cargo_tool() {
  cargo install --list | grep -x "$1 v$2:" >/dev/null || cargo install "$1" --version "$2" --locked --quiet
}
