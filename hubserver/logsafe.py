"""``clip``: what a client chose (client ids, usernames, topics) shortened before it goes into a log line,
so that a 64 KB client id costs the log 80 characters."""

CLIP = 80


def clip(value, limit=CLIP):
    """``repr`` of a client-controlled value, cut to about ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}...({len(text)} chars)"
