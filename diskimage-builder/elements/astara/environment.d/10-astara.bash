# Defaults for the astara element; each can be overridden from the caller's
# environment (see README.rst).

# Where the agent's source tree is taken from. Empty means the repository
# that holds this element (found by extra-data.d/50-astara-source).
export ASTARA_SOURCE_DIR=${ASTARA_SOURCE_DIR:-}

# Value of enabled_services in /etc/astara/astara.ini.
export DIB_ASTARA_ENABLED_SERVICES=${DIB_ASTARA_ENABLED_SERVICES:-router}

# The orchestrator boots appliances with a config drive; NoCloud serves
# local tests (an ISO labelled "cidata").
export DIB_CLOUD_INIT_DATASOURCES=${DIB_CLOUD_INIT_DATASOURCES:-"ConfigDrive, NoCloud"}
