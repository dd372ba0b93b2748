# Shared by scripts/cross-test and scripts/package-deb (sourced, not run): Debian's Rust 1.85
# for the ARM targets, without Docker, rustup targets or binfmt_misc.
#   cross_install TRIPLE…   installs the cross linkers, qemu-user-static and rustc-web 1.85, and
#                           unpacks the target's standard library from libstd-rust-web-dev
#                           and its libfaketime (for tests/clock.rs)
#   cross_env TRIPLE        exports RUSTC, the linker, the C compiler and the qemu runner
#                           (CROSS_RUNNER, and cargo's, which bounds each test binary's time)
RUST_185=1.85.0+dfsg3-1~deb12u3

deb_arch() { case "$1" in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; *) return 1 ;; esac; }
gnu_triple() { case "$1" in aarch64-*) echo aarch64-linux-gnu ;; armv7-*) echo arm-linux-gnueabihf ;; *) return 1 ;; esac; }

cross_install() {
  local need=() t arch work deb
  for t in "$@"; do
    command -v "$(gnu_triple "$t")-gcc" >/dev/null \
      || need+=("gcc-$(gnu_triple "$t")" "libc6-dev-$(deb_arch "$t")-cross")
  done
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  [ -x /usr/bin/rustc ] || need+=("rustc-web=$RUST_185" "cargo-web=$RUST_185" "libstd-rust-web-dev=$RUST_185")
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
  fi
  # The target's standard library, unpacked from the foreign-architecture package (apt-get
  # download + dpkg -x: no multiarch installation, whose versions may lag). Straight from the
  # mirror's pool when the foreign index is missing (one may fail while a mirror syncs).
  for t in "$@"; do
    [ -d "/usr/lib/rustlib/$t/lib" ] && continue
    arch="$(deb_arch "$t")"
    work="$(mktemp -d)"
    deb="libstd-rust-web-dev_${RUST_185}_${arch}.deb"
    if ! (cd "$work" && apt-get download "libstd-rust-web-dev:$arch=$RUST_185" >/dev/null 2>&1); then
      curl -fsSL -o "$work/$deb" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/r/rustc-web/$deb"
    fi
    dpkg -x "$work"/libstd-rust-web-dev_*.deb "$work/root"
    mkdir -p /usr/lib/rustlib
    cp -a "$work/root/usr/lib/rustlib/$t" /usr/lib/rustlib/
    rm -rf "$work"
  done
  for t in "$@"; do cross_faketime "$t"; done
}

# libfaketime for the target (tests/clock.rs preloads it into the edgehook it runs under
# qemu), unpacked beside the target's C library the same way: /usr/<triple>/lib/faketime/.
FAKETIME_VERSION=0.9.10-2.1
cross_faketime() {
  local t="$1" arch dest work
  arch="$(deb_arch "$t")"
  dest="/usr/$(gnu_triple "$t")/lib/faketime"
  if [ ! -e "$dest/libfaketime.so.1" ]; then
    work="$(mktemp -d)"
    if ! (cd "$work" && apt-get download "libfaketime:$arch" >/dev/null 2>&1); then
      curl -fsSL -o "$work/libfaketime_${FAKETIME_VERSION}_${arch}.deb" \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/f/faketime/libfaketime_${FAKETIME_VERSION}_${arch}.deb"
    fi
    dpkg -x "$work"/libfaketime_*.deb "$work/root"
    mkdir -p "$dest"
    cp -a "$work/root/usr/lib/$(gnu_triple "$t")/faketime/." "$dest/"
    rm -rf "$work"
  fi
  # On 32-bit ARM, Rust reads the clock through __clock_gettime64, which libfaketime misses.
  # Built when missing or older than its source only: a suite may be running with it.
  local src
  src="$(dirname "${BASH_SOURCE[0]}")/faketime-time64.c"
  case "$t" in armv7-*)
    [ "$dest/libfaketime-time64.so" -nt "$src" ] \
      || "$(gnu_triple "$t")-gcc" -shared -fPIC -O2 -o "$dest/libfaketime-time64.so" "$src" ;;
  esac
}

cross_env() {
  local t="$1" upper cc
  upper="$(echo "$t" | tr 'a-z-' 'A-Z_')"
  cc="$(gnu_triple "$t")-gcc"
  CROSS_RUNNER="qemu-$(case "$t" in aarch64-*) echo aarch64 ;; *) echo arm ;; esac)-static -L /usr/$(gnu_triple "$t")"
  export RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross CROSS_RUNNER
  # bookworm's qemu-user-static (7.2) links GLib 2.74, whose slice allocator keeps per-thread
  # caches behind locks that fork() does not reset: a process forked by a multi-threaded
  # emulated one (a test binary starting edgehook, the daemon starting an inventory script)
  # can hang on a futex before it reaches exec. A stress of 2,000 spawns from 4 threads hung
  # in 5 runs of 8 as it was, and in none of 33 with GLib's allocator turned off (malloc).
  # Every qemu here inherits this: cargo's runner, EDGEHOOK_TEST_RUNNER and their children.
  export G_SLICE=always-malloc
  # A test binary that runs over CROSS_WATCHDOG seconds (10 minutes; the longest takes about
  # 35 s) is stopped with its process group and fails its suite, rather than hold CI to its
  # time limit with nothing said.
  export "CARGO_TARGET_${upper}_LINKER=$cc" "CC_${t//-/_}=$cc" \
    "CARGO_TARGET_${upper}_RUNNER=timeout --verbose --kill-after=30 ${CROSS_WATCHDOG:-600} $CROSS_RUNNER"
}
