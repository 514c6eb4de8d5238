# `cpack -G DEB` in a build directory makes the .deb: binary, unit, default config, docs.
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "sluice")
set(CPACK_PACKAGE_VENDOR "sluice")
set(CPACK_PACKAGE_CONTACT "sluice developers <dev@sluice.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "log-shipping agent that loses nothing")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# dpkg-shlibdeps finds the libraries (libcctz2 among them); the zone files CCTZ reads for the
# syslog source's rfc3164_timezone are tzdata's /usr/share/zoneinfo, which it cannot see.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "tzdata")
set(CPACK_DEBIAN_PACKAGE_SECTION "admin")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_SOURCE_DIR}/packaging/postinst;${CMAKE_CURRENT_SOURCE_DIR}/packaging/conffiles")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
install(FILES docs/CONFIGURATION.md docs/ARCHITECTURE.md DESTINATION share/doc/sluice)
include(CPack)
