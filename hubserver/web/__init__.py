"""The hub's HTTP edge, below Django: request bodies bounded before they are read (``bodies``), and the
database connections of HTTP requests closed when they finish (``connections``)."""
