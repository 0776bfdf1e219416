"""geN → kernel name, shared by every renderer: an unknown geN names the payload field."""
from ..errors import ApplyError


def kernel_name(kernel_names, generic, path):
    """``kernel_names``: ``{geN: kernel name}``; ``path``: the network's JSON path."""
    try:
        return kernel_names[generic]
    except KeyError:
        raise ApplyError(f"{path}.interface.ifname",
                         f"{generic} does not exist on this appliance "
                         f"(NICs: {', '.join(sorted(kernel_names)) or 'none'})") from None
