"""The configuration model: parse/validate a payload into immutable typed objects."""
from .errors import FieldError, PayloadError, UnsupportedService  # noqa: F401
from .parse import (KNOWN_SERVICES, check_management_path,  # noqa: F401
                    parse_hashed, parse_payload, prepare_schema, valid_hostname)
from .types import SystemConfig  # noqa: F401
