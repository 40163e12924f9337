"""The ``width`` multiplier of the networks: every channel count of the full-size architecture is
scaled by it (the tests and the demo train networks of 1/16 or 1/8 of the width)."""


def check_width(width):
    """ValueError unless ``width`` is a positive number."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width: expected a positive number, got {width!r}")


def scaled_channels(channels, width):
    """``channels`` of the full-size network scaled by ``width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))
