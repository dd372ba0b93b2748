SUMMARY = "Durable, signed webhooks from embedded Linux devices"
DESCRIPTION = "edgehook keeps every event a device produces in a SQLite outbox \
               while the device is offline and forwards each one as a signed webhook, \
               over HTTPS or through an MQTT broker, once it reconnects."
HOMEPAGE = "https://edgehook.invalid/"
BUGTRACKER = "https://edgehook.invalid/issues"
SECTION = "net"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Yocto's cargo class makes libsqlite3-sys link the system SQLite instead of its bundled copy.
DEPENDS += "sqlite3"

SRC_URI = "git://git.edgehook.invalid/edgehook.git;protocol=https;branch=main"
SRCREV = "1e5c8c42adf4740e2cc0a9f1e7d3a0663f7ec262"

CVE_PRODUCT = "edgehook"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

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
}

FILES:${PN} += "${systemd_system_unitdir}/edgehook.service ${systemd_system_unitdir}/edgehook.socket"
CONFFILES:${PN} = "${sysconfdir}/edgehook/edgehook.toml"
