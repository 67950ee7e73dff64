"""Where the test types' hooks record their calls."""

calls = []
