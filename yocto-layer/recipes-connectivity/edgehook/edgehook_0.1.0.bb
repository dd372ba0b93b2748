SUMMARY = "Durable, signed webhooks from embedded Linux devices"
DESCRIPTION = "edgehook keeps every event a device produces in a SQLite outbox \
               while the device is offline and forwards each one as a signed webhook, \
               over HTTPS or through an MQTT broker, once it reconnects."
HOMEPAGE = "https://edgehook.invalid/"
BUGTRACKER = "https://edgehook.invalid/issues"
SECTION = "net"
# edgehook's own licence and those of every crate compiled into the binary (`scripts/licenses
# yocto`; scripts/check-yocto checks it matches the tree). A term in parentheses is a crate
# licensed under a choice of those licences.
LICENSE = "Apache-2.0 & BSD-3-Clause & ISC & MIT & Unlicense & Zlib & (Apache-2.0 | Apache-2.0-with-LLVM-exception | MIT) & (Apache-2.0 | BSD-2-Clause | MIT) & (Apache-2.0 | ISC | MIT) & (Apache-2.0 | MIT) & (MIT | Unlicense)"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# The layer sits at the top of the edgehook source tree (yocto-layer/), and the recipe builds
# that tree: the commit checked out is the one built (check out the tag v${PV} for the
# release), so the recipe, its crates list and LIC_FILES_CHKSUM always describe the source
# they build, which scripts/check-yocto checks. The crates still come through bitbake's
# fetcher (edgehook-crates.inc), so the build needs no network beyond it.
inherit externalsrc
EXTERNALSRC := "${@os.path.abspath(os.path.join('${THISDIR}', '..', '..', '..'))}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"
# No oe-workdir and oe-logs links written into the checkout: the source tree stays as cloned.
# (externalsrc's own variable, which oelint-adv does not know.)
# nooelint: oelint.vars.mispell.unknown
EXTERNALSRC_SYMLINKS = ""

# Yocto's cargo class makes libsqlite3-sys link the system SQLite instead of its bundled copy.
DEPENDS += "sqlite3"

CVE_PRODUCT = "edgehook"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates features_check python3native systemd useradd

# The daemon is a systemd service (Type=notify, a watchdog, the unit's sandbox).
REQUIRED_DISTRO_FEATURES = "systemd"

# The release profile strips the binary (strip = true), which oe-core's QA refuses as
# already-stripped: here cargo leaves it whole and oe-core strips it, keeping the symbols in
# ${PN}-dbg.
export CARGO_PROFILE_RELEASE_STRIP = "false"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system edgehook"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/edgehook --no-create-home \
                       --shell /sbin/nologin --gid edgehook edgehook"

SYSTEMD_SERVICE:${PN} = "edgehook.socket edgehook.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${sysconfdir}/edgehook/inventory.d
    install -m 0644 ${S}/etc/edgehook.toml ${D}${sysconfdir}/edgehook/edgehook.toml
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/edgehook.service ${D}${systemd_system_unitdir}/edgehook.service
    install -m 0644 ${S}/systemd/edgehook.socket ${D}${systemd_system_unitdir}/edgehook.socket
    # The crates' licence texts, from the crates bitbake fetched (every crate of Cargo.lock).
    install -d ${D}${datadir}/edgehook
    ${PYTHON} ${S}/scripts/licenses notices --lock --crates-dir ${CARGO_VENDORING_DIRECTORY} \
        --out ${D}${datadir}/edgehook/THIRD-PARTY-NOTICES
    chmod 0644 ${D}${datadir}/edgehook/THIRD-PARTY-NOTICES
}

FILES:${PN} += "${systemd_system_unitdir}/edgehook.service ${systemd_system_unitdir}/edgehook.socket"
CONFFILES:${PN} = "${sysconfdir}/edgehook/edgehook.toml"
# HTTPS sinks verify their receivers against the system's certificate store.
RDEPENDS:${PN} += "ca-certificates"
