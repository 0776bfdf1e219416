# Defaults for the astara element; each can be overridden from the caller's
# environment (see README.rst).

# Where the agent's source tree is taken from. Empty means the repository
# that holds this element (found by extra-data.d/50-astara-source).
export ASTARA_SOURCE_DIR=${ASTARA_SOURCE_DIR:-}

# Python on the build host that builds the agent's wheel and downloads its
# dependencies (it needs pip; scripts/build-image passes the repo's venv).
export ASTARA_HOST_PYTHON=${ASTARA_HOST_PYTHON:-python3}

# Python version of the image's python3: the wheels of compiled dependencies
# (markupsafe, ...) are downloaded for it. Known for the Debian releases.
case "${DIB_RELEASE:-}" in
    bookworm) _astara_python=3.11 ;;
    trixie) _astara_python=3.13 ;;
    *) _astara_python= ;;
esac
export DIB_ASTARA_PYTHON_VERSION=${DIB_ASTARA_PYTHON_VERSION:-$_astara_python}
unset _astara_python

# Value of enabled_services in /etc/astara/astara.ini.
export DIB_ASTARA_ENABLED_SERVICES=${DIB_ASTARA_ENABLED_SERVICES:-router}

# The orchestrator boots appliances with a config drive; NoCloud serves
# local tests (an ISO labelled "cidata").
export DIB_CLOUD_INIT_DATASOURCES=${DIB_CLOUD_INIT_DATASOURCES:-"ConfigDrive, NoCloud"}

# The agent owns every NIC: the debootstrap element must not write
# "iface ethN inet dhcp" stanzas (DHCP on the management and external
# networks, and a boot that waits for leases that never come).
export DIB_APT_MINIMAL_CREATE_INTERFACES=0

# The base element installs open-iscsi (an iSCSI initiator started at every
# boot); the appliance boots from its own disk and has no use for it.
export DIB_SKIP_BASE_PACKAGE_INSTALL=${DIB_SKIP_BASE_PACKAGE_INSTALL:-1}
