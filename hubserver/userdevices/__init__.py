"""The app that turns a user's standalone ``devices.py`` (``hubserver --devices FILE``) into models."""
