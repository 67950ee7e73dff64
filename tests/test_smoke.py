def test_catalogue_and_test_types_are_registered():
    from hubserver import registry

    for name in ("weatherstation", "smartplug", "gpstracker", "energymeter", "thermometer", "hygrometer"):
        assert name in registry
