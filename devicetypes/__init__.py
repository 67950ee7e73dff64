"""The catalogue of ready-made device types that the ``hubserver`` binary loads by default."""
